"""Each edit in guard.edits does what its name says: the robustness numbers depend on it."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import scipy.signal
import torch

from guard import edits

RATE = 16_000

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def tone(freq: float, seconds: float = 2.0, rate: int = RATE, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).to(torch.float32)[None]


def level_db(audio: torch.Tensor) -> float:
    return 10 * math.log10(float(audio.double().pow(2).mean()) + 1e-30)


def tone_level_db(audio: torch.Tensor, rate: int, freq: float) -> float:
    """Level of one frequency, by projecting onto it (a single DFT bin)."""
    x = audio[0].double()
    t = torch.arange(x.shape[0], dtype=torch.float64) / rate
    re = (x * torch.cos(2 * math.pi * freq * t)).mean()
    im = (x * torch.sin(2 * math.pi * freq * t)).mean()
    return 20 * math.log10(2 * float(torch.hypot(re, im)) + 1e-30)


def peak_freq(audio: torch.Tensor, rate: int) -> float:
    x = audio[0].double().numpy() * np.hanning(audio.shape[1])
    spectrum = np.abs(np.fft.rfft(x, n=8 * x.size))
    return float(np.argmax(spectrum)) * rate / (8 * x.size)


def bursts(seconds: float = 3.0, rate: int = RATE, channels: int = 1) -> torch.Tensor:
    """Noise with an irregular envelope: broadband, and with one unambiguous alignment."""
    generator = torch.Generator().manual_seed(1)
    n = int(seconds * rate)
    envelope = torch.rand(n // 400 + 1, generator=generator).repeat_interleave(400)[:n]
    return 0.2 * torch.randn(channels, n, generator=generator) * envelope


def voiced(seconds: float = 2.0, rate: int = RATE, channels: int = 1) -> torch.Tensor:
    """Bursts band-limited to 3 kHz: the band a codec keeps as waveform, not as noise filling."""
    sos = scipy.signal.butter(8, 3000, fs=rate, output="sos")
    shaped = scipy.signal.sosfilt(sos, bursts(seconds, rate, channels).double().numpy(), axis=-1)
    return torch.from_numpy(shaped).to(torch.float32)


def best_lag(reference: torch.Tensor, other: torch.Tensor, reach: int = 200) -> int:
    a, b = reference.mean(0).double().numpy(), other.mean(0).double().numpy()
    lags = range(-reach, reach + 1)
    scores = [np.dot(a[reach:-reach], b[reach + lag : len(b) - reach + lag]) for lag in lags]
    return lags[int(np.argmax(scores))]


def test_lowpass_removes_a_5khz_tone_and_keeps_1khz() -> None:
    audio = tone(1000) + tone(5000)
    out, rate = edits.lowpass(audio, RATE, 3500)
    assert rate == RATE and out.shape == audio.shape
    assert tone_level_db(out, RATE, 5000) < tone_level_db(audio, RATE, 5000) - 60
    assert abs(tone_level_db(out, RATE, 1000) - tone_level_db(audio, RATE, 1000)) < 0.5


def test_highpass_removes_a_100hz_tone_and_keeps_1khz() -> None:
    audio = tone(100) + tone(1000)
    out, _ = edits.highpass(audio, RATE, 300)
    assert tone_level_db(out, RATE, 100) < tone_level_db(audio, RATE, 100) - 40
    assert abs(tone_level_db(out, RATE, 1000) - tone_level_db(audio, RATE, 1000)) < 0.5


@pytest.mark.parametrize("snr_db", [0.0, 20.0, 35.0])
def test_white_noise_has_the_requested_snr(snr_db: float) -> None:
    audio = bursts()
    out, _ = edits.white_noise(audio, RATE, snr_db, seed=3)
    measured = level_db(audio) - level_db(out - audio)
    assert abs(measured - snr_db) < 0.5


def test_white_noise_is_reproducible_from_its_seed() -> None:
    audio = bursts()
    assert torch.equal(
        edits.white_noise(audio, RATE, 20, 5)[0], edits.white_noise(audio, RATE, 20, 5)[0]
    )
    assert not torch.equal(
        edits.white_noise(audio, RATE, 20, 5)[0], edits.white_noise(audio, RATE, 20, 6)[0]
    )


@needs_ffmpeg
@pytest.mark.parametrize(
    ("codec", "kbps", "rate", "channels"),
    [
        (edits.mp3, 64, 16_000, 1),
        (edits.mp3, 64, 44_100, 2),
        (edits.mp3, 64, 8_000, 1),
        (edits.aac, 64, 16_000, 1),
        (edits.aac, 64, 48_000, 2),
        (edits.opus, 32, 16_000, 1),
        (edits.opus, 32, 44_100, 2),
    ],
)
def test_codecs_keep_length_and_alignment(codec, kbps: int, rate: int, channels: int) -> None:
    audio = voiced(rate=rate, channels=channels)
    out, out_rate = codec(audio, rate, kbps)
    assert out_rate == rate and out.shape == audio.shape
    assert abs(best_lag(audio, out)) <= 2
    assert not torch.allclose(out, audio, atol=1e-4)  # it really went through a lossy codec
    assert float(torch.corrcoef(torch.stack([audio.mean(0), out.mean(0)]))[0, 1]) > 0.7


def test_resample_roundtrip_drops_content_above_the_middle_nyquist() -> None:
    audio = tone(1000) + tone(6000)
    out, rate = edits.resample_roundtrip(audio, RATE, 8000)
    assert rate == RATE and out.shape == audio.shape
    assert tone_level_db(out, RATE, 6000) < tone_level_db(audio, RATE, 6000) - 40
    assert abs(tone_level_db(out, RATE, 1000) - tone_level_db(audio, RATE, 1000)) < 0.5


def test_gain_scales_and_clips_only_when_asked() -> None:
    audio = tone(440, amp=0.8)
    quiet, _ = edits.gain(audio, RATE, -15)
    assert abs(level_db(quiet) - level_db(audio) + 15) < 1e-3
    loud, _ = edits.gain(audio, RATE, 6, clip=True)
    assert float(loud.abs().max()) == 1.0
    unclipped, _ = edits.gain(audio, RATE, 6, clip=False)
    assert float(unclipped.abs().max()) == pytest.approx(0.8 * 10 ** (6 / 20), rel=1e-4)


def test_crop_keeps_the_requested_stretch() -> None:
    audio = bursts(seconds=5)
    out, _ = edits.crop(audio, RATE, 3.0, start=1.5)
    assert torch.equal(out, audio[:, 24_000:72_000])
    with pytest.raises(edits.EditError):
        edits.crop(audio, RATE, 3.0, start=2.5)


def test_shift_drops_the_first_samples() -> None:
    audio = bursts()
    out, _ = edits.shift(audio, RATE, 137)
    assert torch.equal(out, audio[:, 137:])


def test_mix_adds_the_other_track_at_the_relative_level() -> None:
    audio = bursts(seconds=3)
    other = tone(300, seconds=1.0, rate=8000)  # other rate, shorter: resampled and looped
    out, rate = edits.mix(audio, RATE, other, 8000, rel_db=-10)
    assert rate == RATE and out.shape == audio.shape
    assert abs(level_db(out - audio) - (level_db(audio) - 10)) < 0.1
    assert tone_level_db(out, RATE, 300) > tone_level_db(audio, RATE, 300) + 20


@pytest.mark.parametrize("factor", [0.97, 1.03])
def test_speed_moves_duration_and_pitch_together(factor: float) -> None:
    audio = tone(1000)
    out, rate = edits.speed(audio, RATE, factor)
    assert rate == RATE
    assert out.shape[1] == pytest.approx(audio.shape[1] / factor, abs=2)
    assert peak_freq(out, RATE) == pytest.approx(1000 * factor, abs=2)


@needs_ffmpeg
@pytest.mark.parametrize("factor", [0.95, 1.05])
def test_tempo_moves_duration_but_keeps_pitch(factor: float) -> None:
    audio = tone(1000, seconds=3)
    out, rate = edits.tempo(audio, RATE, factor)
    assert rate == RATE
    assert out.shape[1] == pytest.approx(audio.shape[1] / factor, rel=0.01)
    assert peak_freq(out, RATE) == pytest.approx(1000, abs=3)


def test_chain_applies_the_steps_in_order() -> None:
    audio = tone(440, amp=0.9)
    out, _ = edits.chain(
        audio,
        RATE,
        [lambda a, r: edits.gain(a, r, 6, clip=True), lambda a, r: edits.gain(a, r, -6)],
    )
    assert float(out.abs().max()) == pytest.approx(10 ** (-6 / 20), rel=1e-4)  # clipped first


def test_the_table_is_the_issue_list_with_its_targets() -> None:
    names = [
        "mp3_64k", "aac_64k", "opus_32k", "resample_8k", "noise_20db", "lowpass_3500",
        "highpass_300", "gain_-15db", "gain_+6db_clip", "crop_3s", "shift_frac", "mix_-10db",
    ]  # fmt: skip
    harder = ["speed_0.97", "speed_1.03", "tempo_0.95", "tempo_1.05", "chain_lp_gain_mp3"]
    assert list(edits.EDITS) == names + harder
    assert all(edits.EDITS[n].target == 0.99 for n in names)
    assert all(edits.EDITS[n].target == 0.95 for n in harder)
    assert [n for n, e in edits.EDITS.items() if e.needs_other] == ["mix_-10db"]


@needs_ffmpeg
def test_every_table_edit_runs_and_random_ones_follow_the_rng() -> None:
    audio = bursts(seconds=5)
    other = (tone(300, seconds=2.0), RATE)
    for name, edit in edits.EDITS.items():
        out, rate = edit.apply(audio, RATE, np.random.default_rng(0), other)
        assert rate == RATE and torch.isfinite(out).all(), name
    crop = edits.EDITS["crop_3s"].apply
    first = crop(audio, RATE, np.random.default_rng(1), None)[0]
    assert first.shape[1] == 3 * RATE
    assert torch.equal(first, crop(audio, RATE, np.random.default_rng(1), None)[0])
    assert not torch.equal(first, crop(audio, RATE, np.random.default_rng(2), None)[0])
    shifted = edits.EDITS["shift_frac"].apply(audio, RATE, np.random.default_rng(0), None)[0]
    assert 1 <= audio.shape[1] - shifted.shape[1] <= 511
    with pytest.raises(edits.EditError):
        edits.EDITS["mix_-10db"].apply(audio, RATE, np.random.default_rng(0), None)
