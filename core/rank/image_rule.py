"""The score of a bare stack of class averages: a monotone rule on image features, measured within the stack.

A bare stack (class averages with no particle counts, resolution or accuracy) leaves rank with
images alone. The learned image model scored every held-out synthetic set almost perfectly but
RELION-made averages poorly (per-run AUROC median 0.67 on the foreign-generator corpus), because the
absolute values of image features move with the generator: box, pixel size, SNR, the CTF
correction and RELION's masking change contrast and spectra of every class together. What carries
over is the ordering within one stack.

``ImageRule`` therefore (1) expresses each image feature (``features.IMAGE_FEATURES``) as a robust
z-score within the stack (median and MAD of the stack's classes), (2) keeps the features whose
direction is the same in most training data sets (chosen on the training sets only), and (3) fits a
logistic whose weights are bound to those directions (``calibration.fit_logistic`` with signs), so
that no feature can be used against the direction it showed in training. A Platt calibration on
other data sets turns the logit into a probability.

With class statistics the same rule is stacked with the statistics model's logit (non-negative
weights, ``fit_stack``): the images then add what the statistics miss without being able to
reverse them, and the score stays monotone in particle count, resolution and accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..calibration import auroc, fit_logistic, fit_platt
from .features import IMAGE_FEATURES

MIN_EFFECT = 0.2  # |median per-set AUROC - 0.5| a feature must show to be used
MIN_AGREEMENT = 0.75  # share of training sets whose AUROC lies on the median's side of 0.5


def within_stack(features: np.ndarray) -> np.ndarray:
    """(K, F) robust z-scores per column within the stack: (x - median) / (1.4826 MAD), missing
    values at the median, clipped to +-5 (one odd class must not dominate)."""
    X = np.array(features, np.float64)
    med = np.nanmedian(np.where(np.isfinite(X), X, np.nan), 0) if len(X) else np.zeros(X.shape[1])
    med = np.where(np.isfinite(med), med, 0.0)
    X = np.where(np.isfinite(X), X, med)
    mad = 1.4826 * np.median(np.abs(X - med), 0) + 1e-6
    return np.clip((X - med) / mad, -5.0, 5.0)


@dataclass
class ImageRule:
    features: list[str]
    signs: list[float]
    weights: list[float]
    bias: float = 0.0
    calibration: dict[str, Any] | None = None  # Platt on held-apart data sets
    trained_on: dict[str, Any] = field(default_factory=dict)
    # with class statistics: logit = b + w_model * combiner logit + w_rule * rule logit, w >= 0
    # (monotone in the statistics because the combiner is), and its own Platt calibration
    stack: list[float] | None = None
    stack_calibration: dict[str, Any] | None = None

    def _columns(self, image_features: np.ndarray) -> np.ndarray:
        idx = [IMAGE_FEATURES.index(f) for f in self.features]
        return within_stack(np.asarray(image_features, np.float64))[:, idx]

    def logit(self, image_features: np.ndarray) -> np.ndarray:
        """(K,) logits from the stack's (K, len(IMAGE_FEATURES)) image features."""
        if not len(image_features):
            return np.zeros(0)
        return self.bias + self._columns(image_features) @ np.asarray(self.weights)

    def stacked(self, model_logit: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        b, w_model, w_rule = self.stack
        return b + w_model * np.asarray(model_logit, np.float64) + w_rule * self.logit(image_features)

    def fit_stack(self, sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  calibration_sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """The stack with the statistics model, from (combiner logits, image features, labels) per
        data set: weights bound to be >= 0 (``fit_logistic`` with signs), Platt on ``calibration_sets``."""
        X = np.concatenate([np.stack([m, self.logit(x)], 1) for m, x, _ in sets])
        Y = np.concatenate([np.asarray(y, np.int64) for _, _, y in sets])
        self.stack = [float(v) for v in fit_logistic(X, Y, signs=(1, 1))]
        self.stack_calibration = fit_platt(np.concatenate([self.stacked(m, x) for m, x, _ in calibration_sets]),
                                           np.concatenate([np.asarray(y, np.int64) for _, _, y in calibration_sets]))

    @classmethod
    def fit(cls, sets: Sequence[tuple[np.ndarray, np.ndarray]],
            calibration_sets: Sequence[tuple[np.ndarray, np.ndarray]] = (), l2: float = 1e-2) -> "ImageRule":
        """``sets``: (image features (K, F), labels (K,)) per data set; directions and weights come from
        them, the Platt calibration from ``calibration_sets`` (default: the same sets)."""
        per_set = [(within_stack(x), np.asarray(y, np.int64)) for x, y in sets if 0 < np.sum(y) < len(y)]
        if not per_set:
            raise ValueError("the image rule needs data sets with good and bad classes")
        chosen, signs = [], []
        for j, name in enumerate(IMAGE_FEATURES):
            a = np.array([auroc(z[:, j], y) for z, y in per_set])
            a = a[np.isfinite(a)]
            if not len(a):
                continue
            med = float(np.median(a))
            side = np.sign(med - 0.5)
            if abs(med - 0.5) >= MIN_EFFECT and np.mean(np.sign(a - 0.5) == side) >= MIN_AGREEMENT:
                chosen.append(name)
                signs.append(float(side))
        if not chosen:
            raise ValueError("no image feature keeps its direction across the training data sets")
        idx = [IMAGE_FEATURES.index(f) for f in chosen]
        Z = np.concatenate([z[:, idx] for z, _ in per_set])
        Y = np.concatenate([y for _, y in per_set])
        w = fit_logistic(Z, Y, l2=l2, signs=tuple(signs))
        rule = cls(chosen, signs, [float(v) for v in w[1:]], float(w[0]),
                   trained_on={"sets": len(per_set), "classes": int(len(Y)), "good": int(Y.sum())})
        cal = calibration_sets or sets
        rule.calibration = fit_platt(np.concatenate([rule.logit(x) for x, _ in cal]),
                                     np.concatenate([np.asarray(y, np.int64) for _, y in cal]))
        return rule

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "signs": self.signs, "weights": self.weights, "bias": self.bias,
                "calibration": self.calibration, "trained_on": self.trained_on, "stack": self.stack,
                "stack_calibration": self.stack_calibration}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageRule":
        unknown = set(d["features"]) - set(IMAGE_FEATURES)
        if unknown:
            raise ValueError(f"the image rule uses features this cryolens does not compute: {sorted(unknown)}")
        return cls(list(d["features"]), [float(s) for s in d["signs"]], [float(w) for w in d["weights"]],
                   float(d["bias"]), d.get("calibration"), dict(d.get("trained_on") or {}),
                   [float(v) for v in d["stack"]] if d.get("stack") else None, d.get("stack_calibration"))
