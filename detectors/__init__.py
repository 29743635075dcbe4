"""Synthetic-speech detection on AST embeddings: front end, backbones, heads, sliding windows."""

from detectors.detector import SyntheticVoiceDetector, load_detector
from detectors.types import DetectorError, DetectorResult, SegmentScore

__all__ = [
    "DetectorError",
    "DetectorResult",
    "SegmentScore",
    "SyntheticVoiceDetector",
    "load_detector",
]
