"""Calibration: turning scores into probabilities, and measuring how well they rank and agree.

- ``fit_logistic`` / ``logistic``: multi-feature logistic regression (identify's confidence that the
  top-1 entry is right, from the score, its decoy z and the margin);
- ``fit_platt`` (Platt 1999, with his target smoothing), ``fit_isotonic`` (pool adjacent violators;
  Zadrozny & Elkan 2002), ``fit_score_calibration`` (isotonic when there are enough labels) and
  ``apply_calibration``: one model logit -> probability (the ranker's classes);
- ``auroc`` (Mann-Whitney) and ``expected_calibration_error`` (Naeini et al. 2015).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import InputError


def logistic(features: np.ndarray, weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(w[0] + features @ w[1:])))


def fit_logistic(features: np.ndarray, correct: np.ndarray, l2: float = 1e-3,
                 signs=None) -> list[float]:
    """Logistic regression of a 0/1 outcome on features (standardised inside, weights returned on
    the raw features as [bias, w_1, ...]). ``signs`` (+1, -1 or 0 per feature) constrains the sign of
    each weight (L-BFGS-B bounds): a monotone model, whatever the training data pull."""
    from scipy.optimize import minimize

    X = np.asarray(features, np.float64)
    y = np.asarray(correct, np.float64)
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd

    def nll(w):
        z = w[0] + Z @ w[1:]
        p = 1 / (1 + np.exp(-z))
        loss = np.mean(np.logaddexp(0, z) - y * z) + l2 * np.sum(w[1:] ** 2)
        g = np.concatenate([[np.mean(p - y)], Z.T @ (p - y) / len(y) + 2 * l2 * w[1:]])
        return loss, g

    bounds = None
    if signs is not None:
        bounds = [(None, None)] + [(0, None) if s > 0 else (None, 0) if s < 0 else (None, None) for s in signs]
    w = minimize(nll, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds).x
    wr = w[1:] / sd
    return [float(w[0] - np.sum(wr * mu)), *map(float, wr)]


def fit_platt(logits: np.ndarray, labels: np.ndarray, l2: float = 1e-3) -> dict[str, Any]:
    """p = sigmoid(a * logit + b), fitted on the log-loss with Platt's target smoothing (labels
    1 -> (n+ + 1)/(n+ + 2), 0 -> 1/(n- + 2)), which keeps a and b finite on separable data."""
    from scipy.optimize import minimize

    x = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    npos, nneg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0.5, (npos + 1) / (npos + 2), 1 / (nneg + 2))

    def loss(ab):
        z = ab[0] * x + ab[1]
        # -[t log s(z) + (1-t) log(1-s(z))] = logaddexp(0, z) - t z, stable for any z
        val = np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * l2 * ab[0] ** 2
        s = 0.5 * (1 + np.tanh(0.5 * z))
        return val, np.array([np.sum((s - t) * x) + l2 * ab[0], np.sum(s - t)])

    scale = 1.0 / max(np.std(x), 1e-6)
    res = minimize(loss, np.array([scale, -scale * np.mean(x)]), jac=True, method="L-BFGS-B")
    return {"kind": "platt", "a": float(res.x[0]), "b": float(res.x[1]), "n": int(len(y))}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(z, np.float64)))


def fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Isotonic regression (pool adjacent violators) of the labels on the logit; the step function
    is stored as knots (block centres) and interpolated linearly between them."""
    order = np.argsort(logits, kind="stable")
    x = np.asarray(logits, np.float64)[order]
    y = np.asarray(labels, np.float64)[order]
    vals, wts, xs = [], [], []
    for xi, yi in zip(x, y):
        vals.append(yi), wts.append(1.0), xs.append([xi])
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            v, w = vals.pop(), wts.pop()
            xx = xs.pop()
            vals[-1] = (vals[-1] * wts[-1] + v * w) / (wts[-1] + w)
            wts[-1] += w
            xs[-1] += xx
    kx = np.array([np.mean(b) for b in xs])
    ky = np.array(vals)
    # keep the extremes away from exactly 0/1: a handful of held-out classes cannot prove certainty
    n = len(y)
    ky = np.clip(ky, 0.5 / n, 1 - 0.5 / n)
    return {"kind": "isotonic", "x": torch.tensor(kx), "y": torch.tensor(ky), "n": int(n)}


def apply_calibration(cal: dict[str, Any] | None, logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    if cal is None:
        return _sigmoid(x)
    if cal["kind"] == "platt":
        return _sigmoid(cal["a"] * x + cal["b"])
    if cal["kind"] == "isotonic":
        kx, ky = np.asarray(cal["x"], np.float64), np.asarray(cal["y"], np.float64)
        return np.interp(x, kx, ky)
    raise InputError(f"unknown calibration {cal['kind']!r}")


def fit_score_calibration(logits: np.ndarray, labels: np.ndarray, min_isotonic: int = 300) -> dict[str, Any]:
    labels = np.asarray(labels)
    if len(labels) >= min_isotonic and 0 < labels.sum() < len(labels):
        return fit_isotonic(logits, labels)
    return fit_platt(logits, labels)


def auroc(score: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both kinds."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    r = rankdata(score)
    npos, nneg = y.sum(), (~y).sum()
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: |mean label - mean probability| per equal-width probability bin, weighted by the bin's share."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(y[idx == b].mean() - p[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))
