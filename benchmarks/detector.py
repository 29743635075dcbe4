"""Synthetic-voice detector numbers for BENCHMARKS.md.

    .venv/bin/python -m benchmarks.detector --corpus .cache/detector-corpus [--lofo-minutes 5]

- the shipped detector on the corpus's held-out test split (speakers and sources it never saw):
  EER and AUC overall, per synthetic family, per language and per speaker gender;
- the same clips after MP3 at 64 kbit/s;
- leave-one-family-out: the compact AST and head retrained from scratch without a family,
  then tested on that family (the honest number for generators never seen);
- the independent evaluation set (other packages, other generators), when it is built;
- a cepstral baseline (MFCC statistics + logistic regression) on the same splits;
- speed on one core: the shipped compact AST and an MIT-size AST, in x real time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from transformers import ASTConfig, ASTModel

from benchmarks.markdown import machine, write_section
from detectors import SyntheticVoiceDetector, load_detector
from detectors.backbone import SHIPPED_DIR, Backbone, load_compact
from detectors.corpus import corpus_recipe, load_manifest
from detectors.evaluation import Scores, breakdown, score
from detectors.frontend import SAMPLE_RATE
from detectors.training import (
    Clip,
    TrainSettings,
    fit_head,
    load_clips,
    train_backbone,
    window_embeddings,
)
from guard.edits import mp3

OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def waves(corpus: Path, clips: list[Clip]) -> list[torch.Tensor]:
    """The clips' audio as ``(1, samples)`` at 16 kHz, as ``audioguard detect`` would get it."""
    out = []
    for clip in clips:
        data, _ = sf.read(str(corpus / str(clip.row["path"])), dtype="float32", always_2d=True)
        out.append(torch.from_numpy(data.mean(axis=1)).unsqueeze(0))
    return out


def detect_scores(detector: SyntheticVoiceDetector, audio: list[torch.Tensor]) -> list[float]:
    """File probabilities through ``SyntheticVoiceDetector.predict``, the path users run.

    A clip in which the speech gate finds no speech gets 0.5: the detector abstains, and an
    abstention must cost as much as a coin flip, not vanish from the count.
    """
    scores = []
    for wave in audio:
        p = detector.predict(wave, SAMPLE_RATE).synthetic_probability
        scores.append(0.5 if p is None else p)
    return scores


def transcoded(audio: list[torch.Tensor], bitrate: int = 64) -> list[torch.Tensor]:
    """The clips after an MP3 round trip, as a platform's upload path would do."""
    return [mp3(wave, SAMPLE_RATE, bitrate)[0] for wave in audio]


def _wave(corpus: Path, row: dict[str, object]) -> torch.Tensor:
    data, _ = sf.read(str(corpus / str(row["path"])), dtype="float32", always_2d=True)
    return torch.from_numpy(data.mean(axis=1))


def mfcc_stats(corpus: Path, rows: list[dict[str, object]]) -> np.ndarray:
    """Mean and standard deviation of 20 MFCCs and their deltas: the cepstral baseline."""
    transform = torchaudio.transforms.MFCC(SAMPLE_RATE, n_mfcc=20, melkwargs={"n_mels": 40})
    feats = []
    for row in rows:
        m = transform(_wave(corpus, row))
        d = torchaudio.functional.compute_deltas(m)
        feats.append(torch.cat([m.mean(1), m.std(1), d.mean(1), d.std(1)]).numpy())
    return np.stack(feats)


def lofo(
    clips: dict[str, list[Clip]],
    corpus: Path,
    minutes: float,
    folds: dict[str, ASTModel] | None = None,
) -> dict[str, Scores]:
    """Without one synthetic family: train (or take) a backbone, fit a head, test on the family.

    ``folds`` holds a backbone per family trained elsewhere (see :func:`load_folds`); without
    it each is trained here for ``minutes``. The head is fitted here either way, without the
    family, so every fold is scored the same way.
    """
    results = {}
    for family in synthetic_families(clips):
        train = [c for c in clips["train"] if c.family != family]
        val = [c for c in clips["val"] if c.family != family]
        test = [c for c in clips["test"] if c.label == 0 or c.family == family]
        if folds is None:
            settings = TrainSettings(minutes=minutes, exclude_families=(family,))
            ast, _ = train_backbone(train, val, settings, log=lambda _: None)
        else:
            ast = folds[family]
        frames = int(ast.config.max_length)
        layers, pooling = [ast.config.num_hidden_layers], "mean+cls"
        head = fit_head(
            window_embeddings(ast, train, frames, layers, pooling),
            [c.label for c in train],
            window_embeddings(ast, val, frames, layers, pooling),
            [c.label for c in val],
            backbone="lofo",
            layers=layers,
            pooling=pooling,
        )
        detector = SyntheticVoiceDetector(Backbone(ast, "lofo"), head)
        results[family] = score(
            [c.label for c in test], detect_scores(detector, waves(corpus, test))
        )
        print(f"LOFO {family}: {results[family].to_dict()}", flush=True)
    return results


def synthetic_families(clips: dict[str, list[Clip]]) -> list[str]:
    return sorted({c.family for c in clips["train"] if c.label == 1})


