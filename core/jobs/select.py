"""Job ``select``: subsets of particles by class number, by a threshold or quantile on any numeric
column, or one particle set per value of a categorical column."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryolensError
from ..particles import ClassSet, ParticleSet
from .base import Input, JobContext, JobResult, JobSpec, Output, Param, register


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


def _numeric(ps: ParticleSet, col: str) -> np.ndarray:
    values = pd.to_numeric(ps.table[col], errors="coerce").to_numpy(np.float64)
    if np.isnan(values).all():
        raise CryolensError(f"column {ps.label(col)} is not numeric")
    return values


def _histogram(values: np.ndarray, lo, hi, label: str, kept: int, total: int):
    """The thresholded column's distribution with the cut drawn (a LogFile node in RELION)."""
    from ..figures import pyplot

    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    ax.hist(values, bins=min(100, max(10, len(values) // 20)), color="0.6")
    for cut in (lo, hi):
        if cut is not None and np.isfinite(cut):
            ax.axvline(cut, color="C3", lw=1.5)
    ax.set_xlabel(label)
    ax.set_ylabel("particles")
    ax.set_title(f"select: kept {kept} of {total} particles", fontsize=9)
    fig.tight_layout()
    return fig


def run(inputs: dict[str, Any], params: dict[str, Any], ctx: JobContext) -> JobResult:
    classes: ClassSet | None = inputs.get("classes")
    ps: ParticleSet | None = inputs.get("particles")
    if ps is None and classes is not None:
        ps = classes.particles
    if ps is None:
        raise CryolensError("select needs particles (a particle STAR/.cs, or 2D classes with their particles)")
    res = JobResult()
    keep = np.ones(len(ps), dtype=bool)
    why: list[str] = []

    wanted = parse_class_list(params["classes"])
    if wanted:
        ps.require("class_id")
        keep &= ps.table["class_id"].isin(wanted).to_numpy()
        why.append(f"class in {wanted}")
        if classes is not None:
            known = set(classes.class_ids.tolist())
            missing = sorted(set(wanted) - known)
            if missing:
                raise CryolensError(f"class(es) {missing} do not exist (classes are 1..{max(known)})")
            sel = [int(k in wanted) for k in classes.class_ids]
            res.class_selection["class_averages"] = sel
            res.classes["class_averages"] = classes.subset(wanted)

    if params["column"]:
        col = resolve_column(ps, params["column"])
        values = _numeric(ps, col)
        finite = np.isfinite(values)
        lo, hi = params["min_value"], params["max_value"]
        qlo, qhi = params["min_quantile"], params["max_quantile"]
        if qlo is not None:
            lo = max(lo if lo is not None else -np.inf, float(np.quantile(values[finite], qlo)))
        if qhi is not None:
            hi = min(hi if hi is not None else np.inf, float(np.quantile(values[finite], qhi)))
        if lo is None and hi is None:
            raise CryolensError("--column needs --min_value/--max_value or --min_quantile/--max_quantile")
        m = finite.copy()
        if lo is not None:
            m &= values >= lo
        if hi is not None:
            m &= values <= hi
        keep &= m
        why.append(f"{ps.label(col)} in [{'-inf' if lo is None else f'{lo:.6g}'}, "
                   f"{'inf' if hi is None else f'{hi:.6g}'}]")
        res.figures["select_histogram"] = _histogram(values[finite], lo, hi, ps.label(col), int(m.sum()), len(ps))
    elif any(params[k] is not None for k in ("min_value", "max_value", "min_quantile", "max_quantile")):
        raise CryolensError("a threshold or quantile was given without --column")

    ctx.check_abort()
    if params["split_by"]:
        col = resolve_column(ps, params["split_by"])
        base = ps.subset(keep)
        values = base.table[col]
        if values.nunique() > params["max_splits"]:
            raise CryolensError(f"--split_by {params['split_by']}: {values.nunique()} distinct values, more than "
                                f"--max_splits {params['max_splits']}")
        for v in sorted(values.unique(), key=lambda x: (str(type(x)), x)):
            tag = re.sub(r"[^0-9A-Za-z_.-]+", "_", str(v)).strip("_") or "empty"
            res.particles[f"particles_{tag}"] = base.subset((values == v).to_numpy())
        why.append(f"split by {ps.label(col)} into {len(res.particles)} sets")
    elif not why:
        raise CryolensError("nothing to select by: give --classes, --column with a threshold, or --split_by")
    else:
        if not keep.any():
            raise CryolensError(f"no particles selected ({'; '.join(why)}): nothing to write")
        res.particles["particles"] = ps.subset(keep)
        if params["write_rejected"]:
            res.particles["rejected"] = ps.subset(~keep)

    counts = {name: len(s) for name, s in res.particles.items()}
    res.tables["selection"] = pd.DataFrame({"output": list(counts), "particles": list(counts.values())})
    res.summary.append(f"select: {'; '.join(why)}")
    res.summary += [f"  {name}: {n} of {len(ps)} particles" for name, n in counts.items()]
    return res


SPEC = register(JobSpec(
    name="select",
    summary="Subsets of particles by class number, by a threshold/quantile on any numeric column, "
            "or split by a categorical column",
    inputs=(Input("particles", "particles", "particles to select from", required=False),
            Input("classes", "classes", "2D classes with their particles (Class2D output)", required=False)),
    one_of=("particles", "classes"),
    params=(
        Param("classes", str, "", "class numbers to keep, e.g. 1,3,5-7 (1-based, as RELION shows them)"),
        Param("column", str, "", "numeric column to threshold, e.g. rlnMaxValueProbDistribution"),
        Param("min_value", float, None, "keep particles with column >= this"),
        Param("max_value", float, None, "keep particles with column <= this"),
        Param("min_quantile", float, None, "keep particles at or above this quantile of the column", min=0, max=1),
        Param("max_quantile", float, None, "keep particles at or below this quantile of the column", min=0, max=1),
        Param("split_by", str, "", "write one particle set per value of this column (e.g. rlnOpticsGroup)"),
        Param("max_splits", int, 100, "refuse to split into more sets than this", min=1),
        Param("write_rejected", bool, False, "also write the particles that were not selected"),
    ),
    outputs=(Output("particles", "particles", "selected particles (or one set per value with --split_by)"),
             Output("rejected", "particles", "particles not selected (with --write_rejected)"),
             Output("class_averages", "classes", "the selected classes (when selecting 2D classes)"),
             Output("selection", "table", "how many particles each output holds"),
             Output("select_histogram", "figure", "distribution of the thresholded column with the cut")),
    run=run,
))
