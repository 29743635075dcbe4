"""torchaudio's resampling, block by block, so an hour of audio does not need gigabytes.

``torchaudio.functional.resample`` runs one strided convolution over the whole signal and
holds about six copies of it meanwhile: 4.4 GB for an hour at 48 kHz. Here the signal is cut
into blocks that start on the filter's phase grid and carry enough context on both sides
that every output sample sees exactly the inputs it sees in one pass: the result is the same
to the bit. ``detectors.frontend`` keeps its own copy of this function, because components
share no code (see DESIGN.md).
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF

BLOCK_SECONDS = 30.0
MAX_PHASES = 1000
"""Rate pairs whose reduced ratio exceeds this (7999 Hz to 16 kHz) run in one pass: their
filter bank alone is large, and no common rate pair comes near it."""


def resample(
    x: torch.Tensor, src: int, dst: int, block_seconds: float = BLOCK_SECONDS
) -> torch.Tensor:
    """Resample the last axis from ``src`` to ``dst`` Hz, as torchaudio does, in blocks."""
    if src == dst:
        return x
    g = math.gcd(src, dst)
    orig, new = src // g, dst // g
    n = x.shape[-1]
    step = max(1, round(block_seconds * src) // orig) * orig
    if n <= 2 * step or orig > MAX_PHASES:
        return AF.resample(x, src, dst)
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))  # torchaudio's default filter reach
    context = orig * (width // orig + 2)
    total = int(torch.ceil(torch.as_tensor(new * n / orig)))  # torchaudio's length, to the sample
    parts = []
    for start in range(0, n, step):
        lo, hi = max(0, start - context), start + step + context
        piece = x[..., lo:hi]
        if hi > n:  # zeros past the end, as the one pass pads them
            piece = torch.nn.functional.pad(piece, (0, hi - n))
        first = (start - lo) // orig * new
        count = min(step // orig * new, total - start // orig * new)
        parts.append(AF.resample(piece, src, dst)[..., first : first + count])
    return torch.cat(parts, dim=-1)
