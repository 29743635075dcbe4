"""Time and peak memory of the CLI on one long file: an hour of 48 kHz stereo by default.

An auditor hands over a podcast or a meeting recording, not a 10 s clip; the limits allow
an hour. Each command runs as a user would run it, in its own process, and its peak
resident memory is read from the kernel's accounting of that process (``wait4``). The file
is the repository's speech and music samples, resampled to 48 kHz and tiled to length,
written as 16-bit WAV. Medians over ``--runs``; the table goes into ``BENCHMARKS.md``
(section ``long-file``).

    python -m benchmarks.long_file [--minutes 60] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from benchmarks.markdown import BENCHMARKS, machine, write_section

REPO = Path(__file__).resolve().parent.parent
AUDIOGUARD = Path(sys.executable).with_name("audioguard")
RATE = 48_000
SOURCES = (
    "samples/speech/warzone_tutorial_tut73.flac",
    "samples/music/singularity_awakening_44k_stereo.flac",
    "samples/speech/fillets_society_stebet0.flac",
)


def build_long_file(path: Path, minutes: float) -> float:
    """Tile the samples to ``minutes`` of 48 kHz stereo; returns the duration in seconds."""
    pieces = []
    for name in SOURCES:
        audio, rate = sf.read(REPO / name, dtype="float32", always_2d=True)
        channels = torch.from_numpy(audio.T.copy())
        stereo = channels.expand(2, -1) if channels.shape[0] == 1 else channels[:2]
        pieces.append(AF.resample(stereo, rate, RATE).T.numpy())
    cycle = np.concatenate(pieces)
    total = int(minutes * 60 * RATE)
    with sf.SoundFile(path, "w", RATE, 2, "PCM_16") as out:
        written = 0
        while written < total:
            block = cycle[: total - written]
            out.write(block)
            written += len(block)
    return total / RATE


def measure(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident memory (MiB) of one command; fails loudly on an error."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            sys.exit(f"{shlex.join(argv)} failed:\n{log.read().decode(errors='replace')}")
    return seconds, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=BENCHMARKS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        long_file, marked, key = folder / "long.wav", folder / "long.marked.wav", folder / "k.key"
        duration = build_long_file(long_file, args.minutes)
        ag = str(AUDIOGUARD)
        subprocess.run([ag, "watermark", "keygen", str(key)], check=True, capture_output=True)
        commands = {
            "detect": [ag, "detect", str(long_file)],
            "scan (detector, keyed with one key, AudioSeal, Perth)": [
                ag, "scan", str(long_file), "--key", str(key),
            ],
            "watermark embed (keyed, verifies its output)": [
                ag, "watermark", "embed", str(long_file), str(marked), "--key", str(key),
                "--payload", "c0ffee01",
            ],
            "watermark detect (keyed)": [ag, "watermark", "detect", str(marked), "--key", str(key)],
        }  # fmt: skip
        rows = []
        for label, argv in commands.items():
            runs = [measure(argv) for _ in range(args.runs)]
            seconds = statistics.median(r[0] for r in runs)
            memory = statistics.median(r[1] for r in runs)
            rows.append((label, seconds, memory))
            print(f"{label}: {seconds:.1f} s, {memory} MiB", flush=True)
        size = long_file.stat().st_size

    lines = [
        "## One long file: time and peak memory",
        "",
        "Command: `python -m benchmarks.long_file "
        f"--minutes {args.minutes:g} --runs {args.runs}`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"File: {duration / 60:.0f} min of 48 kHz stereo 16-bit WAV ({size / 2**20:.0f} MiB), "
        "the repository's speech and music samples tiled to length. Each command runs in its "
        "own process with the CLI's defaults, on all cores; medians of "
        f"{args.runs} runs, start-up included.",
        "",
        "| command | wall time | × real time | peak memory |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {seconds:.1f} s | {duration / seconds:.0f}x | {memory:,} MiB |"
        for label, seconds, memory in rows
    ]
    decoded = duration * RATE * 2 * 4 / 2**20
    lines += ["", f"For scale: the decoded file is {decoded:,.0f} MiB of float32 samples."]
    write_section(args.out, "long-file", "\n".join(lines))


if __name__ == "__main__":
    main()