FOLD_SETTINGS = ("minutes", "batch", "lr", "window_s", "adversarial_weight", "device")


def load_folds(
    backbones: Path, families: list[str], recipe: dict[str, object]
) -> tuple[dict[str, ASTModel], str]:
    """Every family's fold backbone from ``backbones/FAMILY/compact_ast.*``, and one sentence
    on how they were trained for the BENCHMARKS text.

    Checked before any scoring starts, because a fold that saw its family, was built from
    another corpus, or was trained unlike its siblings would make the table say something
    false: each card must leave out exactly its family, name this corpus's recipe, and share
    the others' settings.
    """
    cards = {}
    for family in families:
        path = backbones / family / "compact_ast.json"
        if not path.is_file():
            sys.exit(
                f"{path.parent}: no fold backbone for {family!r}; train one with "
                f"scripts/train_detector.py --exclude-family {family} --out {path.parent}"
            )
        card = json.loads(path.read_text())
        if card.get("training", {}).get("exclude_families") != [family]:
            sys.exit(f"{path}: the card does not say that exactly {family!r} was left out")
        built_from = card.get("trained_on", {}).get("recipe")
        if built_from != recipe:
            sys.exit(f"{path}: trained on a corpus of recipe {built_from}, not this one's")
        cards[family] = card

    def shared(card: dict) -> tuple:
        return (
            *(card["training"].get(k) for k in FOLD_SETTINGS),
            card.get("pretraining", {}).get("minutes"),
            card.get("machine"),
            card["trained_on"].get("note"),
            card.get("transport"),
        )

    first = cards[families[0]]
    if any(shared(card) != shared(first) for card in cards.values()):
        sys.exit(f"{backbones}: the folds were not all trained with the same settings")
    steps = sorted(card["training"]["steps"] for card in cards.values())
    training, pre = first["training"], first.get("pretraining", {})
    text = (
        f"{steps[0]}–{steps[-1]} steps of batch {training['batch']} in "
        f"{training['minutes']:g} min on {first.get('machine', 'a CPU')}"
    )
    if pre.get("minutes"):
        text += (
            f" after {pre['minutes']:g} min of masked-patch pre-training on the fold's own "
            "train and val audio"
        )
    notes = [first["trained_on"].get("note"), first.get("transport")]
    models = {f: load_compact(backbones / f / "compact_ast").model for f in families}
    return models, text + "".join(f" ({n})" for n in notes if n)


def speed(detector, speech: torch.Tensor, runs: int = 5) -> dict[str, float]:
    """x real time on one core: the shipped detector end to end on speech (so every window is
    judged, the slowest case), and an MIT-size AST forward pass for comparison."""
    torch.set_num_threads(1)
    seconds = speech.shape[1] / SAMPLE_RATE
    detector.predict(speech[:, : SAMPLE_RATE * 5], SAMPLE_RATE)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        detector.predict(speech, SAMPLE_RATE)
        times.append(time.perf_counter() - start)
    mit = ASTModel(ASTConfig()).eval()
    window = torch.zeros(1, 1024, 128)
    mit_times = []
    with torch.inference_mode():
        mit(input_values=window)
        for _ in range(3):
            start = time.perf_counter()
            mit(input_values=window)
            mit_times.append(time.perf_counter() - start)
    # the MIT checkpoints judge 10.24 s windows; at half overlap each second costs 2/10.24 windows
    mit_rt = 10.24 / 2 / statistics.median(mit_times)
    return {
        "compact_x_realtime": seconds / statistics.median(times),
        "mit_x_realtime": mit_rt,
        "mit_window_ms": 1000 * statistics.median(mit_times),
    }


def shipped_training() -> str:
    """How the shipped backbone was trained, from its card, so a table names its recipe."""
    card = json.loads((SHIPPED_DIR / "compact_ast.json").read_text())
    training, pre = card["training"], card.get("pretraining", {})
    text = (
        f"Shipped backbone: {training['steps']} steps of batch {training['batch']} in "
        f"{training['minutes']:g} min on {card.get('machine', 'a CPU')}"
    )
    if pre.get("minutes"):
        text += f", after {pre['minutes']:g} min of {pre['method']}"
    note = card["trained_on"].get("note")
    return text + (f". {note}." if note else ".")


def fmt(s: Scores | dict) -> str:
    d = s.to_dict() if isinstance(s, Scores) else s
    if d["eer"] is None:
        return "– | – | –"
    return f"{100 * d['eer']:.1f}% | {d['auc']:.3f} | {d['n_real']}/{d['n_synthetic']}"


