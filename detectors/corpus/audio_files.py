"""Decode the source files of the corpus: WAV and Ogg through soundfile, raw GSM through ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from detectors.corpus.neutralise import to_rate


def read_native(path: Path) -> tuple[np.ndarray, int]:
    """A file as mono float32 at its own rate (channels are averaged)."""
    if path.suffix == ".gsm":  # headerless GSM 06.10 from the older asterisk prompt packages
        raw = subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-f",
                "gsm",
                "-i",
                str(path),
                "-f",
                "f32le",
                "-ac",
                "1",
                "pipe:",
            ],
            check=True,
            capture_output=True,
        ).stdout
        return np.frombuffer(raw, dtype=np.float32).copy(), 8_000
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def read_mono(path: Path, rate: int) -> np.ndarray:
    """A file as mono float32 resampled to ``rate``."""
    audio, native = read_native(path)
    return to_rate(audio, native, rate)
