"""Measure every watermark backend against the edits of the keyed-watermark issue.

For each backend and each clip: embed a random payload, then for every edit in
``guard.edits.EDITS`` run detection on the edited *marked* clip (detected? exact payload? bit
accuracy?) and on the same edit of the *unmarked* clip (a detection there is a false positive).
Also the marked audio's SNR, PESQ on speech, and embed/detect speed on one CPU core. The tables
go into ``BENCHMARKS.md``, one section per backend, replaced in place on every run, with the
command, machine and date that produced them, so a number there can always be reproduced.

    python -m benchmarks.watermark_robustness                      # corpus, all backends
    python -m benchmarks.watermark_robustness --quick --backends keyed   # bundled samples
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
import torch
import torchaudio
from pesq import PesqError, pesq
from tqdm import tqdm

from benchmarks.corpus import KINDS, Clip, build_clips
from benchmarks.markdown import machine, write_section
from guard.edits import EDITS, Edit, EditError
from watermark.registry import create_backend
from watermark.types import WatermarkBackend, WatermarkError

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
EXACT_PAYLOAD_SECONDS = 5.0
SPEED_SECONDS = 10.0
SPEED_RATE = 16_000
PESQ_RATE = 16_000
SEED = 20240601
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# One clip, all edits (runs in a worker process)


@dataclass(frozen=True)
class EditOutcome:
    """What detection said about one edit of one clip, marked and unmarked."""

    detected: bool
    exact_payload: bool | None  # None: no payload, or edited audio shorter than 5 s
    bit_accuracy: float | None
    false_positive: bool
    unmarked_p: float
    error: str | None = None


@dataclass(frozen=True)
class ClipOutcome:
    """Everything measured on one clip."""

    path: str
    kind: str
    seconds: float
    snr_db: float | None
    pesq: float | None
    marked_seconds: float
    verified: bool
    embed_error: str | None
    edits: dict[str, EditOutcome] = field(default_factory=dict)


def load(path: Path) -> tuple[torch.Tensor, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), rate


def payload_bits(backend: str) -> int:
    """How many payload bits the backend carries (perth: none), read from the backend itself."""
    if backend == "keyed":
        from watermark.coding import PAYLOAD_BITS

        return PAYLOAD_BITS
    if backend == "audioseal":
        from watermark.backends.audioseal_backend import NBITS

        return NBITS
    return 0


def random_payload(backend: str, rng: np.random.Generator) -> str | None:
    bits = payload_bits(backend)
    return f"{int(rng.integers(0, 2**bits, dtype=np.uint64)):0{bits // 4}x}" if bits else None


def bit_accuracy(sent: str, got: str | None) -> float:
    """Fraction of payload bits read back; a payload that was not returned counts as chance."""
    if got is None or len(got) != len(sent):
        return 0.5
    bits = len(sent) * 4
    return 1.0 - bin(int(sent, 16) ^ int(got, 16)).count("1") / bits


def pesq_wb(reference: torch.Tensor, degraded: torch.Tensor, rate: int) -> float | None:
    """Wide-band PESQ at 16 kHz on the mono mix; None where PESQ finds no speech to score."""
    ref = torchaudio.functional.resample(reference.mean(0), rate, PESQ_RATE).double().numpy()
    deg = torchaudio.functional.resample(degraded.mean(0), rate, PESQ_RATE).double().numpy()
    try:
        return float(pesq(PESQ_RATE, ref, deg, "wb"))
    except PesqError:
        return None


_WORKER: dict[str, object] = {}


def _init_worker(name: str, key: bytes, weights: str | None) -> None:
    torch.set_num_threads(1)
    _WORKER["backend"] = make_backend(name, key, weights)
    _WORKER["name"] = name


def make_backend(name: str, key: bytes, weights: str | None) -> WatermarkBackend:
    """Each backend gets only the argument it takes: the key for keyed, weights for audioseal."""
    if name == "keyed":
        return create_backend(name, key=key)
    return create_backend(name, weights=weights) if name == "audioseal" else create_backend(name)


ROWS: dict[str, Edit] = {
    "none": Edit("none", lambda audio, rate, rng, other=None: (audio, rate), 0.99),
    **EDITS,
}
"""The issue's edits, after a baseline row with no edit at all."""


