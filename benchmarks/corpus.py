"""Build the benchmark corpus: 5–10 s clips of real speech, music and sound effects.

The watermark's claims (robustness, zero false positives, honest p-values) are only as good as
the audio they were measured on, and that audio must be free to redistribute and rebuildable by
anyone. So the corpus is cut from free Debian packages (``apt-get download`` + ``dpkg-deb -x``,
no other network), with fixed seeds and sorted file lists: the same Debian release gives the
same clips. Extracted audio and finished clips are cached, so a second call downloads nothing.

Packages and files differ from the bundled ``samples/`` where possible, so that a mark tuned
on the samples is not also scored on them.

    python -m benchmarks.corpus .cache/corpus
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from detectors.corpus.debian import fetch_package, matches

CORPUS_VERSION = 1
"""Bump when the recipe below changes, so cached clips from an older recipe are rebuilt."""

KINDS = ("speech", "music", "sfx")
BASE_RATE = 16_000
MIN_SECONDS, MAX_SECONDS = 5.0, 10.0
HIGH_RATE_MUSIC_EVERY = 4
HIGH_RATES = (44_100, 48_000)
"""Every fourth music clip stays stereo at 44.1 or 48 kHz (alternately), so rates and channels
vary the way uploads do; the rest are 16 kHz mono, the rate the watermark is specified at."""


@dataclass(frozen=True)
class Clip:
    """One corpus clip on disk, with where it came from and under which licence."""

    path: Path
    kind: str
    source: str
    license: str


@dataclass(frozen=True)
class Source:
    """A set of files in one Debian package that yields clips of one kind.

    Short files (effects, prompts, dialogue lines) are joined in sorted order with short gaps,
    the way a game scene or a conversation strings them together; a long file gives a window.
    ``archive`` names a zip inside the package (Quake-style ``.pk3``, Warzone's ``.wz``) whose
    members the patterns reach through ``ARCHIVE.d/``.
    """

    kind: str
    package: str
    patterns: tuple[str, ...]
    license: str
    exclude: tuple[str, ...] = ()
    archive: str | None = None
    gap_seconds: tuple[float, float] = (0.1, 0.4)


_WZ = "usr/share/games/warzone2100/base.wz"
_NEXUIZ = "usr/share/games/nexuiz/data/music.pk3"

SOURCES: tuple[Source, ...] = (
    Source(
        "speech",
        "fillets-ng-data",
        ("usr/share/games/fillets-ng/sound/*/en/*.ogg",),
        "GPL-2",
        # the "linux" level is keyboard noise, "music", "viking1" and "cancan" are sung
        exclude=(
            "*/mik-x-stebet0.ogg",
            "*/sound/linux/*",
            "*/sound/music/*",
            "*/sound/viking1/*",
            "*/sound/cancan/*",
        ),
    ),
    Source(
        "speech",
        "warzone2100-data",
        (f"{_WZ}.d/audio/tutorial/*.ogg", f"{_WZ}.d/audio/memressp/missmesg/*.ogg"),
        "GPL-2+",
        archive=_WZ,
    ),
    Source(
        "speech",
        "asterisk-core-sounds-fr-wav",
        ("usr/share/asterisk/sounds/fr_CA_f_June/*.wav",),
        "CC-BY-SA-3.0",
    ),
    Source(
        "speech",
        "asterisk-core-sounds-es-wav",
        ("usr/share/asterisk/sounds/es_MX_f_Allison/*.wav",),
        "CC-BY-SA-3.0",
    ),
    Source("music", "hyperrogue-music", ("usr/share/hyperrogue/music/*.ogg",), "CC-BY-SA-3.0"),
    Source(
        "music",
        "nexuiz-music",
        (f"{_NEXUIZ}.d/sound/cdtracks/*.ogg",),
        "GPL-2+",
        exclude=("*/thunder.ogg",),
        archive=_NEXUIZ,
    ),
    Source(
        "music", "frozen-bubble-data", ("usr/share/games/frozen-bubble/snd/*zik*.ogg",), "GPL-2"
    ),
    Source(
        "music",
        "lincity-ng-data",
        ("usr/share/games/lincity-ng/music/default/*.ogg",),
        "GPL-2+ or CC-BY-SA-2.0",
    ),
    Source("music", "extremetuxracer-data", ("usr/share/games/etr/music/*.ogg",), "GPL-2+"),
    Source(
        "sfx",
        "lincity-ng-data",
        ("usr/share/games/lincity-ng/sounds/*.wav",),
        "GPL-2+ or CC-BY-SA-2.0",
        gap_seconds=(0.0, 0.2),
    ),
    Source(
        "sfx",
        "hyperrogue-music",
        ("usr/share/hyperrogue/sounds/*.ogg",),
        "CC-BY-SA-4.0 or CC0-1.0 (per file)",
        exclude=("*/seen-kraken.ogg",),
        gap_seconds=(0.0, 0.3),
    ),
    Source(
        "sfx",
        "warzone2100-data",
        (f"{_WZ}.d/audio/sfx/*/*.ogg",),
        "GPL-2+",
        exclude=("*/silence.ogg",),
        archive=_WZ,
        gap_seconds=(0.0, 0.3),
    ),
    Source(
        "sfx",
        "frozen-bubble-data",
        ("usr/share/games/frozen-bubble/snd/*.ogg",),
        "GPL-2",
        exclude=("*zik*",),
        gap_seconds=(0.0, 0.3),
    ),
    Source(
        "sfx",
        "freeciv-data",
        ("usr/share/games/freeciv/stdsounds/*.ogg",),
        "GPL-2+",
        gap_seconds=(0.0, 0.3),
    ),
    Source(
        "sfx",
        "chromium-bsu-data",
        ("usr/share/games/chromium-bsu/wav/*.wav",),
        "Expat",
        exclude=("*/music_*",),
        gap_seconds=(0.0, 0.3),
    ),
)


# ---------------------------------------------------------------------------------------------
# Fetching packages


def _fetch_package(package: str, cache_dir: Path) -> Path:
    """Download and unpack one package, keeping only the audio files that a source uses."""
    dest = cache_dir / "packages" / package
    sources = [s for s in SOURCES if s.package == package]
    patterns = tuple(p for s in sources for p in s.patterns)
    archives = sorted({s.archive for s in sources if s.archive})
    fetch_package(package, dest, patterns, archives)
    return dest


def _source_files(source: Source, cache_dir: Path) -> list[Path]:
    root = cache_dir / "packages" / source.package
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and matches(p.relative_to(root).as_posix(), source.patterns, source.exclude)
    ]
    return sorted(files)


# ---------------------------------------------------------------------------------------------
# Cutting clips


@dataclass(frozen=True)
class _Plan:
    """Everything needed to cut one clip, fixed before any work runs in parallel."""

    index: int
    source: Source
    files: tuple[Path, ...]
    first: int
    seconds: float
    rate: int
    channels: int
    seed: int
    out: Path


def _read(
    path: Path, rate: int, channels: int, start_s: float = 0.0, seconds: float = 0.0
) -> torch.Tensor:
    """Decode (part of) a file to float32 ``(channels, samples)`` at ``rate``."""
    with sf.SoundFile(str(path)) as f:
        src_rate = f.samplerate
        start = int(start_s * src_rate)
        frames = int(math.ceil(seconds * src_rate)) + 64 if seconds else -1
        f.seek(min(start, f.frames))
        data = f.read(frames, dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.T.copy())
    if channels == 1:
        audio = audio.mean(0, keepdim=True)
    elif audio.shape[0] == 1:
        audio = audio.repeat(channels, 1)
    else:
        audio = audio[:channels]
    if src_rate != rate:
        audio = torchaudio.functional.resample(audio, src_rate, rate)
    return audio


def _trim_silence(audio: torch.Tensor, rate: int, floor_db: float = -50.0) -> torch.Tensor:
    """Cut leading and trailing near-silence so joined effects do not leave long dead gaps."""
    hop = max(1, rate // 100)
    env = audio.abs().amax(0)
    n = env.shape[0] // hop
    if n == 0:
        return audio
    frames = env[: n * hop].reshape(n, hop).amax(1)
    loud = torch.nonzero(frames > frames.max() * 10 ** (floor_db / 20)).flatten()
    if loud.numel() == 0:
        return audio[:, :0]
    return audio[:, int(loud[0]) * hop : (int(loud[-1]) + 1) * hop]


def _is_usable(audio: torch.Tensor, rate: int) -> bool:
    """Reject windows that are mostly silent or too quiet to say anything about a watermark."""
    hop = rate // 20
    mono = audio.mean(0)
    n = mono.shape[0] // hop
    rms = mono[: n * hop].reshape(n, hop).pow(2).mean(1).sqrt()
    level_db = 20 * torch.log10(rms.clamp_min(1e-9))
    active = (level_db > level_db.max() - 35).float().mean().item()
    return active >= 0.5 and float(mono.pow(2).mean().sqrt()) > 10 ** (-50 / 20)


def _assemble(plan: _Plan, rng: random.Random) -> torch.Tensor:
    """A window of one long file, or consecutive short files joined with short gaps."""
    n = int(round(plan.seconds * plan.rate))
    first = plan.files[plan.first]
    info = sf.info(str(first))
    if info.duration > plan.seconds + 1.0:
        margin = 0.05 * info.duration
        start = rng.uniform(margin, info.duration - plan.seconds - margin)
        return _read(first, plan.rate, plan.channels, start, plan.seconds)[:, :n]
    parts: list[torch.Tensor] = []
    total, i = 0, plan.first
    while total < n and i < plan.first + len(plan.files):
        part = _trim_silence(
            _read(plan.files[i % len(plan.files)], plan.rate, plan.channels), plan.rate
        )
        gap = torch.zeros(plan.channels, int(rng.uniform(*plan.source.gap_seconds) * plan.rate))
        parts += [part, gap]
        total += part.shape[1] + gap.shape[1]
        i += 1
    return torch.cat(parts, dim=1)[:, :n]


def _finish(audio: torch.Tensor, rate: int) -> torch.Tensor:
    """Short fades so a cut does not click; scale down only if resampling pushed peaks past 0.95."""
    fade = int(0.01 * rate)
    ramp = torch.linspace(0.0, 1.0, fade)
    audio = audio.clone()
    audio[:, :fade] *= ramp
    audio[:, -fade:] *= ramp.flip(0)
    peak = float(audio.abs().max())
    return audio * (0.95 / peak) if peak > 0.95 else audio


def _cut(plan: _Plan) -> Clip | None:
    """Cut one clip, retrying from other files when a window turns out to be near silent."""
    rng = random.Random(plan.seed)
    for _ in range(8):
        audio = _assemble(plan, rng)
        if audio.shape[1] == int(round(plan.seconds * plan.rate)) and _is_usable(audio, plan.rate):
            plan.out.parent.mkdir(parents=True, exist_ok=True)
            sf.write(
                str(plan.out), _finish(audio, plan.rate).T.numpy(), plan.rate, subtype="PCM_16"
            )
            return Clip(plan.out, plan.source.kind, plan.source.package, plan.source.license)
        plan = _replace_first(plan, rng.randrange(len(plan.files)))
    return None


def _replace_first(plan: _Plan, first: int) -> _Plan:
    return _Plan(**{**plan.__dict__, "first": first})


def _plans(kind: str, per_kind: int, cache_dir: Path) -> list[_Plan]:
    """Deal the clips of one kind round-robin over its sources, each source in a seeded order."""
    sources = [s for s in SOURCES if s.kind == kind]
    files = {s: tuple(_source_files(s, cache_dir)) for s in sources}
    orders = {
        s: random.Random(f"{kind}:{s.package}").sample(range(len(files[s])), len(files[s]))
        for s in sources
    }
    plans = []
    for i in range(per_kind):
        source = sources[i % len(sources)]
        turn = i // len(sources)
        rng = random.Random(f"{kind}:{i}")
        first = orders[source][turn % len(files[source])]
        rate, channels = BASE_RATE, 1
        if kind == "music" and i % HIGH_RATE_MUSIC_EVERY == HIGH_RATE_MUSIC_EVERY - 1:
            rate, channels = HIGH_RATES[(i // HIGH_RATE_MUSIC_EVERY) % len(HIGH_RATES)], 2
        name = f"{i:03d}_{source.package}_{files[source][first].stem}.flac".replace(" ", "_")
        plans.append(
            _Plan(
                index=i,
                source=source,
                files=files[source],
                first=first,
                seconds=round(rng.uniform(MIN_SECONDS, MAX_SECONDS), 2),
                rate=rate,
                channels=channels,
                seed=rng.randrange(2**31),
                out=cache_dir / "clips" / kind / name,
            )
        )
    return plans


# ---------------------------------------------------------------------------------------------
# Public API


def _clip_index(path: str) -> int | None:
    """A clip's index within its kind, from the ``NNN_`` its name starts with (None if not)."""
    head = Path(path).name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def _load_manifest(manifest: Path, per_kind: int) -> list[Clip] | None:
    """The cached clips, if the cache holds at least ``per_kind`` of each kind.

    Clip ``i`` of a kind is planned from ``i`` alone, so a larger build holds every smaller
    one as its first clips: asking a 1,600-clip cache for 1,330 must not wipe and rebuild it
    (which once deleted held-out clips another benchmark was reading).
    """
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    if data.get("version") != CORPUS_VERSION or data.get("per_kind", 0) < per_kind:
        return None
    indices = [_clip_index(c["path"]) for c in data["clips"]]
    if None in indices:
        return None
    clips = [
        Clip(Path(c["path"]), c["kind"], c["source"], c["license"])
        for c, i in zip(data["clips"], indices, strict=True)
        if i < per_kind
    ]
    return clips if all(c.path.exists() for c in clips) else None


def build_clips(cache_dir: Path = Path(".cache/corpus"), per_kind: int = 40) -> list[Clip]:
    """Return ``per_kind`` clips of each kind, building (and downloading) only what is missing."""
    cache_dir = Path(cache_dir).resolve()
    manifest = cache_dir / "manifest.json"
    cached = _load_manifest(manifest, per_kind)
    if cached is not None:
        return cached
    packages = sorted({s.package for s in SOURCES})
    with ProcessPoolExecutor(  # spawn: never fork a process that may already run torch threads
        max_workers=2,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(1,),
    ) as pool:
        list(pool.map(_fetch_package, packages, [cache_dir] * len(packages)))
        shutil.rmtree(cache_dir / "clips", ignore_errors=True)
        plans = [p for kind in KINDS for p in _plans(kind, per_kind, cache_dir)]
        clips = [c for c in pool.map(_cut, plans, chunksize=4) if c is not None]
    versions = {
        p: json.loads((cache_dir / "packages" / p / ".done").read_text())["version"]
        for p in packages
    }
    manifest.write_text(
        json.dumps(
            {
                "version": CORPUS_VERSION,
                "per_kind": per_kind,
                "packages": versions,
                "clips": [{**asdict(c), "path": str(c.path)} for c in clips],
            },
            indent=1,
        )
    )
    return clips


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by shaping white noise in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.shape[0], dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def _noise_window(kind: str, seconds: float, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    n = int(round(seconds * BASE_RATE))
    noise = rng.standard_normal(n) if kind == "white" else _pink(n, rng)
    level = 10 ** (rng.uniform(-45.0, -10.0) / 20)
    noise *= level / (np.sqrt(np.mean(noise**2)) + 1e-12)
    return torch.from_numpy(np.clip(noise, -1.0, 1.0).astype(np.float32))[None], BASE_RATE


def unmarked_windows(
    clips: list[Clip], seconds: float, count: int, seed: int, noise_fraction: float = 0.1
) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield ``count`` random ``seconds``-long windows of unmarked audio, with native rates.

    This is the null distribution for calibrating p-values: windows from every clip long enough,
    at random offsets, plus white and pink noise (``noise_fraction`` of the windows, half each)
    at random levels, because noise is where a detector's score is most likely to wander.
    """
    infos = [(c.path, sf.info(str(c.path))) for c in clips]
    eligible = [(path, info) for path, info in infos if info.duration >= seconds]
    if not eligible:
        raise ValueError(f"no clip is at least {seconds} s long")
    rng = np.random.default_rng(seed)
    for _ in range(count):
        draw = rng.random()
        if draw < noise_fraction:
            yield _noise_window("white" if draw < noise_fraction / 2 else "pink", seconds, rng)
            continue
        path, info = eligible[int(rng.integers(len(eligible)))]
        n = int(round(seconds * info.samplerate))
        start = int(rng.integers(info.frames - n + 1))
        data, rate = sf.read(str(path), start=start, frames=n, dtype="float32", always_2d=True)
        yield torch.from_numpy(data.T.copy()), rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="cache folder for packages and clips")
    parser.add_argument("--per-kind", type=int, default=40)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    clips = build_clips(args.out, args.per_kind)
    size = sum(c.path.stat().st_size for c in clips)
    by_kind = {k: sum(c.kind == k for c in clips) for k in KINDS}
    print(
        f"{len(clips)} clips {by_kind} in {args.out}/clips, {size / 1e6:.1f} MB, "
        f"{time.perf_counter() - began:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
