"""A recording's offset (DC), which embedders plan around rather than mark.

Cheap converters leave a constant offset on what they record. It is inaudible and hides
nothing, but an analysis window leaks it into every bin of a frame, and a level meter counts
it: planned on as it is, a gap that is silent but for the offset passes for audio, and a
backend adds its mark there (a hiss 20 dB under the offset for AudioSeal's envelope, PerthNet's
residual in every frame it finds loud). So each backend plans its mark on the host less its
offset, and adds the mark to the host as it is.
"""

from __future__ import annotations

import torch

OFFSET_SECONDS = 0.05


def without_offset(x: torch.Tensor, rate: int) -> torch.Tensor:
    """``x`` (..., n) less its offset, estimated locally, so that a recording with an offset
    spliced beside digital silence loses it only where it has it.

    The estimate is a centred moving average of ``OFFSET_SECONDS`` taken twice (a triangle,
    over the samples that exist near the ends). It is short, so a loud neighbour's own offset
    reaches at most that far into digital silence; it still keeps the host's bass in the plan
    (at most 5% of the amplitude of a component above 30 Hz leaks into the estimate, 2% above
    45 Hz).
    """
    width = max(1, round(OFFSET_SECONDS * rate))
    wide = x.double()
    return (wide - _moving_mean(_moving_mean(wide, width), width)).to(x.dtype)


def _moving_mean(x: torch.Tensor, width: int) -> torch.Tensor:
    """Centred mean over ``width`` samples along the last axis, of those that exist."""
    n = x.shape[-1]
    sums = torch.nn.functional.pad(x.cumsum(-1), (1, 0))
    index = torch.arange(n)
    lo = (index - width // 2).clamp(0, n)
    hi = (index + width - width // 2).clamp(0, n)
    return (sums[..., hi] - sums[..., lo]) / (hi - lo)
