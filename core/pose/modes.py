"""One mode or two in a 1-D sample, and the cut between two: the ``filter`` job's ``--mode auto``.

A two-component Gaussian mixture is fitted by expectation-maximisation (Dempster, Laird & Rubin
1977). The sample is called bimodal only when all of these hold, and the cut is then the lowest
point of the fitted density between its two peaks:

* each component holds at least ``MIN_MODE`` values;
* the fitted density has two peaks (a mixture of two Gaussians can have one: a shoulder);
* the components are separated: Ashman's D = |mu1 - mu2| * sqrt(2 / (s1^2 + s2^2)) > 2, the
  criterion for a clean separation of two Gaussians (Ashman, Bird & Zepf 1994, AJ 108, 2348);
* the data themselves dip there: near the cut they are at most ``MAX_DIP`` times as dense as near
  the thinner peak (counted in windows of an eighth of the distance between the peaks). A flat
  sample, or a pile of equal values beside a broad mode, is fitted by two components too; this
  keeps it one mode.

Callers spread integer values (a count) evenly over their unit cell first (``dequantize``), so a
pile of equal counts is not taken for a mode of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_MODE = 10  # values a mode needs
MIN_SEPARATION = 2.0  # Ashman's D
MAX_DIP = 0.5  # data density near the cut, relative to the thinner peak
FIT_SIZE = 50_000  # the mixture is fitted to at most this many values: evenly spaced in sorted order
_GRID = 2048


@dataclass(frozen=True)
class Modes:
    """The fit and the verdict. ``cut`` is None when the sample has one mode; ``why`` says why not
    (empty when two modes were found)."""

    n: int
    weights: np.ndarray | None = None
    means: np.ndarray | None = None
    sds: np.ndarray | None = None
    separation: float = float("nan")  # Ashman's D
    dip: float = float("nan")  # data density near the cut / near the thinner peak
    cut: float | None = None
    why: str = ""


def dequantize(x: np.ndarray) -> np.ndarray:
    """Integer values spread evenly over (v - 1/2, v + 1/2), k equal values at the k midpoints of
    k equal parts of that cell (deterministic); other samples unchanged."""
    x = np.asarray(x, np.float64)
    if not len(x) or not np.all(x == np.round(x)):
        return x
    order = np.argsort(x, kind="stable")
    s = x[order]
    first = np.searchsorted(s, s, side="left")
    count = np.searchsorted(s, s, side="right") - first
    out = np.empty_like(x)
    out[order] = s - 0.5 + (np.arange(len(s)) - first + 0.5) / count
    return out


def fit_mixture(x: np.ndarray, iters: int = 500, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, variances) of two Gaussians fitted by EM, started from the lower and the
    upper half of the sorted sample; variances floored at 1e-6 of the sample's."""
    xs = np.sort(np.asarray(x, np.float64))
    n = len(xs)
    floor = 1e-6 * xs.var() + 1e-300
    halves = (xs[: n // 2], xs[n // 2:])
    w = np.array([len(h) / n for h in halves])
    mu = np.array([h.mean() for h in halves])
    var = np.maximum([h.var() for h in halves], floor)
    previous = -np.inf
    for _ in range(iters):
        logp = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (xs[:, None] - mu) ** 2 / var
        top = logp.max(axis=1, keepdims=True)
        resp = np.exp(logp - top)
        total = resp.sum(axis=1, keepdims=True)
        loglik = float((top[:, 0] + np.log(total[:, 0])).sum())
        resp /= total
        nk = np.maximum(resp.sum(axis=0), 1e-300)
        w = nk / n
        mu = (resp * xs[:, None]).sum(axis=0) / nk
        var = np.maximum((resp * (xs[:, None] - mu) ** 2).sum(axis=0) / nk, floor)
        if loglik - previous < tol * n:
            break
        previous = loglik
    order = np.argsort(mu)
    return w[order], mu[order], var[order]


def _peaks(grid: np.ndarray, dens: np.ndarray) -> np.ndarray:
    """Indices of the local maxima of a density on a grid (ends included)."""
    inner = np.flatnonzero((dens[1:-1] > dens[:-2]) & (dens[1:-1] >= dens[2:])) + 1
    left = [0] if dens[0] > dens[1] else []
    right = [len(dens) - 1] if dens[-1] > dens[-2] else []
    return np.array(left + inner.tolist() + right, dtype=int)


def _count_near(sorted_x: np.ndarray, centre: float, half: float) -> int:
    return int(np.searchsorted(sorted_x, centre + half, "right") - np.searchsorted(sorted_x, centre - half, "left"))


def two_modes(x: np.ndarray) -> Modes:
    """Whether the finite values of ``x`` form two modes, and where to cut between them."""
    xs = np.sort(np.asarray(x, np.float64)[np.isfinite(x)])
    n = len(xs)
    if n < 2 * MIN_MODE:
        return Modes(n, why=f"{n} values are too few to show two modes; each needs at least {MIN_MODE}")
    if xs[0] == xs[-1]:
        return Modes(n, why="all values are equal")
    fit = xs if n <= FIT_SIZE else xs[np.linspace(0, n - 1, FIT_SIZE).round().astype(int)]
    w, mu, var = fit_mixture(fit)
    sd = np.sqrt(var)
    sep = float(abs(mu[1] - mu[0]) * np.sqrt(2.0 / var.sum()))
    grid = np.linspace(xs[0], xs[-1], _GRID)
    dens = (w / np.sqrt(2 * np.pi * var) * np.exp(-0.5 * (grid[:, None] - mu) ** 2 / var)).sum(axis=1)
    peaks = _peaks(grid, dens)
    found = dict(n=n, weights=w, means=mu, sds=sd, separation=sep)
    if w.min() * n < MIN_MODE:
        return Modes(**found, why=f"the smaller component holds {w.min() * n:.0f} values (a mode needs {MIN_MODE})")
    if len(peaks) < 2:
        return Modes(**found, why="the fitted mixture has one peak")
    if sep <= MIN_SEPARATION:
        return Modes(**found, why=f"the components overlap (Ashman's D {sep:.2f} <= {MIN_SEPARATION:g})")
    a, b = peaks[0], peaks[-1]
    valley = a + int(np.argmin(dens[a:b + 1]))
    cut = float(grid[valley])
    half = (grid[b] - grid[a]) / 8
    thinner = min(_count_near(xs, grid[a], half), _count_near(xs, grid[b], half))
    dip = _count_near(xs, cut, half) / max(thinner, 1)
    found["dip"] = dip
    if dip > MAX_DIP:
        return Modes(**found, why=f"the data do not dip between the peaks (density at the cut {dip:.2f} of the "
                                  f"thinner peak's, more than {MAX_DIP:g})")
    return Modes(**found, cut=cut)
