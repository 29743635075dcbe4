"""Fit a head on a platform's own labelled audio: embed every file once, choose, calibrate.

The layer set and pooling are chosen by cross-validation over *files* (never windows of the
same file on both sides), and the final head is calibrated on files it was not fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detectors.backbone import Backbone, pool_all, select
from detectors.detector import voiced_windows
from detectors.evaluation import score
from detectors.frontend import to_model_input
from detectors.head import LogisticHead
from detectors.speech import speech_model
from detectors.types import DetectorError

POOLINGS = ("mean", "mean+cls")


@dataclass(frozen=True)
class FileEmbedding:
    """Every layer's pooled windows of one file: ``(windows, layers + 1, 2, dim)``."""

    pools: np.ndarray
    label: int
    group: str


@torch.inference_mode()
def embed_file(backbone: Backbone, audio: torch.Tensor, sample_rate: int) -> np.ndarray | None:
    """Pool every layer of every window with speech; ``None`` when the file holds none."""
    mono = to_model_input(audio, sample_rate)
    windows, _ = voiced_windows(mono, backbone.window_frames, speech=speech_model()(mono))
    if not len(windows):
        return None
    parts = []
    for start in range(0, windows.shape[0], 16):
        parts.append(pool_all(backbone.hidden_states(windows[start : start + 16])))
    return np.concatenate(parts)


def _fit(files: list[FileEmbedding], layers: list[int], pooling: str, C: float, name: str):
    X = np.concatenate([select(f.pools, layers, pooling) for f in files])
    y = np.concatenate([[f.label] * len(f.pools) for f in files])
    return LogisticHead(backbone=name, layers=layers, pooling=pooling, C=C).fit(X, y)


def _file_scores(head: LogisticHead, files: list[FileEmbedding]) -> list[float]:
    return [float(head.logits(select(f.pools, head.layers, head.pooling)).mean()) for f in files]


def candidate_layers(depth: int) -> list[list[int]]:
    """Last, penultimate, middle, and last-two layers: where AST's deepfake cues usually sit."""
    options = [[depth], [depth - 1], [max(1, depth // 2)], [depth - 1, depth]]
    return [list(o) for o in dict.fromkeys(tuple(o) for o in options)]


def fit_head_on_files(
    files: list[FileEmbedding], backbone: Backbone, *, folds: int = 4, seed: int = 0
) -> tuple[LogisticHead, dict[str, object]]:
    """Choose layers and pooling by file-level cross-validated EER, then fit and calibrate."""
    labels = np.array([f.label for f in files])
    if len(set(labels.tolist())) < 2 or min(labels.sum(), len(labels) - labels.sum()) < folds:
        raise DetectorError(f"need at least {folds} real and {folds} synthetic audible files")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(files), dtype=int)
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        fold_of[rng.permutation(idx)] = np.arange(len(idx)) % folds
    tried = []
    for layers in candidate_layers(backbone.num_layers):
        for pooling in POOLINGS:
            scores = np.zeros(len(files))
            for k in range(folds):
                train = [f for f, fk in zip(files, fold_of, strict=True) if fk != k]
                test = [i for i in range(len(files)) if fold_of[i] == k]
                head = _fit(train, layers, pooling, 1.0, backbone.name)
                scores[test] = _file_scores(head, [files[i] for i in test])
            s = score(labels.tolist(), scores.tolist())
            tried.append({"layers": layers, "pooling": pooling, **s.to_dict()})
    best = min(tried, key=lambda r: (r["eer"], -r["auc"]))
    calibration = [f for f, fk in zip(files, fold_of, strict=True) if fk == 0]
    fitting = [f for f, fk in zip(files, fold_of, strict=True) if fk != 0]
    head = _fit(fitting, best["layers"], best["pooling"], 1.0, backbone.name)
    cal_logits = np.array(_file_scores(head, calibration))
    cal_labels = np.array([f.label for f in calibration])
    head.fit_calibration(cal_logits, cal_labels)
    return head, {"chosen": best, "tried": tried, "folds": folds}
