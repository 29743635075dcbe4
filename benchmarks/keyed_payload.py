"""The keyed mark's weak spots, measured so that two versions of the code can be compared.

``watermark_robustness.py`` draws a fresh key per run, and the payload rates under noise and
mixing move by a point or two from key to key: more than most changes to the planner or the
decoder are worth. This script fixes everything but the code: each clip gets a key and a
payload derived from its name, the same noise draws, crops and tracks to mix in, so a change
run before and after sees identical trials (a paired comparison), and several of each per
clip give enough trials to count failures of about 1%.

    python -m benchmarks.keyed_payload --corpus-dir /tmp/corpus --skip 160 --clips 100

Which clips a table used is part of its command: keep the clips you tune on apart from the
ones you report, as ``watermark_robustness.py --skip`` does.

Which clips lose the payload depends on the key as much as on the code: a change that moves
the key's pattern (the cell layout, the version) draws a different set of unlucky clips, and
one key per clip then cannot tell the change from that luck (40% sync cells lost 6 mixes
of 2,340 with one set of keys and 11 with another). ``--key-sets 3`` repeats every clip
with two more keys, payloads and sets of draws; the first set is always the same as
without it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import multiprocessing
import os
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.markdown import machine, write_section
from benchmarks.watermark_robustness import (
    EXACT_PAYLOAD_SECONDS,
    REPO,
    corpus_clips,
    load,
    other_track,
)
from guard.edits import EDITS
from watermark.keyed import KeyedBackend
from watermark.types import WatermarkError

SEED = 20261127
EDIT_NAMES = ("noise_20db", "opus_32k", "mix_-10db", "crop_3s")
DRAWN = {"noise_20db", "crop_3s", "mix_-10db"}
"""Edits with random choices of their own (noise, where to crop, which track to mix in),
applied ``--draws`` times per clip: mixing fails or not mostly by the track mixed in."""


def schedule(draws: int) -> list[tuple[str, int]]:
    """Every trial of one clip as (edit, draw), in the order its random choices are made."""
    return [(name, draw) for name in EDIT_NAMES for draw in range(draws if name in DRAWN else 1)]


@dataclass(frozen=True)
class Trial:
    """One edit of one marked clip."""

    edit: str
    detected: bool
    exact: bool | None  # None: shorter than 5 s after the edit (a crop)


@dataclass(frozen=True)
class ClipResult:
    path: str
    snr_db: float | None
    trials: tuple[Trial, ...]
    embed_error: str | None = None


def measure(task: tuple[int, list[str], int, int]) -> ClipResult:
    """Embed with the clip's own key and payload (of its key set), then run every edit
    and detect."""
    index, paths, draws, key_set = task
    torch.set_num_threads(1)
    clip = Path(paths[index]).name  # key set 0 keeps the label tables were made with
    label = f"{SEED}/{clip}" if key_set == 0 else f"{SEED}/{key_set}/{clip}"
    seed = hashlib.sha256(label.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:8], "big"))
    backend = KeyedBackend(seed)
    payload = f"{int(rng.integers(0, 2**32, dtype=np.uint64)):08x}"
    host, rate = load(Path(paths[index]))
    try:
        result = backend.embed(host, rate, payload)
    except WatermarkError as exc:  # counted as missed under every edit, not dropped
        long_enough = host.shape[1] / rate >= EXACT_PAYLOAD_SECONDS
        missed = tuple(
            Trial(name, False, False if long_enough and name != "crop_3s" else None)
            for name, _ in schedule(draws)
        )
        return ClipResult(paths[index], None, missed, embed_error=str(exc))
    trials = []
    for name, draw in schedule(draws):
        other = other_track(paths, index, rng) if EDITS[name].needs_other else None
        edited, edited_rate = EDITS[name].apply(
            result.audio, rate, np.random.default_rng([int(rng.integers(2**31)), draw]), other
        )
        found = backend.detect(edited, edited_rate)
        long_enough = edited.shape[1] / edited_rate >= EXACT_PAYLOAD_SECONDS
        exact = (found.detected and found.payload == payload) if long_enough else None
        trials.append(Trial(name, found.detected, exact))
    return ClipResult(paths[index], result.snr_db, tuple(trials))


def table(results: list[ClipResult]) -> list[str]:
    """Failures per edit, counted over trials, and how many clips they came from."""
    lines = [
        "| edit | trials | not detected | payload missing or wrong (≥5 s) | exact payload "
        "| clips with a failure |",
        "|---|---|---|---|---|---|",
    ]
    for name in EDIT_NAMES:
        trials = [(r, t) for r in results for t in r.trials if t.edit == name]
        missed = sum(not t.detected for _, t in trials)
        judged = [t.exact for _, t in trials if t.exact is not None]
        wrong = sum(not exact for exact in judged)
        failing = {Path(r.path).stem for r, t in trials if not t.detected or t.exact is False}
        exact_rate = f"{100 * (1 - wrong / len(judged)):.1f}%" if judged else "n/a"
        lines.append(
            f"| {name} | {len(trials)} | {missed} | {wrong}/{len(judged)} | {exact_rate} "
            f"| {len(failing)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=REPO / ".cache" / "corpus")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N clips")
    parser.add_argument("--clips", type=int, default=40, help="corpus clips per kind")
    parser.add_argument(
        "--draws", type=int, default=3, help="noise draws, crops and mixed-in tracks per clip"
    )
    parser.add_argument(
        "--key-sets", type=int, default=1, help="independent keys per clip (see above)"
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    clips = corpus_clips(args.clips, args.corpus_dir, args.skip)
    paths = [str(c.path) for c in clips]
    tasks = [
        (i, paths, args.draws, key_set)
        for key_set in range(args.key_sets)
        for i in range(len(clips))
    ]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = list(
            tqdm(
                pool.imap(measure, tasks),
                total=len(tasks),
                unit="clip",
                disable=not sys.stderr.isatty(),
            )
        )
    given = sys.argv[1:] if argv is None else argv
    snrs = [r.snr_db for r in results if r.snr_db is not None]
    refused = [r for r in results if r.embed_error]
    body = [
        "## Keyed watermark: payload under noise, Opus, mixing and crops (fixed keys)",
        "",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.keyed_payload', *given])}`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Audio: clips {args.skip}–{args.skip + args.clips - 1} of each kind of the corpus "
        f"from `benchmarks/corpus.py` ({len(clips)} clips); a key and payload derived from "
        f"each clip's name and key set; noise draws, crops and mixed-in tracks per clip: "
        f"{args.draws}; key sets: {args.key_sets}.",
        "",
        f"- median SNR of the mark {statistics.median(snrs):.2f} dB, tenth percentile "
        f"{np.percentile(snrs, 10):.1f} dB; embed refused {len(refused)} clips (counted as missed)",
        "",
        *table(results),
        "",
        "Every trial is the same on every run of the same command, so a change to the planner "
        "or the decoder is judged by running this before and after it. A crop is 3 s, too "
        "short to judge its payload.",
    ]
    text = "\n".join(body) + "\n"
    write_section(args.out, f"keyed-payload-from-{args.skip}", text)
    print(text)


if __name__ == "__main__":
    main()
