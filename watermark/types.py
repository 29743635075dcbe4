"""The contract every watermark backend answers to.

Backends take a waveform as a float32 ``torch.Tensor`` shaped ``(channels, samples)`` plus an
``int`` sample rate and return the small frozen dataclasses below, so that ``guard`` can turn
any backend's answer into the same JSON and the same policy facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

DEFAULT_P_THRESHOLD = 1e-6
"""A mark is reported as present when its p-value falls below this (the keyed backend's default)."""


class WatermarkError(Exception):
    """A watermark operation could not be carried out; the message is meant for a person."""


@dataclass(frozen=True)
class Segment:
    """A stretch of the input, in seconds, where the mark was found."""

    start: float
    end: float

    def to_dict(self) -> dict[str, float]:
        return {"start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass(frozen=True)
class Detection:
    """What a detector concluded about one waveform.

    ``p_value`` is the probability that *unmarked* audio scores at least this high; it is the
    number a service can put in writing, and ``detected`` is ``p_value < threshold``.
    """

    backend: str
    detected: bool
    p_value: float
    payload: str | None = None
    segments: tuple[Segment, ...] = ()
    score: float = 0.0
    details: dict[str, float | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "detected": self.detected,
            "p_value": self.p_value,
            "payload": self.payload,
            "segments": [s.to_dict() for s in self.segments],
            "score": round(self.score, 4),
        }


@dataclass(frozen=True)
class EmbedResult:
    """Marked audio plus what a generator needs to log about it."""

    audio: torch.Tensor
    sample_rate: int
    marked_seconds: float
    snr_db: float
    verification: Detection


@runtime_checkable
class WatermarkBackend(Protocol):
    """A watermark scheme. ``payload`` is a hex string; backends without a payload ignore it."""

    name: str

    def embed(self, audio: torch.Tensor, sample_rate: int, payload: str | None) -> EmbedResult:
        """Return marked audio of the same shape and rate, verified by ``detect``."""
        ...

    def detect(self, audio: torch.Tensor, sample_rate: int) -> Detection:
        """Blind detection: the audio alone (and the backend's own key or weights)."""
        ...


def snr_db(host: torch.Tensor, marked: torch.Tensor) -> float:
    """Signal-to-watermark ratio in dB; infinite when nothing changed."""
    noise = float(torch.sum((marked.double() - host.double()) ** 2))
    signal = float(torch.sum(host.double() ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * torch.log10(torch.tensor(signal / noise)).item()
