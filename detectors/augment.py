"""Channel augmentation: what a platform does to an upload before a detector hears it.

A detector's score must hold after an upload is transcoded, recorded in a room, played through
a cheap speaker or turned down. These are pure, seeded functions on 16 kHz audio: the corpus
builder applies them to a share of clips of both classes and records what it did, and training
code can call `random_augment` on the fly. Codecs run through the ``ffmpeg`` command line.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import scipy.signal
import torch

RATE = 16_000
CODECS = {"mp3": ("libmp3lame", "mp3"), "aac": ("aac", "m4a"), "opus": ("libopus", "ogg")}
"""Codec name -> (ffmpeg encoder, container suffix). Containers that carry the encoder delay
(LAME header, MP4 edit list, Ogg pre-skip) so that the decoded audio lines up with the input."""
BITRATES_KBPS = (32, 48, 64, 96, 128)
OPERATIONS = ("codec", "noise", "reverb", "band", "gain")
_ORDER = ("reverb", "band", "noise", "gain", "codec")
"""A room comes before the microphone's band, noise and gain, and a transcode comes last."""


def _as_2d(audio: np.ndarray) -> np.ndarray:
    return audio[None] if audio.ndim == 1 else audio


def codec(audio: np.ndarray, name: str, kbps: int, rate: int = RATE) -> np.ndarray:
    """Encode and decode with ffmpeg; the result has the input's shape and length."""
    encoder, suffix = CODECS[name]
    data = _as_2d(audio).astype(np.float32)
    channels, frames = data.shape
    raw = ["-f", "f32le", "-ar", str(rate), "-ac", str(channels)]
    with tempfile.TemporaryDirectory(prefix="augment-") as tmp:
        encoded = Path(tmp) / f"coded.{suffix}"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", *raw, "-i", "pipe:", "-c:a", encoder]
            + ["-b:a", f"{kbps}k", str(encoded)],
            input=data.T.tobytes(),
            check=True,
            capture_output=True,
        )
        decoded = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(encoded), *raw, "pipe:"],
            check=True,
            capture_output=True,
        ).stdout
    out = np.frombuffer(decoded, dtype=np.float32).reshape(-1, channels).T
    out = np.pad(out[:, :frames], ((0, 0), (0, max(0, frames - out.shape[1]))))
    return out.reshape(audio.shape).astype(np.float32)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f) or brown (1/f^2) noise."""
    white = rng.standard_normal(n)
    if colour == "white":
        return white / np.sqrt(np.mean(white**2))
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    shaped = np.fft.irfft(spectrum / freqs ** (0.5 if colour == "pink" else 1.0), n)
    return shaped / np.sqrt(np.mean(shaped**2))


def add_noise(
    audio: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white"
) -> np.ndarray:
    data = _as_2d(audio)
    power = float(np.mean(data.astype(np.float64) ** 2)) + 1e-12
    noise = np.stack([coloured_noise(data.shape[1], colour, rng) for _ in data])
    out = data + noise * np.sqrt(power / 10 ** (snr_db / 10))
    return out.reshape(audio.shape).astype(np.float32)


def synthetic_rir(rt60_s: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """A room impulse response: the direct path, then noise decaying 60 dB over ``rt60_s``."""
    n = max(2, int(rt60_s * rate))
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)
    tail[: int(0.0025 * rate)] = 0.0  # first reflections arrive a few ms after the direct sound
    rir = 0.3 * tail / np.sqrt(np.sum(tail**2))
    rir[0] = 1.0
    return rir


def reverb(
    audio: np.ndarray, rt60_s: float, rng: np.random.Generator, rate: int = RATE
) -> np.ndarray:
    """Convolve with `synthetic_rir`, keep the length, and keep the input's RMS."""
    data = _as_2d(audio).astype(np.float64)
    rir = synthetic_rir(rt60_s, rng, rate)
    wet = scipy.signal.fftconvolve(data, rir[None], axes=1)[:, : data.shape[1]]
    wet *= np.sqrt(np.mean(data**2) / (np.mean(wet**2) + 1e-20))
    return wet.reshape(audio.shape).astype(np.float32)


def band_limit(
    audio: np.ndarray, low_hz: float | None, high_hz: float | None, rate: int = RATE
) -> np.ndarray:
    """High-pass at ``low_hz`` and/or low-pass at ``high_hz`` (4th-order Butterworth)."""
    out = _as_2d(audio).astype(np.float64)
    if low_hz is not None:
        out = scipy.signal.sosfilt(
            scipy.signal.butter(4, low_hz, "highpass", fs=rate, output="sos"), out
        )
    if high_hz is not None:
        out = scipy.signal.sosfilt(
            scipy.signal.butter(4, high_hz, "lowpass", fs=rate, output="sos"), out
        )
    return out.reshape(audio.shape).astype(np.float32)


def gain(audio: np.ndarray, db: float) -> np.ndarray:
    """Scale by ``db`` and clip to [-1, 1], as an integer format would on the way out."""
    return np.clip(audio * 10 ** (db / 20), -1.0, 1.0).astype(np.float32)


def _apply(
    op: str, audio: np.ndarray, rng: np.random.Generator, rate: int
) -> tuple[np.ndarray, str]:
    if op == "codec":
        name = str(rng.choice(sorted(CODECS)))
        kbps = int(rng.choice(BITRATES_KBPS))
        return codec(audio, name, kbps, rate), f"{name}:{kbps}k"
    if op == "noise":
        colour = str(rng.choice(["white", "pink", "brown"]))
        snr = float(rng.uniform(5.0, 30.0))
        return add_noise(audio, snr, rng, colour), f"noise:{colour}:{snr:.0f}dB"
    if op == "reverb":
        rt60 = float(rng.uniform(0.15, 0.9))
        return reverb(audio, rt60, rng, rate), f"reverb:{rt60:.2f}s"
    if op == "band":
        kind = int(rng.integers(3))  # 0: high-pass, 1: low-pass, 2: both
        low = float(rng.uniform(100.0, 500.0)) if kind != 1 else None
        high = float(rng.uniform(2_500.0, 7_000.0)) if kind != 0 else None
        parts = ([f"hp{low:.0f}"] if low else []) + ([f"lp{high:.0f}"] if high else [])
        return band_limit(audio, low, high, rate), f"band:{'/'.join(parts)}"
    db = float(rng.uniform(-18.0, 8.0))
    return gain(audio, db), f"gain:{db:+.0f}dB"


def random_augment(
    audio: np.ndarray | torch.Tensor, rng: np.random.Generator, rate: int = RATE, max_ops: int = 2
) -> tuple[np.ndarray | torch.Tensor, str]:
    """Apply 1..``max_ops`` distinct operations drawn from `OPERATIONS`; say which, in order.

    ``audio`` is ``(samples,)`` or ``(channels, samples)``, numpy or torch; the result has the
    same type and shape. The description reads like ``reverb:0.42s+mp3:64k``.
    """
    is_tensor = isinstance(audio, torch.Tensor)
    data = audio.detach().cpu().numpy() if is_tensor else np.asarray(audio)
    count = int(rng.integers(1, max_ops + 1))
    chosen = set(rng.choice(OPERATIONS, size=count, replace=False).tolist())
    steps = []
    for op in _ORDER:
        if op in chosen:
            data, label = _apply(op, data, rng, rate)
            steps.append(label)
    return (torch.from_numpy(data) if is_tensor else data), "+".join(steps)
