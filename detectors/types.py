"""Results of the synthetic-voice detector: plain frozen values that ``guard`` turns into JSON."""

from __future__ import annotations

from dataclasses import dataclass


class DetectorError(ValueError):
    """The detector could not be built or run; the message is meant for a person.

    A ``ValueError``, so the CLI reports it as one sentence without importing this package.
    """


@dataclass(frozen=True)
class SegmentScore:
    """One analysis window: where it lies in the input and how synthetic it sounds."""

    start: float
    end: float
    synthetic_probability: float

    def to_dict(self) -> dict[str, float]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "synthetic_probability": round(self.synthetic_probability, 4),
        }


@dataclass(frozen=True)
class DetectorResult:
    """The file-level answer plus the per-window scores it was pooled from.

    ``synthetic_probability`` is ``None`` when the input held no window with speech to judge
    (silence, music, a click); a policy must be able to tell "no voice" from "real voice".
    ``speech_seconds`` is how much of the input the speech gate heard as speech.
    """

    synthetic_probability: float | None
    segments: tuple[SegmentScore, ...]
    model: str
    speech_seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        probability = self.synthetic_probability
        return {
            "synthetic_probability": None if probability is None else round(probability, 4),
            "segments": [s.to_dict() for s in self.segments],
            "model": self.model,
            "speech_seconds": self.speech_seconds,
        }
