"""What happens to audio in the wild, as pure functions: codecs, resampling, noise, filters,
level changes, crops, shifts, mixing, speed and tempo changes.

A watermark's robustness claim is only as honest as the edits it was tested against, so each
edit here does exactly what its name says and nothing else: every function takes a float32
``(channels, samples)`` tensor and its rate and returns ``(audio, rate)``, keeps the rate, and
keeps the length unless changing it is the point (crop, shift, speed, tempo). Codecs run
through the ``ffmpeg`` binary; their output is trimmed or padded to the input's length and
shifted by the codec's measured delay, so marked and edited audio stay sample-aligned.

``EDITS`` is the table that ``benchmarks/watermark_robustness.py`` runs: the edits listed in the
keyed-watermark issue, each with the detection rate it must reach.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.signal
import torch
import torchaudio

Audio = tuple[torch.Tensor, int]
"""A waveform ``(channels, samples)`` float32 and its sample rate."""

Step = Callable[[torch.Tensor, int], Audio]
"""One edit with its parameters bound, as ``chain`` takes it."""


class EditError(RuntimeError):
    """An edit could not be applied (ffmpeg missing or failing, audio too short for a crop)."""


# ---------------------------------------------------------------------------------------------
# ffmpeg plumbing


def _run_ffmpeg(args: Sequence[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args],
            input=stdin,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise EditError("ffmpeg is not installed (scripts/install_system_packages.sh)") from exc
    if done.returncode != 0:
        raise EditError(f"ffmpeg failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _raw_input(rate: int, channels: int) -> list[str]:
    return ["-f", "f32le", "-ar", str(rate), "-ac", str(channels), "-i", "pipe:0"]


def _raw_output(rate: int, channels: int) -> list[str]:
    return ["-f", "f32le", "-ar", str(rate), "-ac", str(channels), "pipe:1"]


def _to_bytes(audio: torch.Tensor) -> bytes:
    """Interleave channels the way ffmpeg's raw f32le expects."""
    return audio.detach().to(torch.float32).T.contiguous().numpy().tobytes()


def _from_bytes(data: bytes, channels: int) -> torch.Tensor:
    samples = np.frombuffer(data, dtype=np.float32)
    samples = samples[: samples.size - samples.size % channels]
    return torch.from_numpy(samples.reshape(-1, channels).T.copy())


def _filter(audio: torch.Tensor, rate: int, audio_filter: str) -> torch.Tensor:
    """Run an ffmpeg audio filter graph over raw samples, both ways through pipes."""
    channels = audio.shape[0]
    out = _run_ffmpeg(
        [*_raw_input(rate, channels), "-af", audio_filter, *_raw_output(rate, channels)],
        stdin=_to_bytes(audio),
    )
    return _from_bytes(out, channels)


@dataclass(frozen=True)
class _Codec:
    encoder: str
    suffix: str


_MP3 = _Codec("libmp3lame", ".mp3")
_AAC = _Codec("aac", ".m4a")
_OPUS = _Codec("libopus", ".ogg")


def _encode_decode(
    audio: torch.Tensor, rate: int, codec: _Codec, bitrate_kbps: int
) -> torch.Tensor:
    """Encode to a real file of the codec's usual container, then decode it back to ``rate``."""
    channels = audio.shape[0]
    with tempfile.TemporaryDirectory(prefix="audioguard-edit-") as tmp:
        path = str(Path(tmp) / f"coded{codec.suffix}")
        _run_ffmpeg(
            [*_raw_input(rate, channels), "-c:a", codec.encoder, "-b:a", f"{bitrate_kbps}k", path],
            stdin=_to_bytes(audio),
        )
        return _from_bytes(_run_ffmpeg(["-i", path, *_raw_output(rate, channels)]), channels)


