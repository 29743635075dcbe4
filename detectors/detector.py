"""Sliding-window inference: any length, rate and channel count in, per-window and file scores out.

Like pyannote's ``Inference``: the model judges fixed windows, the windows overlap by half,
and the file's answer is pooled from the windows that hold speech. Windows that are nearly
silent, or hold no speech (music, effects), are not judged at all, because a score there
says nothing about a voice.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from detectors.backbone import Backbone, load_backbone, pool
from detectors.frontend import SAMPLE_RATE, fbank, fit_frames, to_model_input
from detectors.head import LogisticHead
from detectors.speech import chunk_span, speech_fraction, speech_model, speech_seconds
from detectors.types import DetectorError, DetectorResult, SegmentScore

SHIPPED_HEAD = Path(__file__).parent / "weights" / "compact_ast_head.json"
SILENCE_DBFS = -55.0
MIN_SPEECH = 0.2
"""A window is judged when at least this share of it is speech (music, noise are not voices)."""
MIN_SPEECH_SECONDS = 0.5
"""A file that holds this much speech in its audible windows is judged even when no window
reaches ``MIN_SPEECH``: its most voiced window is, if at least half ``MIN_SPEECH`` of it is
speech. Otherwise two short words far apart get no verdict, and a synthetic voice could slip
past unjudged by speaking in bursts; the second floor keeps a stray VAD blip in music or
effects from being judged as a voice."""
BATCH = 16


class SyntheticVoiceDetector:
    """A backbone plus a head, applied window by window."""

    def __init__(self, backbone: Backbone, head: LogisticHead, hop_fraction: float = 0.5) -> None:
        config = backbone.model.config
        head.check_backbone(backbone.name, backbone.num_layers, int(config.hidden_size))
        self.backbone = backbone
        self.head = head
        self.hop_fraction = hop_fraction

    @property
    def model_id(self) -> str:
        return f"{self.backbone.name}+{self.head.card.get('name', 'head')}"

    def embed_windows(self, features: torch.Tensor) -> np.ndarray:
        """Embeddings of a ``(windows, frames, 128)`` batch, as the head expects them."""
        rows = []
        for start in range(0, features.shape[0], BATCH):
            hidden = self.backbone.hidden_states(features[start : start + BATCH])
            rows.append(pool(hidden, self.head.layers, self.head.pooling).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0))

    def predict(self, audio: torch.Tensor, sample_rate: int) -> DetectorResult:
        mono = to_model_input(audio, sample_rate)
        speech = speech_model()(mono)
        spoken = round(speech_seconds(speech), 2)
        size = self.backbone.window_frames
        windows, spans = voiced_windows(mono, size, self.hop_fraction, speech)
        if not spans:
            return DetectorResult(None, (), self.model_id, spoken)
        with np.errstate(all="ignore"):
            logits = self.head.logits(self.embed_windows(windows))
        if np.isnan(logits).any():  # weights so extreme that they overflow; never a score
            where = self.head.source or "the detector head"
            raise DetectorError(f"{where}: its weights overflow and give no score (NaN)")
        probabilities = _sigmoid(logits)
        segments = tuple(
            SegmentScore(start, end, float(p))
            for (start, end), p in zip(spans, probabilities, strict=True)
        )
        file_probability = float(_sigmoid(np.mean(logits)))
        return DetectorResult(file_probability, segments, self.model_id, spoken)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """The probability of each logit, without overflow for any finite or infinite one."""
    logits = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(
            logits >= 0, 1.0 / (1.0 + np.exp(-logits)), np.exp(logits) / (1.0 + np.exp(logits))
        )


def voiced_windows(
    mono: torch.Tensor,
    size: int,
    hop_fraction: float = 0.5,
    speech: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """Cut the fbank of a 16 kHz waveform into overlapping ``size``-frame windows.

    Windows quieter than ``SILENCE_DBFS`` are dropped, and so, when ``speech`` (per-chunk
    speech probabilities from :mod:`detectors.speech`) is given, are windows with less than
    ``MIN_SPEECH`` of speech, unless none has that much and the audible windows hold
    ``MIN_SPEECH_SECONDS`` of speech: then the most voiced window is kept, if half
    ``MIN_SPEECH`` of it is speech. The spans say where each kept window lies in seconds.
    Input shorter than 0.1 s gives no window at all.
    """
    duration = mono.numel() / SAMPLE_RATE
    if mono.numel() < SAMPLE_RATE // 10:
        return torch.zeros(0), []
    features = fbank(mono)
    hop = max(1, int(size * hop_fraction))
    count = 1 + max(0, math.ceil((features.shape[0] - size) / hop))
    chosen, spans = [], []
    best: tuple[float, int, float] | None = None  # most voiced audible window: share, start, end
    audible = torch.zeros(0 if speech is None else speech.numel(), dtype=torch.bool)
    for i in range(count):
        start = i * hop
        end_s = min(duration, (start + size) / 100)
        piece = mono[int(start / 100 * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)]
        rms = float(piece.pow(2).mean().sqrt()) if piece.numel() else 0.0
        if 20 * math.log10(rms + 1e-12) < SILENCE_DBFS:
            continue
        if speech is not None:
            audible[chunk_span(start / 100, end_s)] = True
            share = speech_fraction(speech, start / 100, end_s)
            if best is None or share > best[0]:
                best = (share, start, end_s)
            if share < MIN_SPEECH:
                continue
        chosen.append(fit_frames(features[start : start + size], size))
        spans.append((start / 100, end_s))
    if (
        not chosen
        and best is not None
        and best[0] >= MIN_SPEECH / 2
        and speech_seconds(speech[audible]) >= MIN_SPEECH_SECONDS
    ):
        _, start, end_s = best
        chosen.append(fit_frames(features[start : start + size], size))
        spans.append((start / 100, end_s))
    if not chosen:
        return torch.zeros(0), []
    return torch.stack(chosen), spans


def load_detector(
    head: str | Path | None = None, backbone: str | Path | None = None
) -> SyntheticVoiceDetector:
    """The shipped compact AST and head by default; a head file names its own backbone.

    Nothing is downloaded: a pretrained backbone must already be a local path or in the
    Hugging Face cache, and the error says how to get it there.
    """
    head_path = Path(head) if head is not None else SHIPPED_HEAD
    if not head_path.exists():
        raise DetectorError(f"detector head not found: {head_path}")
    fitted = LogisticHead.load(head_path)
    spec = backbone if backbone is not None else fitted.card.get("backbone_spec")
    return SyntheticVoiceDetector(load_backbone(spec), fitted)
