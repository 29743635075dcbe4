"""How fast ``audioguard scan`` screens a folder of 5–10 s clips, on one and on two cores.

Each configuration runs the real command in a subprocess pinned with ``taskset`` to the cores
it may use (torch and the scan's thread pool both follow the affinity mask), with the CLI's
defaults otherwise: one keyed key, the public AudioSeal and Perth checks, the upload-screening
policy, and the detector on or off. Reported per configuration, as medians over ``--runs``:

- end to end: files per second and × real time (seconds of audio per wall-clock second) of
  the whole command over the folder, start-up included, as a CI job would see it;
- first line: seconds until the first verdict is printed (imports, building the models, one
  file), read from the command's own output as it streams;
- steady state: the files after the first, (N − 1) / (end − first line), what a long scan
  approaches.

The table goes into ``BENCHMARKS.md`` (section ``scan``), with the command, machine and date.

    python -m benchmarks.scan --corpus-dir .cache/corpus     # clips from benchmarks/corpus.py
    python -m benchmarks.scan --samples                      # clips cut from samples/ instead
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.corpus import KINDS, build_clips
from benchmarks.markdown import machine, write_section
from detectors.detector import SHIPPED_HEAD

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
AUDIOGUARD = Path(sys.executable).with_name("audioguard")
CLIP_SECONDS = (5.0, 10.0)


@dataclass(frozen=True)
class Config:
    detector: bool
    cores: int
    workers: int

    @property
    def label(self) -> str:
        return (
            f"{'with' if self.detector else 'without'} detector, {self.cores} core(s), "
            f"--workers {self.workers}"
        )


@dataclass(frozen=True)
class Run:
    """One ``audioguard scan`` over the folder: when it ended and when its first line came."""

    total_s: float
    first_s: float
    cpu_s: float  # user + system time of the command, all its threads
    load: float  # the machine's 1-minute load average when the run ended


@dataclass(frozen=True)
class Timing:
    config: Config
    total_s: float  # medians over the runs
    first_s: float
    cpu_s: float
    load: float
    files: int
    audio_s: float

    @property
    def files_per_s(self) -> float:
        return self.files / self.total_s

    @property
    def realtime(self) -> float:
        return self.audio_s / self.total_s

    @property
    def steady_files_per_s(self) -> float:
        return (self.files - 1) / max(1e-9, self.total_s - self.first_s)

    @property
    def steady_realtime(self) -> float:
        return self.steady_files_per_s * self.audio_s / self.files

    @property
    def audio_per_cpu(self) -> float:
        """Seconds of audio screened per CPU second: the cost, whatever else the machine runs."""
        return self.audio_s / self.cpu_s


def corpus_folder(cache: Path, count: int, into: Path) -> Path:
    """``count`` corpus clips, round-robin over speech, music and sfx, linked into a folder."""
    clips = build_clips(cache, 40)
    by_kind = [[c for c in clips if c.kind == kind] for kind in KINDS]
    chosen = [by_kind[i % len(KINDS)][i // len(KINDS)] for i in range(count)]
    for i, clip in enumerate(chosen):
        (into / f"{i:03d}_{clip.path.name}").symlink_to(clip.path)
    return into


def samples_folder(count: int, into: Path, seed: int = 7) -> Path:
    """``count`` windows of 5–10 s cut from the bundled samples at seeded offsets, as FLAC."""
    rng = np.random.default_rng(seed)
    sources = sorted(SAMPLES.glob("*/*.flac"))
    for i in range(count):
        data, rate = sf.read(sources[i % len(sources)], dtype="float32", always_2d=True)
        length = int(rng.uniform(*CLIP_SECONDS) * rate)
        if data.shape[0] < length:  # loop a short clip up to the window
            data = np.tile(data, (length // data.shape[0] + 1, 1))
        start = int(rng.integers(0, data.shape[0] - length + 1))
        sf.write(into / f"{i:03d}.flac", data[start : start + length], rate)
    return into


def scan_once(config: Config, folder: Path, key: Path, files: int) -> Run:
    """Run ``audioguard scan --json`` once, timing its end and its first output line."""
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[: config.cores])
    command = [
        "taskset", "-c", cores, str(AUDIOGUARD), "scan", str(folder), "--json",
        "--key", str(key), "--workers", str(config.workers),
    ]  # fmt: skip
    if not config.detector:
        command.append("--no-detector")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        lines, first = [], None
        for line in p.stdout:
            first = first if first is not None else time.perf_counter() - start
            lines.append(json.loads(line))
        stderr = p.stderr.read() if p.stderr else ""
    total = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    failed = [line for line in lines if "error" in line]
    if p.returncode not in (0, 3) or len(lines) != files or failed or first is None:
        raise RuntimeError(f"{config.label}: scan failed ({p.returncode}): {failed[:1]} {stderr}")
    return Run(total, first, cpu, os.getloadavg()[0])


def measure(config: Config, folder: Path, key: Path, runs: int) -> Timing:
    files = sorted(folder.iterdir())
    audio_s = sum(sf.info(str(f)).duration for f in files)
    done = [scan_once(config, folder, key, len(files)) for _ in range(runs)]
    timing = Timing(
        config,
        statistics.median(r.total_s for r in done),
        statistics.median(r.first_s for r in done),
        statistics.median(r.cpu_s for r in done),
        statistics.median(r.load for r in done),
        len(files),
        audio_s,
    )
    print(
        f"{config.label}: {timing.total_s:.1f} s for {len(files)} files "
        f"({timing.files_per_s:.2f} files/s, {timing.realtime:.1f}× real time), "
        f"first line after {timing.first_s:.1f} s, {timing.audio_per_cpu:.1f} audio s per CPU s, "
        f"load {timing.load:.1f}; runs: " + ", ".join(f"{r.total_s:.1f}" for r in done),
        file=sys.stderr,
    )
    return timing


def section(timings: list[Timing], source: str, command: str, note: str, runs: int) -> str:
    first = timings[0]
    rows = [
        f"| {'yes' if t.config.detector else 'no'} | {t.config.cores} | {t.config.workers} "
        f"| {t.total_s:.1f} | {t.files_per_s:.2f} | {t.realtime:.1f}× | {t.first_s:.1f} "
        f"| {t.steady_files_per_s:.2f} | {t.steady_realtime:.1f}× | {t.audio_per_cpu:.1f} "
        f"| {t.load:.1f} |"
        for t in timings
    ]
    return "\n".join(
        [
            "## Scan throughput: `audioguard scan`",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine()}  ",
            f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
            f"Audio: {first.files} clips of 5–10 s ({first.audio_s:.0f} s in all) from {source}. "
            "Each run is `audioguard scan FOLDER --json --key KEY --workers N` pinned with "
            "`taskset` to the cores shown: keyed, AudioSeal and Perth watermark checks and the "
            "upload-screening policy, with or without the synthetic-voice detector. Medians "
            f"of {runs} runs. *First line*: seconds until the first file's verdict appeared "
            "(start-up plus one file); *steady*: the files after it, (N − 1) / (end − first "
            "line), what a long scan approaches; *audio s per CPU s*: the command's user + "
            "system time, which other work on the machine inflates far less than wall time; "
            "*load*: the machine's 1-minute load average as the runs ended (above the core "
            "count, other programs were competing for the cores, and the 2-core rows suffer "
            "most).",
            *([f"{note}"] if note else []),
            "",
            "| detector | cores | workers | whole scan (s) | files/s | × real time "
            "| first line (s) | steady files/s | steady × real time | audio s per CPU s | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=REPO / ".cache" / "corpus")
    parser.add_argument("--samples", action="store_true", help="cut clips from samples/")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.scan", *given])
    have_cores = len(os.sched_getaffinity(0))
    detector = SHIPPED_HEAD.exists()
    note = "" if detector else "The shipped detector was not present: runs without it only."
    configs = [
        Config(d, cores, cores)
        for d in ((False, True) if detector else (False,))
        for cores in (1, 2)
        if cores <= have_cores
    ]
    if have_cores >= 2:  # is one worker with two torch threads any better than two workers?
        configs.append(Config(detector, 2, 1))
    with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
        folder = Path(tmp) / "clips"
        folder.mkdir()
        if args.samples:
            samples_folder(args.files, folder)
            source = "`samples/` (seeded windows)"
        else:
            corpus_folder(args.corpus_dir, args.files, folder)
            source = "the corpus of `benchmarks/corpus.py` (speech, music, sfx in turn)"
        key = Path(tmp) / "bench.key"
        subprocess.run([str(AUDIOGUARD), "watermark", "keygen", str(key)], check=True,
                       capture_output=True)  # fmt: skip
        timings = [measure(c, folder, key, args.runs) for c in configs]
    text = section(timings, source, command, note, args.runs)
    write_section(args.out, "scan", text)
    print(text)


if __name__ == "__main__":
    main()