def _edit_outcome(
    backend: WatermarkBackend,
    edit: Edit,
    marked: torch.Tensor | None,
    host: torch.Tensor,
    rate: int,
    payload: str | None,
    other: tuple[torch.Tensor, int],
    seed: int,
) -> EditOutcome:
    """Apply one edit (same random choices) to marked and unmarked audio and detect on both.

    ``marked`` is None when embedding failed: the clip then counts as missed, and its unmarked
    side is still checked for false positives.
    """
    missed = 0.5 if payload else None
    try:
        plain, plain_rate = edit.apply(host, rate, np.random.default_rng(seed), other)
        if marked is not None:
            edited, edited_rate = edit.apply(marked, rate, np.random.default_rng(seed), other)
    except EditError as exc:
        return EditOutcome(False, None, missed, False, 1.0, error=str(exc))
    null = backend.detect(plain, plain_rate)
    if marked is None:
        long_enough = plain.shape[1] / plain_rate >= EXACT_PAYLOAD_SECONDS
        exact = False if payload and long_enough else None
        return EditOutcome(False, exact, missed, null.detected, null.p_value)
    found = backend.detect(edited, edited_rate)
    long_enough = edited.shape[1] / edited_rate >= EXACT_PAYLOAD_SECONDS
    return EditOutcome(
        detected=found.detected,
        exact_payload=(found.detected and found.payload == payload)
        if payload and long_enough
        else None,
        bit_accuracy=bit_accuracy(payload, found.payload) if payload else missed,
        false_positive=null.detected,
        unmarked_p=null.p_value,
    )


