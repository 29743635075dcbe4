"""Ranking metrics for a detector: EER and AUC, overall and per group (folder, family, language).

EER is the operating point where false accepts equal false rejects; it does not depend on
calibration, so it compares models fairly, and AUC says how well scores rank at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


@dataclass(frozen=True)
class Scores:
    """EER and AUC of one set of scores; ``None`` where one class is missing."""

    eer: float | None
    auc: float | None
    n_real: int
    n_synthetic: int

    def to_dict(self) -> dict[str, object]:
        return {
            "eer": None if self.eer is None else round(self.eer, 4),
            "auc": None if self.auc is None else round(self.auc, 4),
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
        }


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The error rate where the false-positive and false-negative rates cross."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def score(labels: Sequence[int], scores: Sequence[float]) -> Scores:
    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    n_syn, n_real = int(y.sum()), int(len(y) - y.sum())
    if n_syn == 0 or n_real == 0:
        return Scores(None, None, n_real, n_syn)
    return Scores(equal_error_rate(y, s), float(roc_auc_score(y, s)), n_real, n_syn)


def breakdown(
    labels: Sequence[int], scores: Sequence[float], groups: Sequence[str]
) -> dict[str, Scores]:
    """Scores per group where a group holds one class only (a synthetic family, a real
    folder), so it is scored against *all* items of the other class: that is how a family's
    EER is read in the literature, and it tells which folder the detector fails on."""
    y, s, g = np.asarray(labels), np.asarray(scores, dtype=float), np.asarray(groups)
    result = {}
    for group in sorted(set(g.tolist())):
        inside = g == group
        classes = set(y[inside].tolist())
        if len(classes) == 2:
            result[group] = score(y[inside], s[inside])
        else:
            other = y != y[inside][0]
            keep = inside | other
            result[group] = score(y[keep], s[keep])
    return result
