"""The detector as a ``transformers`` audio-classification model, for ``pipeline()`` users.

Platforms already run Hugging Face pipelines; exporting the compact AST and its head into a
local model directory lets ``pipeline("audio-classification", model=DIR)`` run our own
classifier offline, next to (or instead of) their taggers.

Why not ``ASTForAudioClassification``: its classifier is a layer norm and a linear map on the
mean of the CLS and distillation tokens *after* AST's final layer norm, while our head reads
chosen layers' hidden states *before* it (mean over patches, CLS tokens, or both). No choice
of that classifier's weights reproduces the head. So the export uses a small model class of
its own, registered with the ``transformers`` Auto classes: the same ``ASTModel`` backbone,
:func:`detectors.backbone.pool`, and the head folded into one linear map. Per window it
computes exactly the detector's probability; import this module before calling ``pipeline``
so ``transformers`` knows the ``audioguard-ast`` model type (no remote code is involved).

What differs from :meth:`SyntheticVoiceDetector.predict`: a pipeline judges one window (the
first ``window_frames`` frames, as every AST pipeline truncates its input), and pads a clip
shorter than a window with zeros before normalisation where the detector pads with the
clip's quietest frame. The detector's sliding windows, silence skipping and pooling over
windows are not part of the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (  # noqa: E501
    ASTPreTrainedModel,
)

from detectors.backbone import layer_outputs, pool
from detectors.detector import SyntheticVoiceDetector
from detectors.frontend import FBANK_MEAN, FBANK_STD, MEL_BINS, SAMPLE_RATE

MODEL_TYPE = "audioguard-ast"
LABELS = ("real", "synthetic")


class AudioguardASTConfig(ASTConfig):
    """An AST config plus which layers and pooling the head reads."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        head_layers: list[int] | None = None,
        head_pooling: str = "mean",
        audioguard_model: str = "",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("id2label", dict(enumerate(LABELS)))
        kwargs.setdefault("label2id", {label: i for i, label in enumerate(LABELS)})
        super().__init__(**kwargs)
        self.head_layers = list(head_layers if head_layers is not None else [-1])
        self.head_pooling = head_pooling
        self.audioguard_model = audioguard_model


class AudioguardASTForAudioClassification(ASTPreTrainedModel):
    """AST backbone, the head's pooling, and the head folded into one linear map.

    The logits are ``[0, z]`` with ``z`` the head's calibrated logit, so the pipeline's
    default softmax gives exactly ``[1 - p, p]``: real, synthetic.
    """

    config_class = AudioguardASTConfig

    def __init__(self, config: AudioguardASTConfig) -> None:
        super().__init__(config)
        self.audio_spectrogram_transformer = ASTModel(config)
        per_layer = config.hidden_size * (2 if config.head_pooling == "mean+cls" else 1)
        self.classifier = nn.Linear(per_layer * len(config.head_layers), 1)
        self.post_init()

    def forward(
        self, input_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> SequenceClassifierOutput:
        hidden = layer_outputs(self.audio_spectrogram_transformer, input_values)
        embedding = pool(hidden, self.config.head_layers, self.config.head_pooling)
        z = self.classifier(embedding)
        logits = torch.cat([torch.zeros_like(z), z], dim=-1)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, AudioguardASTConfig)
AutoModelForAudioClassification.register(AudioguardASTConfig, AudioguardASTForAudioClassification)
AutoFeatureExtractor.register(AudioguardASTConfig, ASTFeatureExtractor)


def to_transformers(detector: SyntheticVoiceDetector) -> AudioguardASTForAudioClassification:
    """The detector's backbone and head as one ``transformers`` model (weights copied)."""
    head, backbone = detector.head, detector.backbone.model
    architecture = {
        k: v
        for k, v in backbone.config.to_diff_dict().items()
        if k not in ("model_type", "transformers_version")
    }
    config = AudioguardASTConfig(
        head_layers=head.layers,
        head_pooling=head.pooling,
        audioguard_model=detector.model_id,
        **architecture,
    )
    model = AudioguardASTForAudioClassification(config)
    model.audio_spectrogram_transformer.load_state_dict(backbone.state_dict())
    weight, bias = _folded_head(detector)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight).float()[None, :])
        model.classifier.bias.fill_(bias)
    return model.eval()


def _folded_head(detector: SyntheticVoiceDetector) -> tuple[np.ndarray, float]:
    """``a * (((x - mean) / scale) . coef + intercept) + b`` as ``x . w + c`` (in float64)."""
    head = detector.head
    a, b = head.calibration_
    coef = np.asarray(head.coef_, dtype=np.float64) / np.asarray(head.scale_, dtype=np.float64)
    bias = a * (head.intercept_ - float(np.asarray(head.mean_, dtype=np.float64) @ coef)) + b
    return a * coef, float(bias)


def feature_extractor_for(detector: SyntheticVoiceDetector) -> ASTFeatureExtractor:
    """AST's feature extractor set to our front end: 16 kHz, 128 bins, AudioSet statistics,
    one window of frames."""
    return ASTFeatureExtractor(
        sampling_rate=SAMPLE_RATE,
        num_mel_bins=MEL_BINS,
        max_length=detector.backbone.window_frames,
        mean=FBANK_MEAN,
        std=FBANK_STD,
        do_normalize=True,
    )


def export_detector(detector: SyntheticVoiceDetector, out_dir: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``."""
    out = Path(out_dir)
    to_transformers(detector).save_pretrained(out, safe_serialization=True)
    feature_extractor_for(detector).save_pretrained(out)
    return out
