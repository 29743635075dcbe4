"""Give real and synthetic clips the same channel, so that only the voice tells them apart.

The raw sources differ in ways a detector learns instead of "synthetic": sample rate and
bandwidth (the asterisk prompts are 8 kHz telephone audio), leading and trailing silence,
exact digital zeros, loudness and spectral tilt. Every clip of both classes goes through the
functions here with parameters drawn from one distribution (`draw_channel`), so none of those
properties carries the label. All functions are pure: mono float32 numpy arrays in and out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.signal
import torch
import torchaudio.transforms

RATE = 16_000
"""Every corpus clip is 16 kHz mono, the rate the AST front end expects."""

TELEPHONE_RATE = 8_000
FRAME_S = 0.02
SILENT_DB = -90.0
"""A clip whose loudest 20 ms frame is below this has nothing to keep."""
FULL_BAND_HZ = 7_600.0
"""A drawn low-pass cutoff at or above this leaves the band as resampling to 16 kHz left it."""


@dataclass(frozen=True)
class Channel:
    """How one clip is band-limited, coloured, levelled and padded; drawn before rendering."""

    telephone: bool
    lowpass_hz: float
    highpass_hz: float
    slope_db_per_octave: float
    """The long-term spectral slope the clip is equalised to (speech falls about 6 dB/octave)."""
    loudness_db: float
    lead_s: float
    tail_s: float
    floor_db: float

    def describe(self) -> str:
        """A short label for the manifest: the band the clip ended up with."""
        if self.telephone:
            return "telephone"
        return "wide" if self.lowpass_hz >= FULL_BAND_HZ else f"lowpass:{self.lowpass_hz:.0f}"


def draw_channel(rng: np.random.Generator, telephone: bool, native_rate: int) -> Channel:
    """Draw a channel; the telephone choice is made by the caller so class shares match exactly.

    ``native_rate`` is the lowest rate the clip's material was recorded or synthesised at: a
    clip cannot be given more bandwidth than it has, so the cutoff is capped below its Nyquist.
    """
    lowpass = float(rng.uniform(3_800.0, 8_000.0))
    lowpass = min(lowpass, 0.47 * native_rate) if native_rate < RATE else lowpass
    return Channel(
        telephone=telephone,
        lowpass_hz=round(lowpass, 1),
        highpass_hz=round(float(rng.uniform(40.0, 250.0)), 1),
        slope_db_per_octave=round(float(rng.uniform(-9.0, -4.5)), 2),
        loudness_db=round(float(rng.uniform(-32.0, -18.0)), 2),
        lead_s=round(float(rng.uniform(0.1, 0.5)), 3),
        tail_s=round(float(rng.uniform(0.1, 0.5)), 3),
        floor_db=round(float(rng.uniform(-84.0, -66.0)), 2),
    )


@functools.lru_cache(maxsize=32)
def _resampler(rate: int, target: int) -> torchaudio.transforms.Resample:
    """Building the sinc kernel costs more than applying it, so each rate pair builds it once."""
    return torchaudio.transforms.Resample(rate, target)


def to_rate(audio: np.ndarray, rate: int, target: int = RATE) -> np.ndarray:
    """Resample with the same windowed-sinc filter for every source and every class."""
    if rate == target or audio.size == 0:  # the resampler refuses an empty signal
        return audio.astype(np.float32, copy=False)
    with torch.no_grad():
        return _resampler(rate, target)(torch.from_numpy(audio.astype(np.float32))).numpy()


def _frame_db(audio: np.ndarray, rate: int) -> np.ndarray:
    hop = max(1, int(FRAME_S * rate))
    n = audio.shape[0] // hop
    if n == 0:
        return np.full(1, -200.0)
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)


def trim_silence(
    audio: np.ndarray, rate: int = RATE, floor_db: float = -30.0, margin_s: float = 0.02
) -> np.ndarray:
    """Cut leading and trailing stretches more than ``floor_db`` below the loudest frame.

    Festival and flite start with 0.2-0.3 s of silence and the asterisk prompts with less; after
    trimming, the padding added by `finish` is the only silence either class has at its ends.
    """
    level = _frame_db(audio, rate)
    loud = np.flatnonzero(level > level.max() + floor_db)
    if loud.size == 0 or level.max() < SILENT_DB:
        return audio[:0]
    hop = max(1, int(FRAME_S * rate))
    margin = int(margin_s * rate)
    start = max(0, int(loud[0]) * hop - margin)
    end = min(audio.shape[0], (int(loud[-1]) + 1) * hop + margin)
    return audio[start:end]


def speech_fraction(audio: np.ndarray, rate: int = RATE, range_db: float = 35.0) -> float:
    """Share of 20 ms frames within ``range_db`` of the loudest: near 0 for a click or a tone."""
    level = _frame_db(audio, rate)
    return float(np.mean(level > level.max() - range_db))


def _fade(audio: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    n = min(int(seconds * RATE), audio.shape[0] // 2)
    if n == 0:
        return audio
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    out = audio.copy()
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


def join_segments(
    segments: Sequence[np.ndarray],
    seconds: float,
    rng: np.random.Generator,
    gap_s: tuple[float, float] = (0.15, 0.6),
) -> np.ndarray:
    """Join trimmed utterances with pauses into exactly ``seconds`` of 16 kHz audio.

    Real prompts and game lines are short, so a clip strings several together, the way a call
    or a scene does; synthetic utterances are joined the same way. A first segment longer than
    the clip gives a window at a random offset. Segments are reused in turn if they run out.
    """
    usable = [s for s in segments if s.shape[0] > 0]
    if not usable:
        raise ValueError("no audible segment to join")
    n = int(round(seconds * RATE))
    first = usable[0]
    if first.shape[0] >= n:
        start = int(rng.integers(first.shape[0] - n + 1))
        return _fade(first[start : start + n])
    parts: list[np.ndarray] = []
    total, i = 0, 0
    while total < n:
        part = _fade(usable[i % len(usable)])
        gap = np.zeros(int(rng.uniform(*gap_s) * RATE), dtype=np.float32)
        parts += [part, gap]
        total += part.shape[0] + gap.shape[0]
        i += 1
    return _fade(np.concatenate(parts)[:n])


def telephone_band(audio: np.ndarray) -> np.ndarray:
    """Down to 8 kHz and back: the chain every narrow-band clip of either class goes through."""
    return to_rate(to_rate(audio, RATE, TELEPHONE_RATE), TELEPHONE_RATE, RATE)


def low_pass(audio: np.ndarray, cutoff_hz: float, rate: int = RATE) -> np.ndarray:
    sos = scipy.signal.butter(8, cutoff_hz, btype="lowpass", fs=rate, output="sos")
    return scipy.signal.sosfiltfilt(sos, audio).astype(np.float32)


def high_pass(audio: np.ndarray, cutoff_hz: float, rate: int = RATE) -> np.ndarray:
    sos = scipy.signal.butter(2, cutoff_hz, btype="highpass", fs=rate, output="sos")
    return scipy.signal.sosfiltfilt(sos, audio).astype(np.float32)


def spectral_slope(audio: np.ndarray, rate: int = RATE) -> float:
    """Long-term spectral slope in dB per octave over 150-3500 Hz, the band every clip keeps."""
    freqs, power = scipy.signal.welch(audio.astype(np.float64), rate, nperseg=512)
    band = (freqs >= 150.0) & (freqs <= 3_500.0)
    return float(np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band] + 1e-20), 1)[0])


def eq_tilt(audio: np.ndarray, db_per_octave: float, rate: int = RATE) -> np.ndarray:
    """Tilt the spectrum about 1 kHz by ``db_per_octave``."""
    spectrum = np.fft.rfft(audio.astype(np.float64))
    freqs = np.clip(np.fft.rfftfreq(audio.shape[0], 1.0 / rate), 100.0, rate / 2)
    gain = 10 ** (db_per_octave * np.log2(freqs / 1000.0) / 20)
    return np.fft.irfft(spectrum * gain, audio.shape[0]).astype(np.float32)


def active_level_db(audio: np.ndarray, rate: int = RATE) -> float:
    """Mean power of the frames within 30 dB of the loudest: the level of the speech itself."""
    level = _frame_db(audio, rate)
    active = level[level > level.max() - 30.0]
    return float(10 * np.log10(np.mean(10 ** (active / 10))))


def normalise_loudness(audio: np.ndarray, target_db: float) -> np.ndarray:
    gain = 10 ** ((target_db - active_level_db(audio)) / 20)
    return (audio * gain).astype(np.float32)


def pad(audio: np.ndarray, lead_s: float, tail_s: float) -> np.ndarray:
    lead = np.zeros(int(round(lead_s * RATE)), dtype=np.float32)
    tail = np.zeros(int(round(tail_s * RATE)), dtype=np.float32)
    return np.concatenate([lead, audio, tail])


def add_noise_floor(audio: np.ndarray, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``level_db`` dBFS, so no clip has stretches of exact digital zeros."""
    noise = rng.standard_normal(audio.shape[0]) * 10 ** (level_db / 20)
    return (audio + noise).astype(np.float32)


def limit_peak(audio: np.ndarray, peak: float = 0.98) -> np.ndarray:
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (peak / top)).astype(np.float32) if top > peak else audio


def apply_channel(content: np.ndarray, channel: Channel) -> np.ndarray:
    """Band, colour and level a clip's speech, then pad it with silence (noise comes later)."""
    audio = telephone_band(content) if channel.telephone else content
    if not channel.telephone and channel.lowpass_hz < FULL_BAND_HZ:
        audio = low_pass(audio, channel.lowpass_hz)
    audio = high_pass(audio, channel.highpass_hz)
    # espeak-ng is brighter than recorded speech: equalise every clip to a drawn slope instead
    # of tilting what it has, so brightness varies within each class and not between them
    correction = np.clip(channel.slope_db_per_octave - spectral_slope(audio), -8.0, 8.0)
    audio = eq_tilt(audio, float(correction))
    audio = normalise_loudness(audio, channel.loudness_db)
    return pad(audio, channel.lead_s, channel.tail_s)
