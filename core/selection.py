"""Choosing particles: class lists as RELION numbers them, a column by its file label, a value
window by thresholds and quantiles, and the histogram that shows the cut (the ``select`` and
``filter`` jobs)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .errors import CryolensError
from .particles import ParticleSet


def parse_class_list(text: str) -> list[int]:
    """'1,3, 5-7' -> [1, 3, 5, 6, 7] (1-based class numbers, as RELION shows them)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text or ""))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CryolensError(f"parameter --classes: cannot read {part!r} (use e.g. 1,3,5-7)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise CryolensError(f"parameter --classes: empty range {part!r}")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def resolve_column(ps: ParticleSet, name: str) -> str:
    """A column by its table name or by the source file's label (rlnDefocusU -> defocus_u)."""
    if name in ps.table.columns:
        return name
    for field, label in ps.meta.get("labels", {}).items():
        if label == name and field in ps.table.columns:
            return field
    numeric = [c for c in ps.table.columns if not c.startswith("~") and pd.api.types.is_numeric_dtype(ps.table[c])]
    raise CryolensError(f"no column {name!r} in {ps.source or 'the particles'} "
                        f"(numeric columns: {', '.join(ps.label(c) for c in numeric)})")


def numeric_column(ps: ParticleSet, col: str) -> np.ndarray:
    """The column as float64 (NaN where a value is not a number); CryolensError naming the file
    if none is."""
    values = pd.to_numeric(ps.table[col], errors="coerce").to_numpy(np.float64)
    if np.isnan(values).all():
        raise CryolensError(f"column {ps.label(col)} holds no number (its {len(values)} values are empty, NaN "
                            "or text)", ps.source)
    return values


def value_window(values: np.ndarray, lo: float | None, hi: float | None, qlo: float | None,
                 qhi: float | None) -> tuple[np.ndarray, float | None, float | None]:
    """(mask, lo, hi): the finite values inside [lo, hi], each bound tightened to its quantile of
    the finite values when one is given (None: no bound on that side)."""
    finite = np.isfinite(values)
    if qlo is not None:
        lo = max(lo if lo is not None else -np.inf, float(np.quantile(values[finite], qlo)))
    if qhi is not None:
        hi = min(hi if hi is not None else np.inf, float(np.quantile(values[finite], qhi)))
    mask = finite.copy()
    if lo is not None:
        mask &= values >= lo
    if hi is not None:
        mask &= values <= hi
    return mask, lo, hi


def histogram_figure(values: np.ndarray, cuts, label: str, title: str):
    """A column's distribution with its cuts drawn (None: no cut on that side); a LogFile node in
    RELION. ``title`` says what was kept, e.g. 'select: kept 120 of 200 particles'."""
    from .figures import pyplot

    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    ax.hist(values, bins=min(100, max(10, len(values) // 20)), color="0.6")
    for cut in cuts:
        if cut is not None and np.isfinite(cut):
            ax.axvline(cut, color="C3", lw=1.5)
    ax.set_xlabel(label)
    ax.set_ylabel("particles")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
