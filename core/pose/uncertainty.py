"""Per-particle pose uncertainty: the metrics RELION, cryoSPARC and cryolens write, which way each
points, and the cuts the ``filter`` job makes on them.

Known metrics, in the order ``--metric auto`` prefers them (the first one present is used):

1. ``cryolensPoseUncertaintyDeg`` (lower = more certain): cryolens's own angular uncertainty of
   the pose in degrees, the only one that says how far off a pose may be, so it gives a
   ``--sigma_ang`` to refine with;
2. ``rlnMaxValueProbDistribution`` (higher): RELION's largest value of the particle's normalised
   probability over orientations (and classes); continuous, written by every RELION refinement
   and classification;
3. ``rlnNrOfSignificantSamples`` (lower): how many orientations (and classes) RELION found with a
   significant probability; a count, so coarser than 2;
4. ``alignments3D/error`` (lower): cryoSPARC's per-particle alignment error, the residual of the
   image against the reference projection at its pose (in a real homogeneous refinement it equals
   ``alignments3D/resid_pow``). It measures the fit, not the spread of poses, and grows with the
   image's own power (r = 0.99 with ``alignments3D/image_pow`` there), so it comes last.

A metric is also found under a prefix, as ``cryolens convert`` carries it into the other
program's file (``rln/rlnMaxValueProbDistribution`` in a .cs, ``cryosparc/alignments3D/error``
in a STAR file). Any other numeric column can be named, with the direction given.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CryolensError
from ..particles import ParticleSet
from ..selection import numeric_column, resolve_column, value_window
from . import POSE_UNCERTAINTY_DEG
from .modes import MIN_SEPARATION, dequantize, two_modes

DIRECTIONS = ("higher", "lower")
MIN_AUTO_KEEP = 0.5  # auto never keeps less than this share: the most certain minority can be junk


@dataclass(frozen=True)
class Metric:
    """A per-particle metric: its column label, which values are more certain, what it is, whether
    ``auto`` looks for modes in its logarithm (positive and right-skewed), and whether it is an
    angular uncertainty in degrees (then a ``--sigma_ang`` applies)."""

    name: str
    direction: str  # "higher" or "lower": which values are more certain
    meaning: str
    log: bool = False
    degrees: bool = False

    def certainty(self, values: np.ndarray) -> np.ndarray:
        """The values turned so that larger is more certain."""
        return values if self.direction == "higher" else -values

    def more_certain(self, values: np.ndarray, cut: float) -> np.ndarray:
        """Particles at least as certain as ``cut`` (NaN: never)."""
        return values >= cut if self.direction == "higher" else values <= cut

    @property
    def as_certain(self) -> str:
        return ">=" if self.direction == "higher" else "<="


KNOWN = (
    Metric(POSE_UNCERTAINTY_DEG, "lower", "cryolens's angular uncertainty of the pose, in degrees",
           log=True, degrees=True),
    Metric("rlnMaxValueProbDistribution", "higher",
           "RELION's largest value of the particle's normalised probability over orientations (and classes)"),
    Metric("rlnNrOfSignificantSamples", "lower",
           "the number of orientations (and classes) RELION found with a significant probability", log=True),
    Metric("alignments3D/error", "lower", "cryoSPARC's alignment error of the particle at its pose (a fit "
           "residual: it also grows with the image's own power)", log=True),
)
KNOWN_NAMES = ", ".join(m.name for m in KNOWN)


@dataclass
class MetricChoice:
    """The metric a run uses: the table column, the file's label for it, the metric (direction
    included) and its values (float64, NaN where a particle has none), and why it was chosen."""

    column: str
    label: str
    metric: Metric
    values: np.ndarray
    notes: list[str] = field(default_factory=list)


def _column_of(ps: ParticleSet, name: str) -> str | None:
    """The column holding ``name``: itself, or carried under a prefix (``rln/<name>``)."""
    cols = [str(c) for c in ps.table.columns]
    if name in cols:
        return name
    return next((c for c in cols if c.endswith("/" + name)), None)


def known_metric(name: str) -> Metric | None:
    """The known metric a column name stands for (also under a prefix), or None."""
    return next((m for m in KNOWN if name == m.name or name.endswith("/" + m.name)), None)


def choose_metric(ps: ParticleSet, name: str, direction: str = "auto") -> MetricChoice:
    """The metric ``--metric`` names in ``ps`` (``auto``: the first known one present that holds a
    number), with the direction ``--direction`` gives (``auto``: the known metric's own)."""
    notes: list[str] = []
    if name in ("", "auto"):
        empty = []
        for m in KNOWN:
            col = _column_of(ps, m.name)
            if col is None:
                continue
            values = _numbers(ps, col)
            if not np.isfinite(values).any():
                empty.append(ps.label(col))
                notes.append(f"{ps.label(col)} is present but holds no number: skipped")
                continue
            notes.insert(0, f"metric {ps.label(col)}: auto, the first known metric present (in the order "
                            f"{KNOWN_NAMES})")
            return _with_direction(MetricChoice(col, ps.label(col), m, values, notes), direction)
        held = f"; {', '.join(empty)} hold(s) no number" if empty else ""
        raise CryolensError(f"no pose-uncertainty metric: looked for {KNOWN_NAMES}{held} (name another numeric "
                            "column with --metric LABEL --direction higher|lower)", ps.source)
    try:
        col = _column_of(ps, name) if known_metric(name) else None
        col = col or resolve_column(ps, name)
    except CryolensError as err:
        raise CryolensError(f"{err.message}; known metrics: {KNOWN_NAMES}", err.path) from None
    values = numeric_column(ps, col)
    m = known_metric(name) or known_metric(ps.label(col))
    if m is None:
        if direction not in DIRECTIONS:
            raise CryolensError(f"--metric {name} is not a metric cryolens knows ({KNOWN_NAMES}): say which values "
                                "are more certain with --direction higher or --direction lower")
        m = Metric(ps.label(col), direction, "a column named with --metric")
    notes.insert(0, f"metric {ps.label(col)}: given")
    return _with_direction(MetricChoice(col, ps.label(col), m, values, notes), direction)


def _numbers(ps: ParticleSet, col: str) -> np.ndarray:
    try:
        return numeric_column(ps, col)
    except CryolensError:
        return np.full(len(ps), np.nan)


def _with_direction(choice: MetricChoice, direction: str) -> MetricChoice:
    m = choice.metric
    if direction in DIRECTIONS and direction != m.direction:
        choice.notes.append(f"--direction {direction} overrides the known direction of {choice.label} "
                            f"({m.direction} = more certain)")
        choice.metric = replace(m, direction=direction)
    choice.notes.append(f"{choice.metric.direction} values are more certain: {choice.metric.meaning}")
    return choice


# -- cuts -----------------------------------------------------------------------------------------
def quantile_cut(values: np.ndarray, metric: Metric, keep: float, label: str) -> tuple[np.ndarray, float, str]:
    """(mask, cut, why): the most certain ``keep`` share of the particles with a value (equal
    values at the cut kept together, so a count may keep more: said in ``why``)."""
    if metric.direction == "higher":
        mask, cut, _ = value_window(values, None, None, 1.0 - keep, None)
    else:
        mask, _, cut = value_window(values, None, None, None, keep)
    why = f"the most certain {100 * keep:g}% of the particles: {label} {metric.as_certain} {cut:.6g}"
    n, kept = int(np.isfinite(values).sum()), int(mask.sum())
    if abs(kept - keep * n) >= 1:
        why += f" (equal values at the cut are kept together: {kept} particles, {100 * kept / n:.1f}%)"
    return mask, float(cut), why


def threshold_cut(values: np.ndarray, metric: Metric, bound: float, label: str) -> tuple[np.ndarray, float, str]:
    """(mask, cut, why): the particles at least as certain as ``bound``."""
    return metric.more_certain(values, bound), float(bound), f"{label} {metric.as_certain} {bound:.6g} (given)"


def auto_cut(values: np.ndarray, metric: Metric, label: str) -> tuple[np.ndarray, float | None, str]:
    """(mask, cut or None, why): the cut between the two modes of this data set's metric
    (``modes.two_modes`` on its logarithm for a positive, right-skewed metric; counts spread over
    their unit cell first), or every particle with a value when there is one mode, or when the
    more certain mode is a minority (``MIN_AUTO_KEEP``)."""
    finite = np.isfinite(values)
    x = dequantize(values[finite])
    use_log = metric.log and bool((x > 0).all())
    if use_log:
        x = np.log(x)
    back = np.exp if use_log else (lambda v: v)
    scale = f"log({label})" if use_log else label
    found = two_modes(x)
    if found.cut is None:
        return finite, None, (f"no second mode in {scale} ({found.why}): every particle with a value is kept "
                              "(--mode quantile or threshold cuts anyway)")
    cut = float(back(found.cut))
    kept = metric.more_certain(values, cut)
    share = kept.sum() / max(int(finite.sum()), 1)
    if share < MIN_AUTO_KEEP:
        return finite, None, (f"two modes in {scale}, but the more certain one ({metric.as_certain} {cut:.4g}) holds "
                              f"only {100 * share:.0f}% of the particles: a small, very certain group is often junk "
                              "with strong features (carbon edges, aggregates align confidently; on relion_refine "
                              "Class2D runs with known junk, bench/bench_filter_corpus.py, such a cut kept 80-100% "
                              "junk), so nothing is cut (--mode quantile or threshold cuts anyway)")
    lo, hi = (f"{float(back(mu)):.4g} ({100 * w:.0f}%)" for mu, w in zip(found.means, found.weights))
    why = (f"two modes in {scale}, at {lo} and {hi} (a two-component Gaussian mixture fitted by EM; "
           f"Ashman's D {found.separation:.1f} > {MIN_SEPARATION:g}; near the cut the data are "
           f"{found.dip:.2f} times as dense as near the thinner mode): cut at {cut:.4g}, the density minimum "
           f"between them; kept {label} {metric.as_certain} {cut:.4g}")
    return kept, cut, why


def certainty_bins(values: np.ndarray, metric: Metric, n: int) -> tuple[list[np.ndarray], list[float]]:
    """(masks, edges): the particles with a value in ``n`` equal-count sets, most certain first
    (equal values split by file order), and the values between neighbouring sets."""
    idx = np.flatnonzero(np.isfinite(values))
    order = idx[np.argsort(-metric.certainty(values[idx]), kind="stable")]
    parts = np.array_split(order, n)
    masks = []
    for part in parts:
        mask = np.zeros(len(values), dtype=bool)
        mask[part] = True
        masks.append(mask)
    edges = [0.5 * (values[a[-1]] + values[b[0]]) for a, b in zip(parts[:-1], parts[1:])]
    return masks, edges


def describe(values: np.ndarray, mask: np.ndarray, metric: Metric) -> dict[str, float]:
    """A set's most and least certain value and median (NaN when none has a value); for an
    angular uncertainty in degrees also ``sigma_ang``, the ``--sigma_ang`` to refine the set with:
    its median (RELION searches +/- 3 sigma_ang around each pose)."""
    chosen = values[mask & np.isfinite(values)]
    out = dict(most_certain=np.nan, least_certain=np.nan, median=np.nan)
    if len(chosen):
        ranked = chosen[np.argsort(-metric.certainty(chosen), kind="stable")]
        out.update(most_certain=float(ranked[0]), least_certain=float(ranked[-1]), median=float(np.median(chosen)))
    if metric.degrees:
        out["sigma_ang"] = out["median"]
    return out
