"""``audioguard detect`` and ``audioguard detectors fit|eval|build-corpus``.

Thin: decode with ``guard.audio``, call ``detectors``, format. The detector component never
reads users' files; this module hands it waveforms.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from guard import audio as audio_io
from guard.progress import each_audio_file, progress, say

if TYPE_CHECKING:
    from detectors.evaluation import Scores

HEAD_HELP = "Detector head (JSON); default: the shipped compact AST head."


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--head", type=click.Path(dir_okay=False), help=HEAD_HELP)
@click.option("--backbone", help="AST backbone (HF id or directory) when the head names none.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, one per line.")
def detect(paths: tuple[str, ...], head: str | None, backbone: str | None, as_json: bool) -> None:
    """Synthetic-voice probability per file and per window; exit 1 if any input failed."""
    from detectors import DetectorError, DetectorResult, load_detector

    detector = load_detector(head, backbone)

    def emit(path: Path, result: DetectorResult) -> None:
        if as_json:
            click.echo(json.dumps({"path": str(path), **result.to_dict()}))
        elif result.synthetic_probability is None:
            say(f"{path}: no speech to judge")
        else:
            worst = max(result.segments, key=lambda s: s.synthetic_probability)
            say(
                f"{path}: synthetic probability {result.synthetic_probability:.2f} "
                f"(most synthetic {worst.start:.1f}-{worst.end:.1f} s: "
                f"{worst.synthetic_probability:.2f})"
            )

    each_audio_file(paths, as_json, detector.predict, emit, (DetectorError,))


@click.group()
def detectors() -> None:
    """Fit, evaluate and build training data for the synthetic-voice detector."""


def _labelled(real: str, synthetic: str) -> Iterator[tuple[Path, int, str]]:
    """Every audio file under the two roots with its label and its folder (for breakdowns)."""
    for root, label in ((real, 0), (synthetic, 1)):
        for path in audio_io.iter_audio_paths([root]):
            if path == Path(root) and path.is_dir():  # a folder with no audio stands for itself
                raise click.ClickException(f"{root}: {audio_io.folder_problem(path)}")
            folder = path.parent.relative_to(Path(root)) if Path(root).is_dir() else Path(".")
            yield path, label, f"{'real' if label == 0 else 'synthetic'}/{folder}"


@detectors.command()
@click.option("--real", required=True, type=click.Path(exists=True), help="Real speech.")
@click.option("--synthetic", required=True, type=click.Path(exists=True), help="Synthetic.")
@click.option("--backbone", help="HF id or local AST directory; default: the shipped compact AST.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Head file to write.")
def fit(real: str, synthetic: str, backbone: str | None, out: str) -> None:
    """Fit a calibrated head on your own labelled audio (layers chosen by cross-validation)."""
    from detectors.backbone import load_backbone
    from detectors.fitting import FileEmbedding, embed_file, fit_head_on_files

    model = load_backbone(backbone)
    files, skipped = [], 0
    items = list(_labelled(real, synthetic))
    for path, label, group in progress(items, label="files"):
        try:
            samples, info = audio_io.load(path)
        except audio_io.AudioError as exc:
            say(f"skipped: {exc}", err=True)
            skipped += 1
            continue
        pools = embed_file(model, samples, info.sample_rate)
        if pools is None:
            say(f"skipped: {path}: nothing audible", err=True)
            skipped += 1
            continue
        files.append(FileEmbedding(pools, label, group))
    head, choice = fit_head_on_files(files, model)
    head.card = {
        "name": Path(out).stem,
        "backbone_spec": backbone,
        "backbone": model.name,
        "trained_on": {"real": real, "synthetic": synthetic, "files": len(files)},
        "embedding_choice": choice,
    }
    head.save(Path(out))
    best = choice["chosen"]
    click.echo(
        f"wrote {out}: layers {best['layers']} {best['pooling']} pooling, cross-validated "
        f"EER {best['eer']:.3f}, AUC {best['auc']:.3f} on {len(files)} files ({skipped} skipped)"
    )


@detectors.command(name="eval")
@click.option("--real", required=True, type=click.Path(exists=True), help="Real speech.")
@click.option("--synthetic", required=True, type=click.Path(exists=True), help="Synthetic.")
@click.option("--head", type=click.Path(dir_okay=False), help=HEAD_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON object.")
def evaluate(real: str, synthetic: str, head: str | None, as_json: bool) -> None:
    """EER and AUC over two folders, and per sub-folder (each against all of the other class)."""
    from detectors import DetectorError, load_detector
    from detectors.evaluation import breakdown, score

    detector = load_detector(head)
    labels, scores, groups, failed = [], [], [], 0
    for path, label, group in progress(list(_labelled(real, synthetic)), quiet=as_json):
        try:
            samples, info = audio_io.load(path)
        except audio_io.AudioError as exc:
            say(f"skipped: {exc}", err=True)
            failed += 1
            continue
        try:
            result = detector.predict(samples, info.sample_rate)
        except DetectorError as exc:
            say(f"skipped: {path}: {exc}", err=True)
            failed += 1
            continue
        if result.synthetic_probability is None:
            say(f"skipped: {path}: the speech gate heard no speech to judge", err=True)
            continue
        labels.append(label)
        scores.append(result.synthetic_probability)
        groups.append(group)
    overall = score(labels, scores)
    if overall.eer is None:  # an EER needs both classes; exit 0 here would read as a pass
        raise click.ClickException(
            f"no EER: {overall.n_real} real files ({real}) and {overall.n_synthetic} synthetic "
            f"files ({synthetic}) got a verdict; both need speech the detector can judge"
        )
    folders = breakdown(labels, scores, groups)
    if as_json:
        report = {"model": detector.model_id, "overall": overall.to_dict()}
        report["folders"] = {k: v.to_dict() for k, v in folders.items()}
        click.echo(json.dumps(report))
    else:
        click.echo(f"model {detector.model_id}")
        say(_line("all", overall))
        for name, s in folders.items():
            say(_line(name, s))
    if failed:
        sys.exit(1)


def _line(name: str, s: Scores) -> str:
    if s.eer is None:
        return f"{name:40s} n={s.n_real + s.n_synthetic}: one class only"
    counts = f"real {s.n_real} synthetic {s.n_synthetic}"
    return f"{name:40s} EER {100 * s.eer:5.1f}%  AUC {s.auc:.3f}  {counts}"


@detectors.command(name="build-corpus")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Same seed, same corpus.")
@click.option("--clips-per-source", type=int, help="Cap per source (default: the builder's).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Processes that synthesise and measure speech at once.",
)
def build_corpus_command(out: str, seed: int, clips_per_source: int | None, workers: int) -> None:
    """Build the training corpus from Debian packages (real speech, TTS, vocoder re-synthesis)."""
    from detectors.corpus import build_corpus

    manifest = build_corpus(
        Path(out), seed=seed, clips_per_source=clips_per_source, progress=True, workers=workers
    )
    click.echo(f"wrote {manifest}")
