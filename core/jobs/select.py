"""Job ``select``: subsets of particles by class number, by a threshold or quantile on any numeric
column, or one particle set per value of a categorical column."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryolensError
from ..particles import ClassSet, ParticleSet
from ..selection import histogram_figure, numeric_column, parse_class_list, resolve_column, value_window
from .base import Input, JobContext, JobResult, JobSpec, Output, Param, register


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

    bounds = ("min_value", "max_value", "min_quantile", "max_quantile")
    if params["column"]:
        if all(params[k] is None for k in bounds):
            raise CryolensError("--column needs --min_value/--max_value or --min_quantile/--max_quantile")
        col = resolve_column(ps, params["column"])
        values = numeric_column(ps, col)
        m, lo, hi = value_window(values, *(params[k] for k in bounds))
        keep &= m
        why.append(f"{ps.label(col)} in [{'-inf' if lo is None else f'{lo:.6g}'}, "
                   f"{'inf' if hi is None else f'{hi:.6g}'}]")
        res.figures["select_histogram"] = histogram_figure(values[np.isfinite(values)], (lo, hi), ps.label(col),
                                                           f"select: kept {int(m.sum())} of {len(ps)} particles")
    elif any(params[k] is not None for k in bounds):
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
        if params["rejected"]:
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
        Param("classes", str, "", "class numbers to keep, e.g. 1,3,5-7 (1-based, as RELION shows them)",
              metavar="LIST", unset="every class"),
        Param("column", str, "", "numeric column to threshold, e.g. rlnMaxValueProbDistribution", metavar="LABEL",
              unset="no threshold"),
        Param("min_value", float, None, "keep particles with column >= this", unset="no bound"),
        Param("max_value", float, None, "keep particles with column <= this", unset="no bound"),
        Param("min_quantile", float, None, "keep particles at or above this quantile of the column", min=0, max=1,
              unset="no bound"),
        Param("max_quantile", float, None, "keep particles at or below this quantile of the column", min=0, max=1,
              unset="no bound"),
        Param("split_by", str, "", "write one particle set per value of this column (e.g. rlnOpticsGroup)",
              metavar="LABEL", unset="no split"),
        Param("max_splits", int, 100, "refuse to split into more sets than this", min=1, only_with=("split_by", ())),
        Param("rejected", bool, False, "also write the particles that were not selected (rejected.star)",
              aliases=("write_rejected",)),
    ),
    outputs=(Output("particles", "particles", "selected particles (or one set per value with --split_by)"),
             Output("rejected", "particles", "particles not selected (with --rejected yes)"),
             Output("class_averages", "classes", "the selected classes (when selecting 2D classes)"),
             Output("selection", "table", "how many particles each output holds"),
             Output("select_histogram", "figure", "distribution of the thresholded column with the cut")),
    run=run,
))
