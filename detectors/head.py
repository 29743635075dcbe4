"""The calibrated head on top of AST embeddings, stored as JSON (never pickle).

It follows scikit-learn's estimator contract — settings in ``__init__``, learning in ``fit``,
answers in ``predict_proba`` — and keeps only arrays, so a head file can be read, diffed and
loaded without executing anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from detectors.backbone import POOLED_KINDS, POOLINGS
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
    source: str | None = field(default=None, compare=False)  # the file it was loaded from

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
        """Read and check a head file: every problem is one sentence that names the file,
        found here rather than as a shape error or a NaN score on the first audio file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DetectorError(f"{path}: not a readable detector head ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
            raise DetectorError(f"{path}: not an audioguard detector head (format {HEAD_FORMAT})")
        try:
            head = cls._from_dict(data)
        except _Damaged as exc:
            raise DetectorError(f"{path}: damaged detector head: {exc}") from None
        head.source = str(path)
        return head

    @classmethod
    def _from_dict(cls, data: dict) -> LogisticHead:
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise _Damaged(f"missing {', '.join(repr(k) for k in missing)}")
        backbone = data["backbone"]
        if not isinstance(backbone, str) or not backbone.strip():
            raise _Damaged('"backbone" must be the name of a backbone')
        layers = data["layers"]
        if (
            not isinstance(layers, list)
            or not layers
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
        ):
            raise _Damaged(f'"layers" must be a non-empty list of layer numbers, got {layers!r}')
        if min(layers) < 0:
            raise _Damaged(f'"layers" must be 0 (the patch embedding) or more, got {layers}')
        pooling = data["pooling"]
        if pooling not in POOLINGS:
            raise _Damaged(f"unknown pooling {pooling!r} (one of {', '.join(POOLINGS)})")
        vectors = {k: _finite_vector(data[k], k) for k in ("mean", "scale", "coef")}
        sizes = {k: len(v) for k, v in vectors.items()}
        if len(set(sizes.values())) != 1:
            # Caught here, not as a matrix-shape error on the first file scored.
            shown = ", ".join(f"{k} {n}" for k, n in sizes.items())
            raise _Damaged(f"mean, scale and coef must have one length, got {shown}")
        parts = len(layers) * len(POOLED_KINDS[pooling])
        if sizes["coef"] % parts:
            raise _Damaged(
                f"{sizes['coef']} weights cannot be {len(layers)} layer(s) of {pooling} pooling"
            )
        if np.any(vectors["scale"] == 0):
            raise _Damaged('"scale" must not be 0 (it divides every feature)')
        calibration = data["calibration"]
        if not isinstance(calibration, list) or len(calibration) != 2:
            raise _Damaged(f'"calibration" must be [slope, offset], got {calibration!r}')
        card = data.get("card", {})
        if not isinstance(card, dict):
            raise _Damaged('"card" must be a mapping')
        return cls(
            backbone=backbone,
            layers=list(layers),
            pooling=pooling,
            C=_finite(data["C"], "C"),
            mean_=vectors["mean"],
            scale_=vectors["scale"],
            coef_=vectors["coef"],
            intercept_=_finite(data["intercept"], "intercept"),
            calibration_=(
                _finite(calibration[0], "calibration"),
                _finite(calibration[1], "calibration"),
            ),
            card=card,
        )

    @property
    def embedding_size(self) -> int | None:
        """How many numbers the head reads per window (None before fitting)."""
        return None if self.coef_ is None else len(self.coef_)

    def check_backbone(self, name: str, num_layers: int, hidden_size: int) -> None:
        """Raise :class:`DetectorError` (naming the head file when known) unless this head can
        read the embeddings of that backbone: its name, depth and width."""
        problem = None
        if self.backbone != name:
            problem = f"the head was fitted on backbone {self.backbone!r}, not {name!r}"
        elif max(self.layers) > num_layers:
            problem = (
                f"layers {self.layers} go beyond backbone {name!r}, whose layers are "
                f"0 (the patch embedding) to {num_layers}"
            )
        elif self.embedding_size is not None:
            expected = len(self.layers) * len(POOLED_KINDS.get(self.pooling, ())) * hidden_size
            if self.embedding_size != expected:
                problem = (
                    f"the head reads {self.embedding_size} numbers per window, but "
                    f"{len(self.layers)} layer(s) of {self.pooling} pooling from backbone "
                    f"{name!r} give {expected}"
                )
        if problem is not None:
            where = f"{self.source}: " if self.source else ""
            raise DetectorError(f"{where}{problem}")


class _Damaged(ValueError):
    """What is wrong with a head file's contents, in one clause."""


_REQUIRED = (
    "backbone",
    "layers",
    "pooling",
    "C",
    "mean",
    "scale",
    "coef",
    "intercept",
    "calibration",
)


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Damaged(f'"{name}" must be a finite number, got {value!r}')
    return float(value)


def _finite_vector(value: object, name: str) -> np.ndarray:
    """A non-empty list of finite numbers as a float array."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        raise _Damaged(f'"{name}" must be a non-empty list of numbers')
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise _Damaged(f'"{name}" holds a number that is not finite (NaN or infinity)')
    return array
