"""Vocoder re-synthesis of real speech: the synthetic clips that carry the real speakers.

A WORLD, Griffin-Lim or LPC copy of a real clip keeps its speaker, language, words and pauses
and changes only how the waveform is made, which is what a detector should learn to hear. Each
function takes 16 kHz mono float32 audio and a pitch shift in semitones and returns audio of
the same length.
"""

from __future__ import annotations

import numpy as np
import pyworld
import scipy.linalg
import scipy.signal
import torch
import torchaudio.functional

from detectors.corpus.neutralise import RATE, to_rate

FAMILIES = ("world", "griffinlim", "lpc")


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    return np.pad(audio[:n], (0, max(0, n - audio.shape[0]))).astype(np.float32)


def world(audio: np.ndarray, semitones: float) -> np.ndarray:
    """WORLD (DIO + StoneMask pitch, CheapTrick envelope, D4C aperiodicity) with F0 scaled."""
    x = audio.astype(np.float64)
    f0, t = pyworld.dio(x, RATE, f0_floor=60.0, f0_ceil=600.0, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, t, RATE)
    envelope = pyworld.cheaptrick(x, f0, t, RATE)
    aperiodicity = pyworld.d4c(x, f0, t, RATE)
    y = pyworld.synthesize(f0 * 2 ** (semitones / 12), envelope, aperiodicity, RATE, 5.0)
    return _fit(y, audio.shape[0])


def griffin_lim(audio: np.ndarray, semitones: float, seed: int, n_iter: int = 32) -> np.ndarray:
    """Magnitude STFT -> Griffin-Lim phase; pitch moves by time-stretching then resampling."""
    factor = 2 ** (semitones / 12)
    n_fft, hop = 512, 128
    window = torch.hann_window(n_fft)
    x = torch.from_numpy(audio.astype(np.float32))
    magnitude = torch.stft(x, n_fft, hop, window=window, return_complex=True).abs()
    frames = max(2, int(round(magnitude.shape[1] * factor)))
    stretched = torch.nn.functional.interpolate(
        magnitude[None], size=frames, mode="linear", align_corners=True
    )[0]
    torch.manual_seed(seed)  # griffinlim draws its initial phase from torch's global generator
    y = torchaudio.functional.griffinlim(
        stretched, window, n_fft, hop, n_fft, 1.0, n_iter, 0.99, None, True
    )
    source_rate = int(round(RATE * factor / 50)) * 50  # a multiple of 50 keeps resampling cheap
    return _fit(to_rate(y.numpy(), source_rate, RATE), audio.shape[0])


def _lpc(frame: np.ndarray, order: int) -> tuple[np.ndarray, float]:
    """Autocorrelation LPC: predictor polynomial and prediction-error power."""
    r = np.correlate(frame, frame, "full")[frame.shape[0] - 1 : frame.shape[0] + order]
    if r[0] <= 1e-10:
        return np.concatenate([[1.0], np.zeros(order)]), 0.0
    r[0] *= 1.0 + 1e-6  # a little white noise keeps the Toeplitz system well conditioned
    a = scipy.linalg.solve_toeplitz(r[:order], -r[1 : order + 1])
    error = float(r[0] + np.dot(a, r[1 : order + 1]))
    return np.concatenate([[1.0], a]), max(error, 0.0)


def lpc(
    audio: np.ndarray, semitones: float, rng: np.random.Generator, order: int = 18
) -> np.ndarray:
    """Classic LPC vocoder: pulses at the (shifted) pitch, or noise, through all-pole filters."""
    x = audio.astype(np.float64)
    win, hop = 400, 160  # 25 ms frames every 10 ms
    f0, t = pyworld.dio(x, RATE, f0_floor=60.0, f0_ceil=600.0, frame_period=1000 * hop / RATE)
    f0 = f0 * 2 ** (semitones / 12)
    window = np.hanning(win)
    y = np.zeros(x.shape[0] + win)
    norm = np.zeros_like(y)
    phase = 0.0
    for i, start in enumerate(range(0, x.shape[0] - win, hop)):
        a, error = _lpc(x[start : start + win] * window, order)
        pitch = f0[min(i + win // (2 * hop), f0.shape[0] - 1)]
        if pitch > 0:
            positions = np.arange(win) * pitch / RATE + phase
            excitation = np.diff(np.floor(positions), prepend=np.floor(phase))
            phase = positions[hop - 1] + pitch / RATE
        else:
            excitation = rng.standard_normal(win)
        excitation *= np.sqrt(error / max(float(np.sum(excitation**2)), 1e-12))
        y[start : start + win] += scipy.signal.lfilter([1.0], a, excitation) * window
        norm[start : start + win] += window**2
    return _fit(y / np.maximum(norm, 1e-3), audio.shape[0])
