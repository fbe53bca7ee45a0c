"""The cut on calibrated class scores: given, a share of the classes, or adapted to the data set
(``auto_threshold``)."""
from __future__ import annotations

import math

import numpy as np


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _otsu_1d(x: np.ndarray) -> tuple[float, float]:
    """(cut, separability): the split of sorted values that maximises the between-group variance,
    and that variance as a share of the total (1 = two tight groups, near 0.6 or below = one blob)."""
    xs = np.sort(np.asarray(x, np.float64))
    n = len(xs)
    total = xs.var()
    if n < 4 or total <= 1e-12:
        return float("nan"), 0.0
    best, cut = -1.0, float("nan")
    for i in range(1, n):
        a, b = xs[:i], xs[i:]
        between = (i / n) * ((n - i) / n) * (a.mean() - b.mean()) ** 2
        if between > best:
            best, cut = between, 0.5 * (xs[i - 1] + xs[i])
    return cut, best / total


def auto_threshold(prob: np.ndarray, counts: np.ndarray | None, recall: float = 0.95,
                   min_probability: float = 0.1) -> tuple[float, str]:
    """A cut on the calibrated scores of THIS data set, and the reason in words.

    1. The valley between the data set's junk and good modes: a two-group (Otsu) split of the
       scores' logits; used when the two groups are well separated (separability >= 0.75), else
       0.5 (no valley: the calibrated coin-flip).
    2. Recall guard: the scores are probabilities, so the expected number of good particles in
       each class is score x count. The cut is lowered, if needed, until the kept classes hold an
       expected ``recall`` share of the expected good particles in all classes that could be kept
       (those at or above the floor).
    3. Floor: never below ``min_probability`` (a class that is junk 9 times in 10 is not kept to
       chase the last few expected particles).
    """
    p = np.asarray(prob, np.float64)
    n = np.ones_like(p) if counts is None else np.where(np.isfinite(counts), np.asarray(counts, np.float64), 1.0)
    why = []
    cut_v, sep = _otsu_1d(_logit(p))
    if np.isfinite(cut_v) and sep >= 0.75:
        valley = float(1 / (1 + math.exp(-cut_v)))
        lo, hi = p[p < valley], p[p >= valley]
        why.append(f"valley between a low mode (median {np.median(lo):.2f}, {len(lo)} classes) and a high mode "
                   f"(median {np.median(hi):.2f}, {len(hi)} classes) at {valley:.2f} (separability {sep:.2f})")
    else:
        valley = 0.5
        why.append(f"no clear valley in the scores (separability {sep:.2f} < 0.75): start at 0.5")
    expected = np.where(p >= min_probability, p * n, 0.0)
    cut = valley
    if expected.sum() > 0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(expected[order]) / expected.sum()
        k = int(np.searchsorted(cum, recall - 1e-12)) + 1
        guard = float(p[order][min(k, len(p)) - 1])
        kept_at_valley = expected[p >= valley].sum() / expected.sum()
        if guard < valley:
            cut = guard
            why.append(f"lowered to {guard:.2f}: at {valley:.2f} the kept classes hold an expected "
                       f"{100 * kept_at_valley:.1f}% of the good particles, below the {100 * recall:.0f}% target")
        else:
            why.append(f"expected good-particle recall there {100 * kept_at_valley:.1f}% "
                       f"(target {100 * recall:.0f}%)")
    if cut < min_probability:
        why.append(f"raised to the floor {min_probability:.2f}")
        cut = float(min_probability)
    return float(cut), "; ".join(why)


def score_order(prob: np.ndarray, logit: np.ndarray | None = None) -> np.ndarray:
    """Classes best first: by probability, ties (an isotonic calibration's plateaus) broken by the
    model's logit, then by class order."""
    p = np.asarray(prob, np.float64)
    tie = np.zeros_like(p) if logit is None else np.asarray(logit, np.float64)
    return np.lexsort((np.arange(len(p)), -tie, -p))


def select_classes(prob: np.ndarray, counts: np.ndarray, how: str, threshold: float = 0.5, fraction: float = 0.5,
                   recall: float = 0.95, min_probability: float = 0.1,
                   logit: np.ndarray | None = None) -> tuple[np.ndarray, float, str]:
    """(kept classes, the score a class needed, why): ``how`` is ``threshold`` (given), ``fraction``
    (exactly that share of the classes, best first by ``score_order``) or ``auto`` (``auto_threshold``)."""
    p = np.asarray(prob, np.float64)
    if how == "threshold":
        return p >= threshold, float(threshold), f"threshold {float(threshold):.2f} (given)"
    if how == "fraction":
        n_keep = max(1, int(round(fraction * len(p))))
        keep = np.zeros(len(p), bool)
        keep[score_order(p, logit)[:n_keep]] = True
        cut = float(p[keep].min())
        return keep, cut, f"top {100 * fraction:.0f}% of the classes ({n_keep}): score >= {cut:.3f}"
    cut, reason = auto_threshold(p, None if np.isnan(counts).all() else counts, recall, min_probability)
    return p >= cut, cut, f"auto cut {cut:.2f}: {reason}"
