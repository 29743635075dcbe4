"""Synthetic-voice detector numbers for BENCHMARKS.md.

    .venv/bin/python -m benchmarks.detector --corpus .cache/detector-corpus [--lofo-minutes 5]

- the shipped detector on the corpus's held-out test split (speakers and sources it never saw):
  EER and AUC overall, per synthetic family, per language and per speaker gender;
- the same clips after MP3 at 64 kbit/s;
- leave-one-family-out: the compact AST and head retrained from scratch without a family
  (festival and flite together: one engine), then tested on it (the honest number for
  generators never seen);
- the independent evaluation set (other packages, other generators), when it is built;
- with ``--compare DIR``, other trainings (another seed) scored beside the shipped one;
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


def detect_scores(
    detector: SyntheticVoiceDetector,
    audio: list[torch.Tensor],
    abstained: list[bool] | None = None,
) -> list[float]:
    """File probabilities through ``SyntheticVoiceDetector.predict``, the path users run.

    A clip in which the speech gate finds no speech gets 0.5: the detector abstains, and an
    abstention must cost as much as a coin flip, not vanish from the count. Which clips
    abstained is appended to ``abstained`` when given, so the tables can say how many.
    """
    scores = []
    for wave in audio:
        p = detector.predict(wave, SAMPLE_RATE).synthetic_probability
        scores.append(0.5 if p is None else p)
        if abstained is not None:
            abstained.append(p is None)
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
    """Without one synthetic engine: train (or take) a backbone, fit a head, test on it.

    ``folds`` holds a backbone per fold trained elsewhere (see :func:`load_folds`); without
    it each is trained here for ``minutes``. The head is fitted here either way, without the
    fold's families, so every fold is scored the same way.
    """
    results = {}
    for name, left_out in fold_groups(synthetic_families(clips)).items():
        train, val, test = fold_split(clips, left_out)
        if folds is None:
            settings = TrainSettings(minutes=minutes, exclude_families=left_out)
            ast, _ = train_backbone(train, val, settings, log=lambda _: None)
        else:
            ast = folds[name]
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
        results[name] = score([c.label for c in test], detect_scores(detector, waves(corpus, test)))
        print(f"LOFO {name}: {results[name].to_dict()}", flush=True)
    return results


def fold_split(
    clips: dict[str, list[Clip]], left_out: tuple[str, ...]
) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """Train and val without the fold's families; test is those families against all real
    test clips, so the fold scores only generators its training never heard."""
    train = [c for c in clips["train"] if c.family not in left_out]
    val = [c for c in clips["val"] if c.family not in left_out]
    test = [c for c in clips["test"] if c.label == 0 or c.family in left_out]
    return train, val, test


def synthetic_families(clips: dict[str, list[Clip]]) -> list[str]:
    return sorted({c.family for c in clips["train"] if c.label == 1})


# flite is festival's C port and both speak with the same recorded voice (kal): a fold that
# leaves one out keeps the other in training and measures a seen engine, not an unseen one.
KINDRED_FAMILIES = (("festival", "flite"),)


def fold_groups(families: list[str]) -> dict[str, tuple[str, ...]]:
    """Fold name → the families it leaves out: one engine each, kindred engines together."""
    groups = {}
    for family in families:
        kin = next((k for k in KINDRED_FAMILIES if family in k), (family,))
        members = tuple(f for f in kin if f in families)
        groups["+".join(members)] = members
    return groups


def checked_card(folder: Path, recipe: dict[str, object]) -> dict:
    """A training's backbone card, refused unless it was built from this corpus's recipe:
    a model from another build would be scored on clips it may have trained on."""
    card = json.loads((folder / "compact_ast.json").read_text())
    built_from = card.get("trained_on", {}).get("recipe")
    if built_from != recipe:
        sys.exit(f"{folder}: trained on another corpus recipe ({built_from}), not this one's")
    return card


FOLD_SETTINGS = ("minutes", "batch", "lr", "window_s", "adversarial_weight", "device")


def load_folds(
    backbones: Path, groups: dict[str, tuple[str, ...]], recipe: dict[str, object]
) -> tuple[dict[str, ASTModel], str]:
    """Every fold's backbone from ``backbones/FOLD/compact_ast.*`` (a fold is named by the
    families it leaves out, joined by ``+``), and one sentence on how they were trained for
    the BENCHMARKS text.

    Checked before any scoring starts, because a fold that saw its families, was built from
    another corpus, or was trained unlike its siblings would make the table say something
    false: each card must leave out exactly its families, name this corpus's recipe, and
    share the others' settings.
    """
    if not groups:
        sys.exit("the corpus has no synthetic family to leave out")
    cards = {}
    for name, left_out in groups.items():
        path = backbones / name / "compact_ast.json"
        if not path.is_file():
            flags = " ".join(f"--exclude-family {f}" for f in left_out)
            sys.exit(
                f"{path.parent}: no fold backbone for {name!r}; train one with "
                f"scripts/train_detector.py {flags} --out {path.parent}"
            )
        card = checked_card(path.parent, recipe)
        if sorted(card.get("training", {}).get("exclude_families") or []) != sorted(left_out):
            sys.exit(f"{path}: the card does not say that exactly {name!r} was left out")
        cards[name] = card

    def shared(card: dict) -> tuple:
        return (
            *(card["training"].get(k) for k in FOLD_SETTINGS),
            card.get("pretraining", {}).get("minutes"),
            card.get("machine"),
            card["trained_on"].get("note"),
            card.get("transport"),
        )

    first = next(iter(cards.values()))
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
    models = {name: load_compact(backbones / name / "compact_ast").model for name in groups}
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


def head_val_eer(detector: SyntheticVoiceDetector) -> float:
    """The val EER of the embedding the head chose (its card keeps every one it tried)."""
    return float(detector.head.card["embedding_choice"]["chosen"]["eer"])


def abstentions(clips: list[Clip], abstained: list[bool]) -> str:
    """How many clips got no verdict, by source, for the text beside the tables."""
    by_source: dict[str, int] = {}
    for clip, none in zip(clips, abstained, strict=True):
        if none:
            by_source[clip.source] = by_source.get(clip.source, 0) + 1
    where = ", ".join(f"{n} {source}" for source, n in sorted(by_source.items()))
    return f"{sum(abstained)} of {len(clips)} test clips" + (f": {where}" if where else "")


def compare_trainings(
    shipped: tuple[SyntheticVoiceDetector, Scores, Scores | None],
    folders: list[Path],
    test: tuple[list[int], list[torch.Tensor]],
    independent: tuple[list[int], list[torch.Tensor]] | None,
    recipe: dict[str, object],
) -> list[str]:
    """The shipped detector (with the scores already measured) beside other trainings in
    ``folders`` (another seed, another machine): how far one training's numbers move, and
    whether the val EER that picked the shipped one ranks the others as held-out data does.

    Each folder's card must name this corpus's recipe and leave no family out, or the row
    would compare unlike things.
    """
    cards = {folder: checked_card(folder, recipe) for folder in folders}  # before any scoring
    for folder, card in cards.items():
        if card.get("training", {}).get("exclude_families"):
            sys.exit(f"{folder}: a leave-one-family-out fold, not a whole training")
    cards[SHIPPED_DIR] = json.loads((SHIPPED_DIR / "compact_ast.json").read_text())
    rows = [("shipped", SHIPPED_DIR, *shipped)]
    for folder in folders:
        detector = load_detector(folder / "compact_ast_head.json", folder)
        on_test = score(test[0], detect_scores(detector, test[1]))
        on_ind = (
            score(independent[0], detect_scores(detector, independent[1])) if independent else None
        )
        rows.append((folder.name, folder, detector, on_test, on_ind))
    this_build = [row for row in rows if not other_build(cards[row[1]], recipe)]
    ranking = (
        f"among the trainings of this build it ranks "
        f"`{min(this_build, key=lambda row: head_val_eer(row[2]))[0]}` first"
        if this_build
        else "no training here was fitted on this build"
    )
    elsewhere = [row[0] for row in rows if row not in this_build]
    if elsewhere:
        ranking += (
            f" ({', '.join(elsewhere)} came from another build, whose val split holds the same "
            "speakers and sources but other clips, so its val EER does not rank against these)"
        )
    lines = [
        "Other trainings beside the shipped one (another seed, or another length: the second "
        "column says how each was trained). The val EER is the one the head's embedding was "
        f"chosen by (fitted windows, not `predict`); {ranking}. The test and independent "
        "columns go through `predict` like every table above and chose nothing.",
        "",
        "| training | trained | val EER at head fit | test EER | independent set EER |",
        "|---|---|---|---|---|",
    ]
    for name, folder, detector, on_test, on_ind in rows:
        card = cards[folder]
        training = card["training"]
        ind = fmt(on_ind).split(" | ")[0] if on_ind is not None else "–"
        lines.append(
            f"| {name} (seed {training['seed']}) | {short_training(card)} | "
            f"{100 * head_val_eer(detector):.1f}%{other_build(card, recipe)} | "
            f"{fmt(on_test).split(' | ')[0]} | {ind} |"
        )
    return lines + [""]


def other_build(card: dict, recipe: dict[str, object]) -> str:
    """A note for a training whose val split came from another build than the one scored."""
    built_from = card.get("trained_on", {}).get("recipe", {})
    return "" if built_from == recipe else f" (recipe-{built_from.get('version')} build's val)"


def short_training(card: dict) -> str:
    """One cell's worth of how a backbone was trained, and what it started from."""
    training, pre = card["training"], card.get("pretraining", {}).get("minutes")
    text = f"{f'{pre:g} min pre-training, ' if pre else ''}{training['steps']} steps in "
    text += f"{training['minutes']:g} min on {card.get('machine', 'a CPU')}"
    source = card.get("initialised_from")
    return f"{text}, from a backbone of {short_training(source)}" if source else text


