"""Mixing ``(channels, samples)`` audio down to the one signal that watermark detection reads.

A plain mean of the channels is what every backend analysed, and it hides everything from
stereo whose channels are in antiphase: the mean of ``[x, -x]`` is digital silence, so a
marked file with one channel's polarity flipped (a one-line edit that sounds the same on
headphones) read as unmarked, and embed called a loud file "too quiet". So the channels are
averaged unless the average has lost most of their energy, and then the loudest channel is
read alone. The choice depends only on the audio, never on a key or a score, so one test
is still run per window and the p-values need no correction. ``detectors.frontend`` has
its own copy of the rule (components do not import each other).
"""

from __future__ import annotations

import torch

CANCELLED_SHARE = 0.5
"""The channels cancel when their mean keeps less than this share of the power that unrelated
channels would keep in it: ``1/C`` of their average power for ``C`` channels (two channels of
equal power: correlation below -0.5). Measured against ``1/C``, not against the channels'
own power, or every 5.1 mix of unrelated channels would count as cancelling."""


def analysis_channel(audio: torch.Tensor) -> int | None:
    """The channel of ``audio`` to read alone because the channels cancel in their mean,
    or None to read the mean as usual (one channel, ordinary stereo, silence, NaN)."""
    if audio.dim() != 2 or audio.shape[0] < 2:
        return None
    channel_power = torch.linalg.vector_norm(audio, dim=-1).double().square()
    mean_power = torch.linalg.vector_norm(audio.mean(0)).double().square()
    unrelated = channel_power.mean() / audio.shape[0]
    if bool(mean_power < CANCELLED_SHARE * unrelated):
        return int(channel_power.argmax())
    return None


def mix_down(audio: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``(channels, samples)`` → ``(samples,)``: the mean of the channels, or the loudest
    channel alone where the mean cancels (see the module's docstring).

    ``like`` (the same channels) decides instead of ``audio``: a mark about to be added to
    a host is mixed the way the host is, so that host and mark stay comparable.
    """
    channel = analysis_channel(audio if like is None else like)
    return audio.mean(0) if channel is None else audio[channel]
