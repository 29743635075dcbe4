"""Keep only source files that hold speech, measured, not trusted from a folder name.

The game packages mix their voices with everything else a level plays: fillets-ng-data's
English folder is more than half growls, slurps, ringing phones, a motor and two pieces of
music, under the same file-name pattern as the dialogue. Labelled "real speech", such files
teach nothing about voices and put sound effects into the test split, where the detector's
speech gate rightly refuses to judge them. Silero VAD (the same gate `audioguard detect` uses)
measures each file once; the seconds are cached beside the unpacked packages, because a build
reads the same few thousand files every time.

The price: the VAD also misses some very short real utterances (an isolated letter or digit,
a shouted game line such as "Victory"), and those are left out too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm import tqdm

from detectors.corpus.audio_files import read_mono
from detectors.speech import speech_model, speech_seconds

MIN_HEARD_SPEECH_S = 0.2
"""Less than this and a file is left out: effects and music hear 0-0.15 s (7 of the VAD's
32 ms chunks make 0.22 s)."""
CACHE_NAME = ".heard_speech.json"


def heard_seconds(path: Path) -> float:
    """Seconds of ``path`` that Silero VAD calls speech (an empty file hears none)."""
    mono = read_mono(path, 16_000)
    return speech_seconds(speech_model()(torch.from_numpy(mono))) if mono.size else 0.0


def _one_thread() -> None:
    torch.set_num_threads(1)


def _counted(values: Iterable[float], bar: tqdm) -> Iterator[float]:
    for value in values:
        bar.update()
        yield value


def _key(path: Path, root: Path) -> str:
    """Where the file is below the cache's folder, its size and its time: a moved cache is
    still valid, and a re-recorded file of the same length is measured again."""
    stat = path.stat()
    return f"{os.path.relpath(path, root)}:{stat.st_size}:{stat.st_mtime_ns}"


def _read_cache(cache_file: Path) -> dict[str, float]:
    try:
        return json.loads(cache_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # none yet, or cut short: measure again
        return {}


def speech_files(
    paths: Sequence[Path], cache_file: Path, workers: int = 2, progress: bool = False
) -> set[Path]:
    """The files in which the VAD hears at least ``MIN_HEARD_SPEECH_S`` of speech.

    ``cache_file`` keeps every file's seconds, so rebuilding costs nothing; it is written
    whole or not at all.
    """
    cached = _read_cache(cache_file)
    keys = [_key(p, cache_file.parent) for p in paths]
    missing = {k: p for k, p in zip(keys, paths, strict=True) if k not in cached}
    if missing:
        bar = tqdm(total=len(missing), desc="speech check", unit="file", disable=not progress)
        if workers <= 1:  # in this process, as render_all does: no spawn, no thread change
            seconds = map(heard_seconds, missing.values())
            cached.update(zip(missing, _counted(seconds, bar), strict=True))
        else:
            with ProcessPoolExecutor(
                min(workers, len(missing)), get_context("spawn"), initializer=_one_thread
            ) as pool:
                seconds = pool.map(heard_seconds, missing.values(), chunksize=16)
                cached.update(zip(missing, _counted(seconds, bar), strict=True))
        bar.close()
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(cache_file.name + ".part")
        partial.write_text(json.dumps(cached, indent=0, sort_keys=True))
        os.replace(partial, cache_file)
    return {p for k, p in zip(keys, paths, strict=True) if cached[k] >= MIN_HEARD_SPEECH_S}
