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
    (4001, 4000),  # a reduced ratio too large to block (4001 phases): one pass
]


@pytest.mark.parametrize("module", [detector_resampling, watermark_resampling])
@pytest.mark.parametrize(("src", "dst"), RATE_PAIRS)
@pytest.mark.parametrize("extra", [0, 1, 13])
def test_blocks_match_one_pass_exactly(module, src, dst, extra):
    x = torch.randn(2, src * 7 + extra, generator=torch.Generator().manual_seed(src + extra))

    blocked = module.resample(x, src, dst, block_seconds=1.0)

    expected = AF.resample(x, src, dst)
    assert blocked.shape == expected.shape
    assert torch.equal(blocked, expected)


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
    assert inspect.getsource(detector_resampling.resample) == inspect.getsource(
        watermark_resampling.resample
    )
