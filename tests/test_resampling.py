"""Block-wise resampling must give torchaudio's one-pass result to the bit, at any length."""

from __future__ import annotations

import inspect

import pytest
import torch
import torchaudio.functional as AF

from detectors import resampling as detector_resampling
from watermark import resampling as watermark_resampling

RATE_PAIRS = [
    (48000, 16000),
    (44100, 16000),
    (22050, 16000),
    (8000, 16000),
    (11025, 8000),
    (96000, 8000),
    (44100, 48000),
    (32000, 44100),
    (4001, 4000),  # torchaudio's bank would hold 16 million taps: scipy's polyphase filter
]


@pytest.mark.parametrize("module", [detector_resampling, watermark_resampling])
@pytest.mark.parametrize(("src", "dst"), RATE_PAIRS)
@pytest.mark.parametrize("extra", [0, 1, 13])
def test_blocks_match_one_pass_exactly(module, src, dst, extra):
    x = torch.randn(2, src * 7 + extra, generator=torch.Generator().manual_seed(src + extra))

    blocked = module.resample(x, src, dst, block_seconds=1.0)

    expected = module.one_pass(x, src, dst)
    assert blocked.shape == expected.shape
    assert torch.equal(blocked, expected)


@pytest.mark.parametrize(("src", "dst"), RATE_PAIRS[:-1])
def test_common_rate_pairs_are_torchaudios_own(src, dst):
    x = torch.randn(1, src // 10, generator=torch.Generator().manual_seed(src))
    assert torch.equal(watermark_resampling.one_pass(x, src, dst), AF.resample(x, src, dst))


@pytest.mark.parametrize("module", [detector_resampling, watermark_resampling])
@pytest.mark.parametrize(("src", "dst"), [(44099, 16000), (16000, 44099), (7999, 32000)])
def test_odd_rates_never_build_torchaudios_filter_bank(module, monkeypatch, src, dst):
    # 44,099 Hz to 16 kHz through torchaudio built a bank of 700 million taps: a 3-second
    # upload took 6 to 24 GB and the out-of-memory killer ended the whole command.
    def refuse(*args, **kwargs):
        raise AssertionError("torchaudio's resample was called for an odd rate pair")

    monkeypatch.setattr(module.AF, "resample", refuse)
    t = torch.arange(3 * src) / src
    tone = torch.sin(2 * torch.pi * 440.0 * t).unsqueeze(0)

    out = module.resample(tone, src, dst, block_seconds=1.0)

    assert out.shape == (1, -(-3 * src * dst // src))  # torchaudio's length
    peak = torch.fft.rfft(out[0]).abs().argmax().item() * dst / out.shape[-1]
    assert abs(peak - 440.0) < 1.0
    inner = slice(dst // 10, -dst // 10)  # away from the zero-padded ends
    expected = torch.sin(2 * torch.pi * 440.0 * torch.arange(out.shape[-1]) / dst)
    assert (out[0, inner] - expected[inner]).abs().max() < 1e-2


def test_odd_rates_keep_the_filter_they_are_given():
    # The AudioSeal mark goes back to the native rate through a sharp Kaiser filter so that
    # nothing lands above 8 kHz; at 44,099 Hz scipy's own filter let 1,500 times more through.
    sharp = {
        "lowpass_filter_width": 64,
        "rolloff": 0.99,
        "resampling_method": "sinc_interp_kaiser",
        "beta": 14.769656459379492,
    }
    mark = torch.randn(32_000, generator=torch.Generator().manual_seed(0))

    def above_8_5_khz(rate: int) -> float:
        power = torch.fft.rfft(watermark_resampling.resample(mark, 16_000, rate, **sharp)).abs()
        freqs = torch.fft.rfftfreq(2 * rate, 1 / rate)[: power.shape[-1]]
        return float(power[freqs > 8500].square().sum() / power.square().sum())

    assert above_8_5_khz(44_099) < 2 * above_8_5_khz(44_100) < 1e-5


def test_length_matches_torchaudio_where_its_float32_rounding_shows():
    # torchaudio computes the output length in float32; past 2**24 output samples that
    # rounding decides the last ones, and the blocks must end exactly where one pass ends.
    x = torch.zeros(3_100_003)
    x[::997] = 1.0
    n_out = 3_100_003 * 44100 / 8000
    assert n_out > 2**24 and int(torch.ceil(torch.as_tensor(n_out))) != -(-3_100_003 * 441 // 80)
    blocked = watermark_resampling.resample(x, 8000, 44100, block_seconds=60.0)
    assert torch.equal(blocked, AF.resample(x, 8000, 44100))


def test_the_two_copies_stay_the_same():
    # Components share no code (DESIGN.md), so detectors and watermark each hold one.
    for name in ("resample", "one_pass", "polyphase_filter"):
        assert inspect.getsource(getattr(detector_resampling, name)) == inspect.getsource(
            getattr(watermark_resampling, name)
        )
