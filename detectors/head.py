"""The calibrated head on top of AST embeddings, stored as JSON (never pickle).

It follows scikit-learn's estimator contract — settings in ``__init__``, learning in ``fit``,
answers in ``predict_proba`` — and keeps only arrays, so a head file can be read, diffed and
loaded without executing anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from detectors.types import DetectorError

HEAD_FORMAT = "audioguard-head-1"


@dataclass
class LogisticHead:
    """Standardise, logistic regression, then Platt scaling on data the regression never saw.

    ``layers`` and ``pooling`` say which backbone outputs form the embedding, so that a head
    cannot be applied to features it was not fitted on.
    """

    backbone: str
    layers: list[int]
    pooling: str
    C: float = 1.0
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    coef_: np.ndarray | None = None
    intercept_: float = 0.0
    calibration_: tuple[float, float] = (1.0, 0.0)
    card: dict[str, object] = field(default_factory=dict)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_cal: np.ndarray | None = None,
        y_cal: np.ndarray | None = None,
    ) -> LogisticHead:
        """Fit on ``(X, y)``; calibrate on ``(X_cal, y_cal)`` when given (recommended)."""
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(C=self.C, max_iter=2000, class_weight="balanced")
        model.fit(scaler.transform(X), y)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        self.coef_, self.intercept_ = model.coef_[0], float(model.intercept_[0])
        self.calibration_ = (1.0, 0.0)
        if X_cal is not None and y_cal is not None:
            self.fit_calibration(self.decision_function(X_cal), y_cal)
        return self

    def fit_calibration(self, raw_logits: np.ndarray, y: np.ndarray) -> LogisticHead:
        """Platt scaling: map raw logits of held-out items to calibrated probabilities."""
        if len(set(np.asarray(y).tolist())) == 2:
            platt = LogisticRegression(C=1e4, max_iter=1000)
            platt.fit(np.asarray(raw_logits)[:, None], y)
            self.calibration_ = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated logits; ranking metrics (EER, AUC) need only these."""
        if self.coef_ is None:
            raise DetectorError("the head has not been fitted")
        return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Calibrated logits, so averaging windows keeps the probability scale."""
        a, b = self.calibration_
        return a * self.decision_function(X) + b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, 2)`` probabilities of [real, synthetic], as scikit-learn returns them."""
        p = 1.0 / (1.0 + np.exp(-self.logits(X)))
        return np.stack([1 - p, p], axis=1)

    def save(self, path: Path) -> None:
        if self.coef_ is None:
            raise DetectorError("the head has not been fitted")
        data = {
            "format": HEAD_FORMAT,
            "backbone": self.backbone,
            "layers": self.layers,
            "pooling": self.pooling,
            "C": self.C,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
            "calibration": list(self.calibration_),
            "card": self.card,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> LogisticHead:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DetectorError(f"{path}: not a readable detector head ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
            raise DetectorError(f"{path}: not an audioguard detector head (format {HEAD_FORMAT})")
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectorError(f"{path}: damaged detector head ({exc!r})") from exc

    @classmethod
    def _from_dict(cls, data: dict) -> LogisticHead:
        sizes = {k: np.asarray(data[k]).shape for k in ("mean", "scale", "coef")}
        if len(set(sizes.values())) != 1 or len(sizes["coef"]) != 1:
            # Caught here, not as a matrix-shape error on the first file scored.
            raise ValueError(f"mean, scale and coef must be vectors of one length, got {sizes}")
        return cls(
            backbone=data["backbone"],
            layers=list(data["layers"]),
            pooling=data["pooling"],
            C=float(data["C"]),
            mean_=np.asarray(data["mean"]),
            scale_=np.asarray(data["scale"]),
            coef_=np.asarray(data["coef"]),
            intercept_=float(data["intercept"]),
            calibration_=tuple(data["calibration"]),
            card=data.get("card", {}),
        )
