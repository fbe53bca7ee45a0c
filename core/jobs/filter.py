"""Job ``filter``: keep or reject particles by a per-particle pose-uncertainty metric that RELION,
cryoSPARC or cryolens wrote (``core.pose.uncertainty``): the most certain share, a bound, a cut
between two modes of this data set, or equal-count sets from most to least certain."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryolensError
from ..particles import ParticleSet
from ..pose.uncertainty import (KNOWN_NAMES, auto_cut, certainty_bins, choose_metric, describe, quantile_cut,
                               threshold_cut)
from ..selection import histogram_figure
from .base import Input, JobContext, JobResult, JobSpec, Output, Param, register

MODES = ("quantile", "threshold", "auto", "bins")


def _check(params: dict[str, Any], values: np.ndarray, label: str, source: str) -> None:
    """One-line errors for what a mode cannot do with these values."""
    finite = values[np.isfinite(values)]
    mode = params["mode"]
    if mode in ("auto", "bins") and len(finite) < 2:
        raise CryolensError(f"--mode {mode} needs at least 2 particles with a value of {label}, "
                            f"{source} has {len(finite)}")
    if mode == "bins" and params["bins"] > len(finite):
        raise CryolensError(f"--bins {params['bins']}: more sets than the {len(finite)} particles with a value of "
                            f"{label} in {source}")
    if mode == "threshold":
        bound, lo, hi = params["bound"], float(finite.min()), float(finite.max())
        if bound is None:
            raise CryolensError(f"--mode threshold needs --bound (a value of {label}, between {lo:.6g} and {hi:.6g} "
                                f"in {source})")
        if not lo <= bound <= hi:
            raise CryolensError(f"--bound {bound:g} is outside the values of {label} in {source} "
                                f"[{lo:.6g}, {hi:.6g}]: it would keep every particle or none")


def run(inputs: dict[str, Any], params: dict[str, Any], ctx: JobContext) -> JobResult:
    ps: ParticleSet = inputs["particles"]
    source = ps.source or "the particles"
    choice = choose_metric(ps, params["metric"], params["direction"])
    metric, label, values = choice.metric, choice.label, choice.values
    for line in choice.notes:
        ctx.log(f"filter: {line}")
    _check(params, values, label, source)
    finite = np.isfinite(values)
    missing = int((~finite).sum())
    mode = params["mode"]
    cut: float | None = None
    if mode == "bins":
        masks, edges = certainty_bins(values, metric, params["bins"])
        sets = {f"particles_bin{k}": m for k, m in enumerate(masks, start=1)}
        why = f"{params['bins']} equal-count sets of {label}, most certain first (particles_bin1)"
    else:
        if mode == "quantile":
            keep, cut, why = quantile_cut(values, metric, params["keep"], label)
        elif mode == "threshold":
            keep, cut, why = threshold_cut(values, metric, params["bound"], label)
        else:
            keep, cut, why = auto_cut(values, metric, label)
        sets = {"particles": keep}
        edges = [] if cut is None else [cut]
    kept_any = np.logical_or.reduce(list(sets.values()))
    sets["rejected"] = ~kept_any

    res = JobResult()
    rows = []
    for name, mask in sets.items():
        write = name != "rejected" or (params["rejected"] and mask.any())
        if write:
            res.particles[name] = ps.subset(mask)
        rows.append({"output": name, "particles": int(mask.sum()), "written": "yes" if write else "no",
                     "metric": label, "direction": metric.direction, "mode": mode,
                     "cut": np.nan if cut is None else cut, **describe(values, mask, metric)})
    res.tables["filter_summary"] = pd.DataFrame(rows)
    title = f"filter ({mode}): kept {int(kept_any.sum())} of {len(ps)} particles"
    res.figures["filter_histogram"] = histogram_figure(values[finite], edges, label, title)
    res.summary.append(f"filter: {mode}: {why}")
    if missing:
        res.summary.append(f"  {missing} particle(s) have no value of {label} (empty or NaN): rejected")
    for row in rows:
        sigma = row.get("sigma_ang", np.nan)
        extra = f"; refine with --sigma_ang {sigma:.2f}" if np.isfinite(sigma) and row["output"] != "rejected" else ""
        span = (f" ({label} {row['most_certain']:.6g} (most certain) .. {row['least_certain']:.6g}, median "
                f"{row['median']:.6g})" if np.isfinite(row["median"]) else "")
        note = "" if row["written"] == "yes" else " (not written)"
        res.summary.append(f"  {row['output']}: {row['particles']} of {len(ps)} particles{span}{extra}{note}")
    if not metric.degrees and mode == "bins":
        res.summary.append(f"  no --sigma_ang applies: {label} is not an angular uncertainty in degrees")
    return res


SPEC = register(JobSpec(
    name="filter",
    summary="Keep or reject particles by their pose uncertainty (rlnMaxValueProbDistribution, "
            "rlnNrOfSignificantSamples, cryoSPARC alignments3D/error, cryolens's own), after any 3D "
            "refinement or classification",
    inputs=(Input("particles", "particles", "particles with a pose-uncertainty column (e.g. a Refine3D or "
                                            "Class3D run_data.star, a cryoSPARC refinement's particles)"),),
    params=(
        Param("metric", str, "auto", f"the uncertainty column: auto (the first present of {KNOWN_NAMES}) or "
              "any numeric column, with --direction", metavar="LABEL"),
        Param("direction", str, "auto", "which values are more certain: higher or lower (auto: the known "
              "metric's own; needed for another column)", choices=("auto", "higher", "lower")),
        Param("mode", str, "quantile", "quantile (keep the most certain share), threshold (keep those at least "
              "as certain as --bound), auto (a cut between two modes of this data set, or keep all), bins "
              "(equal-count sets particles_bin1..N, most certain first)", choices=MODES),
        Param("keep", float, 0.75, "share of the particles to keep, most certain first (0.75: the cryo-forum "
              "paper's Q3 cut)", min=0, max=1, min_exclusive=True, only_with=("mode", ("quantile",))),
        Param("bound", float, None, "the cut in the metric's own units; particles at least this certain are kept",
              unset="none (needed with mode threshold)", only_with=("mode", ("threshold",))),
        Param("bins", int, 4, "number of equal-count sets, most to least certain", min=2,
              only_with=("mode", ("bins",))),
        Param("rejected", bool, False, "also write the particles not kept, those without a value included "
              "(rejected.star)"),
    ),
    outputs=(Output("particles", "particles", "the particles kept (with mode bins: particles_bin1..N, most "
                                              "certain first)"),
             Output("rejected", "particles", "the particles not kept (with --rejected yes)"),
             Output("filter_summary", "table", "per output: particles, metric, direction, mode, cut, the range and "
                                               "median of the metric, and sigma_ang for an angular metric"),
             Output("filter_histogram", "figure", "distribution of the metric with the cut(s)")),
    run=run,
))
