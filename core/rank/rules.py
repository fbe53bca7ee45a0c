"""The classical rule for 2D classes, the guard it gives the learned score, and the model's domain.

Facilities rank 2D classes by what RELION and cryoSPARC estimate for each: the resolution, the
number of particles and the rotational accuracy. The ``RuleModel`` is that rule made explicit: a
logistic model of "good" on a few robust statistics whose weights are constrained in sign, so that,
other things equal, more particles, a finer resolution or a better accuracy never lower the score
(a monotone model; ``calibration.fit_logistic`` with sign bounds).

Statistics that say "this class did not converge" are read as the worst value, never as missing:
RELION writes accuracy 999 (the readers make it NaN) and resolution inf for classes it could not
align, and such classes are often tiny. A learned score can be fooled by them (classes of 2-9
particles scored 0.83-0.95 in an independent evaluation), so ``guard`` marks unconverged, empty and
tiny classes, whose score is never above the rule's (``apply_guard``).

``Domain`` records what a model was trained on (ranges of every evidence feature, pixel size, box,
iterations); ``Domain.check`` says in words why a data set lies outside it, and the job then scores
it with the rule (or, for a bare stack, says the learned score is outside its training domain).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..particles import ClassSet
from .features import WORST_ACC_ROT, class_counts

RULE_FEATURES = ("log_count", "rel_count", "inv_res", "rel_res", "log_acc_rot")
RULE_SIGNS = (1.0, 1.0, 1.0, 1.0, -1.0)  # the direction in which a statistic makes a class better
MIN_PARTICLES = 10  # fewer members than this: a tiny class (nothing worth keeping, whatever it shows)


# -- statistics ------------------------------------------------------------------------------------
def _column(cs: ClassSet, name: str) -> np.ndarray | None:
    if name not in cs.table:
        return None
    import pandas as pd

    return pd.to_numeric(cs.table[name], errors="coerce").to_numpy(np.float64)


@dataclass
class ClassStatistics:
    """Per class (ClassSet order); ``None`` arrays: the source does not have that statistic."""

    count: np.ndarray | None
    resolution: np.ndarray | None
    acc_rot: np.ndarray | None
    unconverged: np.ndarray  # bool: RELION could not align it (999 accuracy or inf resolution)
    tiny: np.ndarray  # bool: fewer than MIN_PARTICLES members (or empty)

    @property
    def guarded(self) -> np.ndarray:
        return self.unconverged | self.tiny


def class_statistics(cs: ClassSet) -> ClassStatistics:
    n = class_counts(cs)
    count = n if np.isfinite(n).any() else None
    res = _column(cs, "resolution")
    if res is not None and not (np.isfinite(res) | np.isinf(res)).any():
        res = None
    acc = _column(cs, "acc_rot")
    if acc is not None and not np.isfinite(acc).any():
        acc = None  # the source never gives it: missing, not unconverged
    k = len(cs)
    unconverged = np.zeros(k, bool)
    if acc is not None:
        unconverged |= ~np.isfinite(acc)  # 999 in RELION's file, NaN after reading, while others have values
    if res is not None:
        unconverged |= ~np.isfinite(res) | (res <= 0)
    tiny = np.zeros(k, bool) if count is None else (np.nan_to_num(count, nan=0.0) < MIN_PARTICLES)
    return ClassStatistics(count, res, acc, unconverged, tiny)


def rule_features(st: ClassStatistics) -> np.ndarray:
    """(K, len(RULE_FEATURES)); NaN columns where the source lacks the statistic. Unconverged values
    are the worst ones: inverse resolution 0, accuracy 180 degrees."""
    k = len(st.unconverged)
    out = np.full((k, len(RULE_FEATURES)), np.nan)
    if st.count is not None:
        n = np.nan_to_num(st.count, nan=0.0)
        out[:, 0] = np.log1p(n)
        out[:, 1] = np.log1p(n) - np.log1p(max(float(np.median(n)), 1.0))
    if st.resolution is not None:
        r = st.resolution
        inv = np.where(np.isfinite(r) & (r > 0), 1.0 / np.where(np.isfinite(r) & (r > 0), r, 1.0), 0.0)
        out[:, 2] = 10.0 * inv
        out[:, 3] = inv / inv.max() if inv.max() > 0 else 0.0
    if st.acc_rot is not None:
        a = np.where(np.isfinite(st.acc_rot), np.clip(st.acc_rot, 0, WORST_ACC_ROT), WORST_ACC_ROT)
        out[:, 4] = np.log1p(a)
    return out


# -- the rule ----------------------------------------------------------------------------------------
@dataclass
class RuleModel:
    """p(good) = sigmoid(bias + sum_i w_i x_i) on the rule features, sign(w_i) fixed by
    ``RULE_SIGNS`` (``calibration.fit_logistic`` with sign bounds); a statistic the source lacks
    takes its training mean (it then moves no class against another)."""

    mean: list[float] = field(default_factory=lambda: [0.0] * len(RULE_FEATURES))
    weights: list[float] = field(default_factory=lambda: list(RULE_SIGNS))
    bias: float = 0.0

    def logit(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float64)
        x = np.where(np.isfinite(x), x, np.asarray(self.mean))
        return self.bias + x @ np.asarray(self.weights)

    def probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(features)))

    def score(self, cs: ClassSet) -> np.ndarray:
        return self.probability(rule_features(class_statistics(cs)))

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, l2: float = 1e-2) -> "RuleModel":
        from ..calibration import fit_logistic

        X = np.asarray(features, np.float64)
        mean = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in X.T])
        w = fit_logistic(np.where(np.isfinite(X), X, mean), labels, l2=l2, signs=RULE_SIGNS)
        return cls(mean.tolist(), w[1:], w[0])

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(RULE_FEATURES), "mean": self.mean, "weights": self.weights, "bias": self.bias}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RuleModel":
        if list(d.get("features", RULE_FEATURES)) != list(RULE_FEATURES):
            raise ValueError("the rule was fitted on other statistics")
        return cls(list(d["mean"]), list(d["weights"]), float(d["bias"]))


def blank_images(images) -> np.ndarray:
    """(K,) bool: class averages with no content, constant (all-zero included) or with no finite
    pixel. RELION writes such images for classes that lost all their particles; a bare stack has no
    counts to tell, and an image model has never seen one, so they are marked here and score 0."""
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    fin = np.isfinite(x)
    lo = np.where(fin, x, np.inf).min(1)
    hi = np.where(fin, x, -np.inf).max(1)
    scale = np.maximum(np.abs(lo), np.abs(hi))
    return ~fin.any(1) | (hi - lo <= 1e-6 * np.maximum(scale, 1e-30))


def apply_guard(probability: np.ndarray, rule_probability: np.ndarray, st: ClassStatistics) -> np.ndarray:
    """Unconverged, empty and tiny classes never score above the rule (which already gives them its
    worst statistics); an empty class scores 0 (nothing to keep)."""
    p = np.where(st.guarded, np.minimum(probability, rule_probability), probability)
    if st.count is not None:
        p = np.where(np.nan_to_num(st.count, nan=1.0) <= 0, 0.0, p)
    return p


# -- the training domain -------------------------------------------------------------------------------
@dataclass
class Domain:
    """What a model was trained on: per evidence feature the 1st-99th percentile range, and the
    ranges of pixel size and box. ``check`` lists the reasons a data set lies outside it."""

    names: list[str]
    lo: list[float]
    hi: list[float]
    pixel_size: tuple[float, float] = (0.0, float("inf"))
    box: tuple[float, float] = (0.0, float("inf"))
    max_outside: float = 0.25  # share of (class, feature) values outside their range that is too many

    @classmethod
    def fit(cls, names, evidence: np.ndarray, pixel_sizes, boxes) -> "Domain":
        X = np.asarray(evidence, np.float64)
        lo = [float(np.nanpercentile(c, 1)) if np.isfinite(c).any() else float("nan") for c in X.T]
        hi = [float(np.nanpercentile(c, 99)) if np.isfinite(c).any() else float("nan") for c in X.T]
        return cls(list(names), lo, hi, (float(np.min(pixel_sizes)), float(np.max(pixel_sizes))),
                   (float(np.min(boxes)), float(np.max(boxes))))

    def outside_share(self, evidence: np.ndarray) -> np.ndarray:
        """Per feature: the share of finite values outside [lo - 25% span, hi + 25% span]."""
        X = np.asarray(evidence, np.float64)
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        span = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
        ok = np.isfinite(lo) & np.isfinite(hi)
        out = (X < lo - 0.25 * span) | (X > hi + 0.25 * span)
        fin = np.isfinite(X) & ok
        return np.where(fin.sum(0) > 0, (out & fin).sum(0) / np.maximum(fin.sum(0), 1), 0.0)

    def check(self, evidence: np.ndarray, pixel_size: float | None, box: int | None) -> list[str]:
        why = []
        if pixel_size and not (0.8 * self.pixel_size[0] <= pixel_size <= 1.25 * self.pixel_size[1]):
            why.append(f"pixel size {pixel_size:.2f} A outside the trained {self.pixel_size[0]:.2f}-"
                       f"{self.pixel_size[1]:.2f} A")
        if box and not (0.8 * self.box[0] <= box <= 1.25 * self.box[1]):
            why.append(f"box {box} px outside the trained {self.box[0]:.0f}-{self.box[1]:.0f} px")
        X = np.asarray(evidence, np.float64)
        share = self.outside_share(X)
        counted = np.isfinite(X).sum(0)
        pooled = float((share * counted).sum() / max(counted.sum(), 1))
        if pooled > self.max_outside:  # too many (class, feature) values outside their trained ranges
            worst = [f"{self.names[i]} ({100 * share[i]:.0f}%)" for i in np.argsort(-share)[:4] if share[i] > 0]
            why.append(f"{100 * pooled:.0f}% of the class features outside their trained ranges, most: "
                       + ", ".join(worst))
        return why

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "lo": self.lo, "hi": self.hi, "pixel_size": list(self.pixel_size),
                "box": list(self.box), "max_outside": self.max_outside}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Domain":
        return cls(list(d["names"]), list(d["lo"]), list(d["hi"]), tuple(d["pixel_size"]), tuple(d["box"]),
                   float(d.get("max_outside", 0.25)))