def _fit(audio: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """Samples ``offset .. offset + length`` of ``audio``, zero-padded where they do not exist."""
    start = max(offset, 0)
    body = audio[:, start : start + length - max(-offset, 0)]
    left = max(-offset, 0)
    return torch.nn.functional.pad(body, (left, length - left - body.shape[1]))


@functools.lru_cache(maxsize=64)
def _codec_delay(codec: _Codec, bitrate_kbps: int, rate: int, channels: int) -> int:
    """Samples by which the decoded stream lags its input, measured once on a noise burst.

    Current ffmpeg trims encoder priming (LAME tag, MP4 edit list, Opus pre-skip) itself, so
    this is usually 0; measuring it keeps the edits aligned on builds where it is not, and
    catches the few samples low-rate stereo Opus (SILK/hybrid mode) is off by. The burst is
    band-limited to 3 kHz, the band every codec here keeps as waveform rather than as noise.
    """
    generator = torch.Generator().manual_seed(0)
    band = scipy.signal.butter(8, 3000, fs=rate, output="sos")
    noise = 0.3 * torch.randn(channels, rate // 2, generator=generator, dtype=torch.float64)
    burst = scipy.signal.sosfilt(band, noise.numpy(), axis=-1)
    probe = torch.nn.functional.pad(torch.from_numpy(burst).float(), (rate // 2, rate // 2))
    decoded = _encode_decode(probe, rate, codec, bitrate_kbps).mean(0).numpy()
    reach = rate // 10
    window = decoded[rate // 2 - reach : rate + reach]
    window = np.pad(window, (0, max(0, rate // 2 + 2 * reach - window.size)))
    score = scipy.signal.correlate(window, burst.mean(0), mode="valid")
    return int(np.argmax(score)) - reach


def _codec(audio: torch.Tensor, rate: int, codec: _Codec, bitrate_kbps: int) -> Audio:
    decoded = _encode_decode(audio, rate, codec, bitrate_kbps)
    delay = _codec_delay(codec, bitrate_kbps, rate, audio.shape[0])
    return _fit(decoded, audio.shape[1], delay), rate


# ---------------------------------------------------------------------------------------------
# The edits


def mp3(audio: torch.Tensor, rate: int, bitrate_kbps: int = 64) -> Audio:
    """MP3 (LAME, constant bit rate) round trip, time-aligned and of the input's length."""
    return _codec(audio, rate, _MP3, bitrate_kbps)


def aac(audio: torch.Tensor, rate: int, bitrate_kbps: int = 64) -> Audio:
    """AAC-LC in MP4 (ffmpeg's native encoder) round trip, time-aligned, same length."""
    return _codec(audio, rate, _AAC, bitrate_kbps)


def opus(audio: torch.Tensor, rate: int, bitrate_kbps: int = 32) -> Audio:
    """Opus in Ogg (libopus, resampled to 48 kHz inside) round trip, time-aligned, same length."""
    return _codec(audio, rate, _OPUS, bitrate_kbps)


def resample_roundtrip(audio: torch.Tensor, rate: int, mid_rate: int = 8000) -> Audio:
    """Down to ``mid_rate`` and back up: everything above ``mid_rate / 2`` is lost."""
    low = torchaudio.functional.resample(audio, rate, mid_rate)
    back = torchaudio.functional.resample(low, mid_rate, rate)
    return _fit(back, audio.shape[1]), rate


def white_noise(audio: torch.Tensor, rate: int, snr_db: float = 20.0, seed: int = 0) -> Audio:
    """Add Gaussian white noise whose power is ``snr_db`` below the whole signal's power."""
    power = float(audio.double().pow(2).mean())
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(audio.shape, generator=generator, dtype=torch.float64)
    noise *= (power / 10 ** (snr_db / 10) / float(noise.pow(2).mean())) ** 0.5
    return (audio.double() + noise).to(torch.float32), rate


def _butter(audio: torch.Tensor, rate: int, cutoff_hz: float, kind: str) -> Audio:
    """Zero-phase 6th-order Butterworth (run forward and back), so nothing moves in time."""
    sos = scipy.signal.butter(6, cutoff_hz, btype=kind, fs=rate, output="sos")
    filtered = scipy.signal.sosfiltfilt(sos, audio.double().numpy(), axis=-1)
    return torch.from_numpy(filtered.copy()).to(torch.float32), rate


def lowpass(audio: torch.Tensor, rate: int, cutoff_hz: float = 3500.0) -> Audio:
    """Remove content above ``cutoff_hz`` (telephone-like band)."""
    return _butter(audio, rate, cutoff_hz, "lowpass")


def highpass(audio: torch.Tensor, rate: int, cutoff_hz: float = 300.0) -> Audio:
    """Remove content below ``cutoff_hz`` (small speakers, voice-chat filters)."""
    return _butter(audio, rate, cutoff_hz, "highpass")


def gain(audio: torch.Tensor, rate: int, db: float, clip: bool = True) -> Audio:
    """Scale by ``db``; ``clip`` hard-limits to [-1, 1] as writing a fixed-point file would."""
    scaled = audio * 10 ** (db / 20)
    return (scaled.clamp(-1.0, 1.0) if clip else scaled), rate


def crop(audio: torch.Tensor, rate: int, seconds: float, start: float = 0.0) -> Audio:
    """Keep ``seconds`` of audio beginning ``start`` seconds in."""
    first, length = round(start * rate), round(seconds * rate)
    if first < 0 or first + length > audio.shape[1]:
        raise EditError(
            f"cannot crop {seconds} s at {start} s from {audio.shape[1] / rate:.2f} s of audio"
        )
    return audio[:, first : first + length], rate


def shift(audio: torch.Tensor, rate: int, samples: int) -> Audio:
    """Drop the first ``samples`` samples, so frames no longer start where the embedder's did."""
    return audio[:, samples:], rate


def _match(
    other: torch.Tensor, other_rate: int, rate: int, channels: int, length: int
) -> torch.Tensor:
    """``other`` at ``rate`` with ``channels`` channels, looped or cut to ``length`` samples."""
    if other_rate != rate:
        other = torchaudio.functional.resample(other, other_rate, rate)
    other = (
        other.mean(0, keepdim=True).expand(channels, -1) if other.shape[0] != channels else other
    )
    repeats = -(-length // other.shape[1])
    return other.repeat(1, repeats)[:, :length]


def mix(
    audio: torch.Tensor, rate: int, other: torch.Tensor, other_rate: int, rel_db: float = -10.0
) -> Audio:
    """Add ``other`` (resampled, looped or cut to fit) with its RMS ``rel_db`` relative to ours.

    No clipping: the sum is what a mixing desk or editor holds before export.
    """
    bed = _match(other, other_rate, rate, audio.shape[0], audio.shape[1])
    ours = float(audio.double().pow(2).mean().sqrt())
    theirs = float(bed.double().pow(2).mean().sqrt())
    if theirs == 0.0:
        return audio.clone(), rate
    return audio + bed * (ours / theirs * 10 ** (rel_db / 20)), rate


def speed(audio: torch.Tensor, rate: int, factor: float) -> Audio:
    """Play ``factor`` times faster by resampling: duration / factor, pitch × factor."""
    ratio = Fraction(factor).limit_denominator(1000)
    faster = torchaudio.functional.resample(audio, ratio.numerator, ratio.denominator)
    return faster, rate


def tempo(audio: torch.Tensor, rate: int, factor: float) -> Audio:
    """Change the tempo by ``factor`` with pitch kept (ffmpeg ``atempo``, WSOLA)."""
    if not 0.5 <= factor <= 2.0:
        raise EditError(f"tempo factor {factor} is outside atempo's 0.5 .. 2.0")
    return _filter(audio, rate, f"atempo={factor}"), rate


def chain(audio: torch.Tensor, rate: int, steps: Sequence[Step]) -> Audio:
    """Apply ``steps`` in order, e.g. ``[partial(lowpass, cutoff_hz=3500), partial(mp3)]``."""
    for step in steps:
        audio, rate = step(audio, rate)
    return audio, rate


# ---------------------------------------------------------------------------------------------
# The table the robustness benchmark runs


EditFn = Callable[[torch.Tensor, int, np.random.Generator, Audio | None], Audio]


@dataclass(frozen=True)
class Edit:
    """A named edit with its random choices drawn from ``rng`` and its required detection rate.

    ``apply(audio, rate, rng, other)``: ``other`` is a second, unrelated track, used only by
    edits with ``needs_other`` (mixing); the others ignore it.
    """

    name: str
    apply: EditFn
    target: float
    needs_other: bool = False


def _fixed(step: Step) -> EditFn:
    return lambda audio, rate, rng, other=None: step(audio, rate)


def _random_crop(
    audio: torch.Tensor, rate: int, rng: np.random.Generator, other: Audio | None = None
) -> Audio:
    latest = max(audio.shape[1] / rate - 3.0, 0.0)
    return crop(audio, rate, 3.0, float(rng.uniform(0.0, latest)))


def _random_shift(
    audio: torch.Tensor, rate: int, rng: np.random.Generator, other: Audio | None = None
) -> Audio:
    return shift(audio, rate, int(rng.integers(1, 512)))


def _noise(
    audio: torch.Tensor, rate: int, rng: np.random.Generator, other: Audio | None = None
) -> Audio:
    return white_noise(audio, rate, 20.0, int(rng.integers(2**31)))


def _mix_other(
    audio: torch.Tensor, rate: int, rng: np.random.Generator, other: Audio | None = None
) -> Audio:
    if other is None:
        raise EditError("mix_-10db needs another track")
    return mix(audio, rate, other[0], other[1], -10.0)


_CHAIN: tuple[Step, ...] = (
    functools.partial(lowpass, cutoff_hz=3500.0),
    functools.partial(gain, db=-6.0),
    functools.partial(mp3, bitrate_kbps=64),
)

EDITS: dict[str, Edit] = {
    edit.name: edit
    for edit in (
        Edit("mp3_64k", _fixed(functools.partial(mp3, bitrate_kbps=64)), 0.99),
        Edit("aac_64k", _fixed(functools.partial(aac, bitrate_kbps=64)), 0.99),
        Edit("opus_32k", _fixed(functools.partial(opus, bitrate_kbps=32)), 0.99),
        Edit("resample_8k", _fixed(functools.partial(resample_roundtrip, mid_rate=8000)), 0.99),
        Edit("noise_20db", _noise, 0.99),
        Edit("lowpass_3500", _fixed(functools.partial(lowpass, cutoff_hz=3500.0)), 0.99),
        Edit("highpass_300", _fixed(functools.partial(highpass, cutoff_hz=300.0)), 0.99),
        Edit("gain_-15db", _fixed(functools.partial(gain, db=-15.0)), 0.99),
        Edit("gain_+6db_clip", _fixed(functools.partial(gain, db=6.0, clip=True)), 0.99),
        Edit("crop_3s", _random_crop, 0.99),
        Edit("shift_frac", _random_shift, 0.99),
        Edit("mix_-10db", _mix_other, 0.99, needs_other=True),
        Edit("speed_0.97", _fixed(functools.partial(speed, factor=0.97)), 0.95),
        Edit("speed_1.03", _fixed(functools.partial(speed, factor=1.03)), 0.95),
        Edit("tempo_0.95", _fixed(functools.partial(tempo, factor=0.95)), 0.95),
        Edit("tempo_1.05", _fixed(functools.partial(tempo, factor=1.05)), 0.95),
        Edit("chain_lp_gain_mp3", _fixed(functools.partial(chain, steps=_CHAIN)), 0.95),
    )
}
"""Every edit of the keyed-watermark issue, in its order; a benchmark row per entry."""