def training_text(card: dict) -> str:
    """How one backbone was trained, in a sentence, from its card."""
    training, pre = card["training"], card.get("pretraining", {})
    text = (
        f"{training['steps']} steps of batch {training['batch']} in "
        f"{training['minutes']:g} min on {card.get('machine', 'a CPU')}"
    )
    if pre.get("minutes"):
        text += f", after {pre['minutes']:g} min of {pre['method']}"
    built = card["trained_on"]
    text += f", on the recipe-{built['recipe'].get('version')} build"
    note = built.get("note")
    return f"{text} ({note})" if note else text


def shipped_training(recipe: dict[str, object]) -> str:
    """How the shipped backbone was trained, from its card, so a table names its recipe, and
    whether that was another build of the corpus than the one scored here."""
    card = json.loads((SHIPPED_DIR / "compact_ast.json").read_text())
    text = f"Shipped backbone: {training_text(card)}"
    source = card.get("initialised_from")
    if source:
        text += f"; it started from a backbone trained with {training_text(source)}"
    text += "."
    if any(other_build(c, recipe) for c in (card, source) if c):
        text += (
            f" Part of its training was on another build, not this one (recipe "
            f"{recipe['version']}); recipes 1 to 3 put the same packages in the test split "
            "(`sources.REAL_SOURCES` fixes each package's split), so no training heard a test "
            "source."
        )
    return text


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
        help="Folder of fold backbones (FOLD/compact_ast.*, FOLD the left-out families joined "
        "by +) trained elsewhere, e.g. on a GPU with scripts/train_detector.py "
        "--exclude-family FAMILY (repeated for each); heads are still fitted here "
        "(--lofo-minutes is then unused).",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        help="A folder with another training's compact_ast.* and compact_ast_head.json (e.g. "
        "another seed) to score beside the shipped detector; repeatable.",
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
        load_folds(args.lofo_backbones, fold_groups(synthetic_families(clips)), recipe)
        if args.lofo_backbones is not None
        else (None, "")
    )
    test = clips["test"]
    labels = [c.label for c in test]
    test_audio = waves(args.corpus, test)
    abstained: list[bool] = []
    scores = detect_scores(detector, test_audio, abstained)
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
    ind_set = None
    if (args.independent / "manifest.jsonl").exists():
        ind_rows = load_manifest(args.independent)
        ind = load_clips(args.independent, ind_rows)
        ind_labels = [c.label for c in ind]
        ind_set = (ind_labels, waves(args.independent, ind))
        ind_scores = detect_scores(detector, ind_set[1])
        independent["shipped detector"] = score(ind_labels, ind_scores)
        ind_base = scaler.transform(mfcc_stats(args.independent, ind_rows))
        independent["MFCC baseline"] = score(ind_labels, lr.decision_function(ind_base).tolist())
        independent.update(
            {
                f"shipped, {k}": v
                for k, v in breakdown(ind_labels, ind_scores, [c.source for c in ind]).items()
            }
        )
    compared = (
        compare_trainings(
            (detector, overall["test split"], independent.get("shipped detector")),
            args.compare,
            (labels, test_audio),
            ind_set,
            recipe,
        )
        if args.compare
        else []
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
        f"{shipped_training(recipe)}  ",
        "Every score goes through `SyntheticVoiceDetector.predict`, as `audioguard detect` runs "
        "it; a clip where the speech gate hears no speech counts as 0.5 "
        f"({abstentions(test, abstained)}). The MFCC baseline is logistic regression on the "
        "means and standard deviations of 20 MFCCs and their deltas, fitted on the train split.",
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
        kindred = [
            f"{' and '.join(k)} are left out together: flite is festival's C port and both "
            "speak with the same recorded voice (kal), so a fold without only one of them would "
            "still have heard the engine."
            for k in KINDRED_FAMILIES
            if "+".join(k) in left_out
        ]
        lines += [
            "Leave-one-family-out: compact AST and head retrained from scratch without the "
            f"fold's families, {how}; tested on them against all real test clips. "
            + " ".join(kindred),
            "",
        ]
        lines += table("left-out families", left_out)
    else:
        lines += ["Leave-one-family-out: not run by this command (`--skip-lofo`).", ""]
    if independent:
        lines += [
            "Independent evaluation set (sources and generators never used in training or tuning):",
            "",
        ]
        lines += table("independent set", independent)
    lines += compared
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