def other_track(paths: list[str], index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """Another clip of the set to mix under this one (never itself)."""
    choice = int(rng.integers(len(paths) - 1))
    return load(Path(paths[choice + (choice >= index)]))


def measure_clip(task: tuple[int, list[str], list[str]]) -> ClipOutcome:
    """Embed into one clip, then run every edit on the marked and the unmarked clip.

    A clip the backend refuses to mark counts as missed under every edit: a benchmark that
    dropped its failures would overstate the mark.
    """
    index, paths, kinds = task
    backend: WatermarkBackend = _WORKER["backend"]  # type: ignore[assignment]
    rng = np.random.default_rng([SEED, index])
    host, rate = load(Path(paths[index]))
    payload = random_payload(str(_WORKER["name"]), rng)
    outcome = ClipOutcome(
        paths[index], kinds[index], host.shape[1] / rate, None, None, 0.0, False, None
    )
    try:
        result = backend.embed(host, rate, payload)
    except WatermarkError as exc:
        result, outcome = None, replace(outcome, embed_error=str(exc))
    marked = None if result is None else result.audio
    other = other_track(paths, index, rng)
    edits = {
        name: _edit_outcome(
            backend, edit, marked, host, rate, payload, other, int(rng.integers(2**31))
        )
        for name, edit in ROWS.items()
    }
    if result is None:
        return replace(outcome, edits=edits)
    return replace(
        outcome,
        snr_db=result.snr_db if math.isfinite(result.snr_db) else None,
        pesq=pesq_wb(host, result.audio, rate) if kinds[index] == "speech" else None,
        marked_seconds=result.marked_seconds,
        verified=result.verification.detected,
        edits=edits,
    )


# ---------------------------------------------------------------------------------------------
# Speed (main process, one core)


@dataclass(frozen=True)
class Speed:
    """× real time on one CPU thread; ``embed`` is None (with ``note``) when embedding refused."""

    embed: float | None
    detect: float  # on marked audio
    detect_unmarked: float  # on the same audio unmarked: what a platform mostly scans
    note: str | None = None


def _timed(action: Callable[[], T]) -> tuple[float, T]:
    """Seconds one call took, and what it returned."""
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


def speed(make: Callable[[], WatermarkBackend], name: str, clips: list[Clip], runs: int) -> Speed:
    """Median × real time of embed and of detect on 10 s of 16 kHz mono, one CPU thread.

    Each run builds its own backend: the keyed mark's work depends on the key (how many
    strengths a host needs before its mark has room for edits), so every run gets a fresh one.
    """
    torch.set_num_threads(1)
    pieces = [load(c.path) for c in clips]
    audio = torch.cat(
        [torchaudio.functional.resample(a.mean(0, keepdim=True), r, SPEED_RATE) for a, r in pieces],
        dim=1,
    )
    audio = audio.repeat(1, math.ceil(SPEED_SECONDS * SPEED_RATE / audio.shape[1]))
    audio = audio[:, : int(SPEED_SECONDS * SPEED_RATE)]
    payload = random_payload(name, np.random.default_rng(SEED))
    backends = [make() for _ in range(runs)]
    try:
        backends[0].embed(audio, SPEED_RATE, payload)  # warms up
        embeds = [_timed(lambda b=b: b.embed(audio, SPEED_RATE, payload)) for b in backends]
    except WatermarkError as exc:
        seconds = [_timed(lambda: backends[0].detect(audio, SPEED_RATE))[0] for _ in backends]
        detect = SPEED_SECONDS / statistics.median(seconds)
        return Speed(None, detect, detect, note=f"embed refused the speed audio: {exc}")
    detect = [
        _timed(lambda b=b, r=r: b.detect(r.audio, SPEED_RATE))[0]
        for b, (_, r) in zip(backends, embeds, strict=True)
    ]
    unmarked = [_timed(lambda b=b: b.detect(audio, SPEED_RATE))[0] for b in backends]
    return Speed(
        SPEED_SECONDS / statistics.median(seconds for seconds, _ in embeds),
        SPEED_SECONDS / statistics.median(detect),
        SPEED_SECONDS / statistics.median(unmarked),
    )


# ---------------------------------------------------------------------------------------------
# Tables


def _rate(values: Iterable[bool]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def edit_rows(results: list[ClipOutcome], has_payload: bool) -> list[str]:
    """One markdown row per edit: detection (all and per kind), payload, false positives."""
    header = (
        "| edit | target | detected | speech | music | sfx | exact payload (≥5 s) "
        "| bit accuracy | false positives | min unmarked p | pass |"
    )
    lines = [header, "|" + "---|" * 11]
    for name, edit in ROWS.items():
        outcomes = [(r.kind, r.edits[name]) for r in results]
        detected = _rate(o.detected for _, o in outcomes)
        per_kind = [_rate(o.detected for k, o in outcomes if k == kind) for kind in KINDS]
        exact = _rate(o.exact_payload for _, o in outcomes if o.exact_payload is not None)
        bits = [o.bit_accuracy for _, o in outcomes if o.bit_accuracy is not None]
        false_pos = sum(o.false_positive for _, o in outcomes)
        min_p = min((o.unmarked_p for _, o in outcomes), default=None)
        # No edited clip of 5 s or more (a 3 s crop): there is no payload target to miss.
        payload_ok = not has_payload or edit.target < 0.99 or exact is None or exact >= edit.target
        passed = detected is not None and detected >= edit.target and false_pos == 0 and payload_ok
        lines.append(
            f"| {name} | {edit.target:.0%} | {_pct(detected)} | "
            + " | ".join(_pct(v) for v in per_kind)
            + f" | {_pct(exact)} | {_pct(statistics.mean(bits)) if bits else 'n/a'} | "
            f"{false_pos}/{len(outcomes)} | {min_p:.2g} | {'yes' if passed else '**no**'} |"
        )
    return lines


def summary_lines(results: list[ClipOutcome], speeds: Speed | None) -> list[str]:
    counts = ", ".join(f"{sum(r.kind == k for r in results)} {k}" for k in KINDS)
    seconds = sum(r.seconds for r in results)
    marked = sum(r.marked_seconds for r in results)
    failures = [r for r in results if r.embed_error]
    lines = [
        f"- clips: {len(results)} ({counts}), {seconds / 60:.1f} min of audio",
        f"- median SNR of the mark: {_num(_median(r.snr_db for r in results))} dB; "
        f"median PESQ (wide-band, speech): {_num(_median(r.pesq for r in results), 2)}",
        f"- marked: {_pct(marked / seconds if seconds else None)} of the audio; embed's own "
        f"verification passed on {sum(r.verified for r in results)}/{len(results)} clips",
        f"- embed refused or failed on {len(failures)} clips (counted as missed under every edit)"
        + "".join(f"\n  - `{Path(r.path).name}`: {r.embed_error}" for r in failures[:5]),
    ]
    if speeds:
        embed = "n/a" if speeds.embed is None else f"{speeds.embed:.0f}× real time"
        lines.append(
            f"- speed on one CPU thread, 16 kHz mono, {SPEED_SECONDS:.0f} s of audio, median of "
            "runs that each build their own backend (keyed: a fresh key): "
            f"embed {embed} (including its own verification), detect {speeds.detect:.0f}× "
            f"real time on marked and {speeds.detect_unmarked:.0f}× on unmarked audio"
            + (f" ({speeds.note})" if speeds.note else "")
        )
    return lines


def section(
    name: str,
    args: argparse.Namespace,
    results: list[ClipOutcome],
    speeds: Speed | None,
    command: str,
) -> str:
    source = "the bundled samples" if args.quick else "the corpus from `benchmarks/corpus.py`"
    if args.skip:
        source += (
            f", clips {args.skip}–{args.skip + args.clips - 1} of each kind, which no tuning saw"
        )
    weights = f" with weights `{args.audioseal_weights}`" if name == "audioseal" else ""
    body = [
        f"## Watermark robustness: `{name}`"
        + (" (quick)" if args.quick else " (held-out clips)" if args.skip else ""),
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Audio: {source}; backend `{name}`{weights}.",
        "",
        *summary_lines(results, speeds),
        "",
        *edit_rows(results, payload_bits(name) > 0),
        "",
        "Detected: share of marked clips detected after the edit. Exact payload: share of "
        "edited clips of 5 s or more whose payload decoded exactly. Bit accuracy counts a "
        "payload that was not returned as chance (50%). False positives: unmarked clips, same "
        "edit, reported as marked. Pass: detection at the target, no false positive, and (for "
        "the 99% edits of a backend with a payload) the exact payload at the target.",
    ]
    return "\n".join(body) + "\n"


# ---------------------------------------------------------------------------------------------
# Driver


def sample_clips() -> list[Clip]:
    return [
        Clip(path, path.parent.name, "samples", "see samples/LICENSES.md")
        for path in sorted(SAMPLES.glob("*/*.flac"))
    ]


def corpus_clips(per_kind: int, cache: Path, skip: int = 0) -> list[Clip]:
    """Clips ``skip .. skip + per_kind`` of each kind (the default build has 40 of each).

    A build is a prefix of any larger build, so ``--skip 40`` measures clips that tuning on
    the default 40 never saw.
    """
    clips = build_clips(cache, max(skip + per_kind, 40))
    return [
        c for kind in KINDS for c in [c for c in clips if c.kind == kind][skip : skip + per_kind]
    ]


def run_backend(
    name: str, clips: list[Clip], args: argparse.Namespace, key: bytes
) -> tuple[list[ClipOutcome], Speed | None] | None:
    """Speed on one core, then robustness on all; None when the backend cannot be built here."""
    try:
        make_backend(name, key, args.audioseal_weights)  # can this backend be built here?
    except (ImportError, WatermarkError) as exc:
        print(f"skipping {name}: {exc}", file=sys.stderr)
        return None
    speeds = None
    if args.speed_runs:  # first, while nothing else of ours runs on the machine
        speed_clips = [c for c in clips if c.kind in ("speech", "music")][:6]
        speeds = speed(
            lambda: make_backend(name, os.urandom(32), args.audioseal_weights),
            name,
            speed_clips,
            args.speed_runs,
        )
    paths = [str(c.path) for c in clips]
    kinds = [c.kind for c in clips]
    tasks = [(i, paths, kinds) for i in range(len(clips))]
    context = multiprocessing.get_context("spawn")  # no fork after torch has started threads
    with context.Pool(
        args.workers, initializer=_init_worker, initargs=(name, key, args.audioseal_weights)
    ) as pool:
        results = list(
            tqdm(
                pool.imap(measure_clip, tasks),
                total=len(tasks),
                desc=name,
                unit="clip",
                disable=not sys.stderr.isatty(),
            )
        )
    return results, speeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="keyed,audioseal,perth")
    parser.add_argument("--quick", action="store_true", help="the bundled samples only")
    parser.add_argument("--clips", type=int, default=40, help="corpus clips per kind")
    parser.add_argument(
        "--skip", type=int, default=0, help="leave out the first N clips of each kind"
    )
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--corpus-dir", type=Path, default=REPO / ".cache" / "corpus")
    parser.add_argument(
        "--audioseal-weights",
        default="small",
        help="a folder or file of AudioSeal weights; 'small' (default) is the pair audioguard "
        "trains and ships, since the official weights cannot be downloaded offline",
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--speed-runs",
        type=int,
        default=9,
        help="runs (keyed: keys) to take the median of; 0 skips",
    )
    args = parser.parse_args(argv)
    clips = sample_clips() if args.quick else corpus_clips(args.clips, args.corpus_dir, args.skip)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.watermark_robustness", *given])
    key = os.urandom(32)
    crashed = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            measured = run_backend(name, clips, args, key)
        except Exception:  # a crashing backend must not cost the others their numbers
            traceback.print_exc()
            crashed.append(name)
            continue
        if measured is None:
            continue
        results, speeds = measured
        text = section(name, args, results, speeds, command)
        label = f"{name}-quick" if args.quick else f"{name}-from-{args.skip}" if args.skip else name
        write_section(args.out, label, text)
        print(text)
    if crashed:
        sys.exit(f"backends that crashed: {', '.join(crashed)}")


if __name__ == "__main__":
    main()
