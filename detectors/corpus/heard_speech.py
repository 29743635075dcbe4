"""Keep only source files that hold speech, measured, not trusted from a folder name.

The game packages mix their voices with everything else a level plays: fillets-ng-data's
English folder is more than half growls, slurps, ringing phones, a motor and two pieces of
music, under the same file-name pattern as the dialogue. Labelled "real speech", such files
teach nothing about voices and put sound effects into the test split, where the detector's
speech gate rightly refuses to judge them. Silero VAD (the same gate `audioguard detect` uses)
measures each file once; the seconds are cached beside the unpacked package, because a build
reads the same few thousand files every time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from detectors.corpus.audio_files import read_mono
from detectors.speech import CHUNK, speech_model, speech_seconds

MIN_HEARD_SPEECH_S = 0.2
"""Less than this and a file is not speech. Spoken single letters (KLettres) still hear
0.2-0.5 s; effects and music hear 0-0.15 s."""
CACHE_NAME = ".heard_speech.json"


def heard_seconds(path: Path) -> float:
    """Seconds of ``path`` that Silero VAD calls speech (an empty file hears none)."""
    torch.set_num_threads(1)
    try:
        audio = read_mono(path, 16_000).astype(np.float32)
    except RuntimeError:  # the resampler refuses a file with no samples
        return 0.0
    if audio.size < CHUNK:
        return 0.0
    return speech_seconds(speech_model()(torch.from_numpy(audio)))


def speech_files(paths: Sequence[Path], cache_file: Path, workers: int = 2) -> set[Path]:
    """The files in which the VAD hears at least ``MIN_HEARD_SPEECH_S`` of speech.

    ``cache_file`` maps a file (path, size) to its seconds, so rebuilding costs nothing.
    """
    cached = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    keys = [f"{p}:{p.stat().st_size}" for p in paths]
    missing = {k: p for k, p in zip(keys, paths, strict=True) if k not in cached}
    if missing:
        with ProcessPoolExecutor(max(1, workers), mp_context=get_context("spawn")) as pool:
            seconds = pool.map(heard_seconds, missing.values(), chunksize=16)
            cached.update(zip(missing, seconds, strict=True))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cached, indent=0, sort_keys=True))
    return {p for k, p in zip(keys, paths, strict=True) if cached[k] >= MIN_HEARD_SPEECH_S}