def table(title: str, rows: dict[str, Scores]) -> list[str]:
    lines = [f"| {title} | EER | AUC | real/synthetic |", "|---|---|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in rows.items()]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(".cache/detector-corpus"))
    parser.add_argument("--independent", type=Path, default=Path(".cache/detector-independent"))
    parser.add_argument("--lofo-minutes", type=float, default=5.0)
    parser.add_argument("--skip-lofo", action="store_true")
    parser.add_argument(
        "--lofo-backbones",
        type=Path,
        default=None,
        help="Folder of fold backbones (FAMILY/compact_ast.*) trained elsewhere, e.g. on a GPU "
        "with scripts/train_detector.py --exclude-family FAMILY; heads are still fitted here "
        "(--lofo-minutes is then unused).",
    )
    args = parser.parse_args()
    if args.skip_lofo and args.lofo_backbones is not None:
        parser.error("--skip-lofo and --lofo-backbones contradict each other")
    command = "python -m benchmarks.detector " + shlex.join(sys.argv[1:])
    torch.set_num_threads(2)
    detector = load_detector()
    rows = load_manifest(args.corpus)
    clips = {
        s: load_clips(args.corpus, [r for r in rows if r["split"] == s])
        for s in ("train", "val", "test")
    }
    recipe = corpus_recipe(args.corpus)
    folds, fold_text = (
        load_folds(args.lofo_backbones, synthetic_families(clips), recipe)
        if args.lofo_backbones is not None
        else (None, "")
    )
    test = clips["test"]
    labels = [c.label for c in test]
    test_audio = waves(args.corpus, test)
    scores = detect_scores(detector, test_audio)
    overall = {"test split": score(labels, scores)}
    mp3_scores = detect_scores(detector, transcoded(test_audio))
    overall["test split after MP3 64 kbit/s"] = score(labels, mp3_scores)
    families = breakdown(labels, scores, [c.family for c in test])
    languages = breakdown(labels, scores, [str(c.row.get("language")) for c in test])
    genders = breakdown(labels, scores, [str(c.row.get("gender")) for c in test])
    baseline_train = mfcc_stats(args.corpus, [c.row for c in clips["train"]])
    baseline_test = mfcc_stats(args.corpus, [c.row for c in test])
    scaler = StandardScaler().fit(baseline_train)
    lr = LogisticRegression(max_iter=2000, class_weight="balanced").fit(
        scaler.transform(baseline_train), [c.label for c in clips["train"]]
    )
    overall["MFCC baseline, test split"] = score(
        labels, lr.decision_function(scaler.transform(baseline_test)).tolist()
    )
    independent = {}
    if (args.independent / "manifest.jsonl").exists():
        ind_rows = load_manifest(args.independent)
        ind = load_clips(args.independent, ind_rows)
        ind_labels = [c.label for c in ind]
        ind_scores = detect_scores(detector, waves(args.independent, ind))
        independent["shipped detector"] = score(ind_labels, ind_scores)
        ind_base = scaler.transform(mfcc_stats(args.independent, ind_rows))
        independent["MFCC baseline"] = score(ind_labels, lr.decision_function(ind_base).tolist())
        independent.update(
            {
                f"shipped, {k}": v
                for k, v in breakdown(ind_labels, ind_scores, [c.source for c in ind]).items()
            }
        )
    left_out = {} if args.skip_lofo else lofo(clips, args.corpus, args.lofo_minutes, folds)
    speeds = speed(detector, torch.cat(test_audio[:40], dim=1))
    lines = [
        "## Synthetic-voice detector",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Model: `{detector.model_id}`; corpus `{args.corpus}` (recipe "
        f"{recipe['version']}) "
        f"({', '.join(f'{s} {len(c)}' for s, c in clips.items())} clips).  ",
        f"{shipped_training()}  ",
        "Every score goes through `SyntheticVoiceDetector.predict`, as `audioguard detect` runs "
        "it; a clip where the speech gate hears no speech counts as 0.5. The MFCC baseline is "
        "logistic regression on the means and standard deviations of 20 MFCCs and their "
        "deltas, fitted on the train split.",
        "",
        *table("held-out data", overall),
        *table("test split, per synthetic family (vs all real)", families),
        *table("test split, per language", languages),
        *table("test split, per speaker gender", genders),
    ]
    if left_out:
        how = (
            f"{args.lofo_minutes:g} min each on this machine's CPU with no pre-training (a "
            "weaker recipe than the shipped backbone's)"
            if args.lofo_backbones is None
            else f"each backbone {fold_text}; heads fitted here"
        )
        lines += [
            "Leave-one-family-out: compact AST and head retrained from scratch without the "
            f"family, {how}; tested on that family against all real test clips. The festival "
            "and flite folds do not measure an unseen engine: flite is festival's C port and "
            "both speak with the same recorded voice (kal), so either one stays in training "
            "when the other is left out.",
            "",
        ]
        lines += table("left-out family", left_out)
    else:
        lines += ["Leave-one-family-out: not run by this command (`--skip-lofo`).", ""]
    if independent:
        lines += [
            "Independent evaluation set (sources and generators never used in training or tuning):",
            "",
        ]
        lines += table("independent set", independent)
    lines += [
        "| speed, one core | x real time |",
        "|---|---|",
        f"| shipped compact AST, end to end | {speeds['compact_x_realtime']:.0f}x |",
        f"| MIT-size AST (10.24 s windows, half overlap), forward only | "
        f"{speeds['mit_x_realtime']:.1f}x ({speeds['mit_window_ms']:.0f} ms per window) |",
        "",
        "",
    ]
    write_section(OUT, "detector", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
