"""Channels in antiphase: flipping one channel's polarity must not hide audio from analysis.

The mean of ``[x, -x]`` is digital silence, so every component that mixed channels with a
plain mean heard nothing there: no keyed mark, no Perth mark, no speech, and embed called a
loud file "too quiet". Channels that cancel are now analysed through their loudest channel;
every other input is mixed exactly as before.
"""

from __future__ import annotations

import pytest
import torch
from conftest import read_sample

from detectors.frontend import to_model_input
from detectors.resampling import resample as detector_resample
from watermark.keyed import KeyedBackend

KEY = bytes(range(32))
SPEECH = "speech/fillets_society_stebet0.flac"  # 16 kHz mono, 5 s
MUSIC_STEREO = "music/singularity_awakening_44k_stereo.flac"


def antiphase(mono: torch.Tensor) -> torch.Tensor:
    """``(1, n)`` → ``(2, n)`` with the right channel's polarity flipped."""
    return torch.cat([mono, -mono])


@pytest.fixture(scope="module")
def backend() -> KeyedBackend:
    return KeyedBackend(KEY)


@pytest.fixture(scope="module")
def speech() -> tuple[torch.Tensor, int]:
    return read_sample(SPEECH)


def test_keyed_mark_is_found_after_one_channel_is_flipped(backend, speech):
    audio, rate = speech
    marked = backend.embed(audio, rate, "deadbeef").audio
    mono = backend.detect(marked, rate)
    flipped = backend.detect(antiphase(marked), rate)
    assert flipped.detected and flipped.payload == "deadbeef"
    assert flipped.p_value == mono.p_value  # the same test on the same signal: no correction


def test_keyed_embed_into_antiphase_stereo_reads_back(backend, speech):
    audio, rate = speech
    stereo = antiphase(audio)
    result = backend.embed(stereo, rate, "deadbeef")  # used to fail: "too little or too quiet"
    assert result.audio.shape == stereo.shape
    assert result.verification.detected and result.verification.payload == "deadbeef"
    # The mark scales each channel's spectrum alike, so the channels stay in antiphase.
    assert torch.allclose(result.audio[0], -result.audio[1], atol=1e-6)
    found = backend.detect(result.audio, rate)
    assert found.detected and found.p_value < 1e-6 and found.payload == "deadbeef"


def test_detector_input_of_antiphase_stereo_is_not_silent(speech):
    audio, rate = speech
    flipped = to_model_input(antiphase(audio), rate)
    assert flipped.abs().max() > 0.1
    assert torch.equal(flipped, to_model_input(audio, rate))


def test_ordinary_stereo_and_mono_mix_exactly_as_before():
    from detectors.frontend import mix_down as detector_mix_down
    from watermark.channels import mix_down

    music, music_rate = read_sample(MUSIC_STEREO)
    speech, _ = read_sample(SPEECH)
    # Channels that differ, channels that agree, one silent channel, and mono: all averaged.
    stereos = [music, torch.cat([speech, 0.5 * speech]), torch.cat([speech, 0 * speech])]
    for audio in [*stereos, speech]:
        assert torch.equal(mix_down(audio), audio.mean(0))
        assert torch.equal(detector_mix_down(audio), audio.mean(0))
    expected = detector_resample(music.float().mean(dim=0), music_rate, 16_000)
    assert torch.equal(to_model_input(music, music_rate), expected)


@pytest.mark.parametrize("channels", [3, 4, 6, 8])
def test_many_unrelated_channels_are_averaged_and_a_cancelling_pair_is_not(channels):
    # The mean of C unrelated channels keeps 1/C of their power: measured against the
    # channels' own power, every 5.1 mix counted as cancelling and lost its centre dialogue.
    from detectors.frontend import mix_down as detector_mix_down
    from watermark.channels import mix_down

    unrelated = torch.randn(channels, 48_000, generator=torch.Generator().manual_seed(channels))
    cancelling = torch.cat([unrelated[:1], -unrelated[:1], 0.01 * unrelated[2:]])
    for mix in (mix_down, detector_mix_down):
        assert torch.equal(mix(unrelated), unrelated.mean(0))
        assert torch.equal(mix(cancelling), cancelling[0])


def test_the_detector_and_the_watermark_decide_the_mix_with_the_same_rule():
    # Components share no code (DESIGN.md), so each holds the rule; a change to one alone
    # would let a file the detector reads as one channel be watermarked as the mean.
    import inspect

    from detectors import frontend
    from watermark import channels

    assert frontend.CANCELLED_SHARE == channels.CANCELLED_SHARE
    assert inspect.getsource(frontend.analysis_channel) == inspect.getsource(
        channels.analysis_channel
    )


def test_keyed_embed_of_ordinary_stereo_is_bit_for_bit_unchanged(backend, speech, monkeypatch):
    from watermark import channels

    audio, rate = speech
    # Two different channels: the right one delayed by 3 ms and quieter, as from two mics.
    stereo = torch.cat([audio, 0.7 * torch.roll(audio, 48, dims=1)])
    now = backend.embed(stereo, rate, "deadbeef")
    monkeypatch.setattr(channels, "analysis_channel", lambda audio: None)  # the old plain mean
    before = backend.embed(stereo, rate, "deadbeef")
    assert torch.equal(now.audio, before.audio)
    assert now.verification == before.verification


def test_perth_reads_a_flipped_channel_like_the_original(speech):
    pytest.importorskip("perth", reason="resemble-perth is not installed")
    from watermark.backends.perth_backend import PerthBackend

    audio, rate = speech
    perth = PerthBackend()
    marked = perth.embed(audio, rate, payload=None).audio
    mono = perth.detect(marked, rate)
    flipped = perth.detect(antiphase(marked), rate)
    assert mono.detected and flipped.detected
    assert flipped.p_value == mono.p_value
