"""Job ``rank``: a calibrated quality score per 2D class, a selection, and its particles.

Input: a Class2D result (RELION iteration or cryoSPARC class averages with their particles), or a
bare stack of class averages (images only: the score then rests on image evidence alone).
The score is the probability that the class is good (``core.rank``); the selection keeps the
classes at or above a cut that is absolute (``threshold``), a share of the classes (``fraction``)
or derived from this data set's scores (``auto``, see ``core.rank.threshold``).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryolensError
from ..particles import ClassSet
from .base import CLASS_AVERAGE_PARAMS, Input, JobContext, JobResult, JobSpec, Output, Param, register, with_pixel_size

SCORE = "rlnClassScore"
PREDICTED = "rlnPredictedClassScore"


def run(inputs: dict[str, Any], params: dict[str, Any], ctx: JobContext) -> JobResult:
    from ..rank.features import class_counts
    from ..rank.figures import gallery_figure
    from ..rank.threshold import score_order, select_classes

    cs: ClassSet = with_pixel_size(inputs["classes"], params)
    if len(cs) == 0:
        raise CryolensError("no classes to rank", cs.source)
    if cs.images is None:
        raise CryolensError("ranking needs the class average images: the class stack was not found "
                            "(give --project-dir, or the stack next to the .cs)", cs.source)
    model = params["model"]
    ctx.report(0, 1)
    ctx.check_abort()
    t0 = time.perf_counter()
    sc = model.score(cs, device=ctx.device, should_stop=ctx.should_stop)
    seconds = time.perf_counter() - t0
    ctx.check_abort()
    prob, counts = sc.probability, class_counts(cs)
    res_col = cs.table["resolution"].to_numpy(np.float64) if "resolution" in cs.table else np.full(len(cs), np.nan)
    keep, cut, reason = select_classes(prob, counts, params["select"], params["threshold"], params["fraction"],
                                       params["recall"], params["min_prob"], logit=sc.logit)
    rank = np.empty(len(cs), np.int64)
    rank[score_order(prob, sc.logit)] = np.arange(1, len(cs) + 1)

    scored = replace(cs, table=cs.table.assign(**{SCORE: prob, PREDICTED: prob}))
    res = JobResult()
    res.classes["rank_model"] = scored
    res.class_selection["class_averages"] = [int(k) for k in keep]
    res.tables["rank_scores"] = pd.DataFrame({
        "class_id": cs.class_ids, "score": prob, "rank": rank, "selected": keep.astype(int),
        "n_particles": counts, "resolution": res_col, "logit": sc.logit, "evidence": sc.mode,
        "scored_by": sc.source})
    mode = "class statistics + images" if sc.mode == "stats" else "images only (no class statistics in the input)"
    res.summary.append(f"rank: {len(cs)} classes scored from {mode} in {seconds:.2f} s "
                       f"({len(cs) / max(seconds, 1e-9):.0f} classes/s; model {model.info.get('name', 'user model')})")
    res.summary += [f"rank: {note}" for note in sc.notes]
    res.summary.append(f"rank: {reason}")
    kept_ids = cs.class_ids[keep]
    if keep.any():
        res.classes["class_averages"] = scored.subset(kept_ids)
    if cs.particles is not None and cs.particles.has("class_id"):
        members = cs.particles.table["class_id"].isin(kept_ids).to_numpy()
        if members.any():
            res.particles["particles"] = cs.particles.subset(members)
        if params["rejected"] and (~members).any():
            res.particles["rejected"] = cs.particles.subset(~members)
        res.summary.append(f"rank: kept {int(keep.sum())} of {len(cs)} classes, {int(members.sum())} of "
                           f"{len(members)} particles")
        if not members.any():
            res.summary.append("rank: no particles selected: particles.star is not written")
    else:
        res.summary.append(f"rank: kept {int(keep.sum())} of {len(cs)} classes"
                           + (f" ({int(np.nansum(counts[keep]))} of {int(np.nansum(counts))} particles by the "
                              "class counts)" if np.isfinite(counts).any() else "")
                           + "; the input has no particles (a bare stack or classes without their particle "
                             "file): only the class selection and scores are written")
    if params["gallery"]:
        title = f"rank: {int(keep.sum())} of {len(cs)} classes kept (cut {cut:.2f}, {params['select']}; evidence: {mode})"
        res.figures["rank_gallery"] = gallery_figure(cs.images, cs.class_ids, prob, counts, res_col, cut, title)
    ctx.report(1, 1)
    return res


SPEC = register(JobSpec(
    name="rank",
    summary="Calibrated quality score per 2D class (statistics + image features + a learned image model), "
            "a dataset-adaptive or fixed selection, and the selected classes' particles",
    inputs=(Input("classes", "classes", "2D classes: a Class2D result with its particles, or a bare stack of "
                  "class averages"),),
    params=(
        Param("model", Path, None, "ranker model (.pt) from: cryolens train rank", file_kind="rank_model",
              unset="the model shipped with cryolens"),
        Param("select", str, "auto", "how to select: auto (cut from this data set's scores), threshold, fraction",
              choices=("auto", "threshold", "fraction")),
        Param("threshold", float, 0.5, "with select threshold: keep classes scoring at least this", min=0, max=1,
              only_with=("select", ("threshold",))),
        Param("fraction", float, 0.5, "with select fraction: keep this share of the classes, best first",
              min=0.0001, max=1, only_with=("select", ("fraction",))),
        Param("recall", float, 0.95, "with select auto: keep an expected share of the good particles of at least "
              "this", min=0.5, max=1, only_with=("select", ("auto",))),
        Param("min_prob", float, 0.1, "with select auto: never keep a class scoring below this", min=0, max=1,
              aliases=("min_probability",), only_with=("select", ("auto",))),
        Param("rejected", bool, False, "also write the particles of the classes not selected (rejected.star)",
              aliases=("write_rejected",)),
        *CLASS_AVERAGE_PARAMS,
    ),
    outputs=(Output("particles", "particles", "particles of the selected classes"),
             Output("rejected", "particles", "particles of the other classes (with --rejected yes)"),
             Output("class_averages", "classes", "the selected classes with their scores (RELION: "
                    "rlnPredictedClassScore, as Select's class_averages.star)"),
             Output("rank_model", "classes", "every class with its score (RELION: rlnClassScore, as the class "
                    "ranker's rank_model.star)"),
             Output("rank_scores", "table", "score, rank and selection per class"),
             Output("rank_gallery", "figure", "all classes sorted by score, with the cut")),
    run=run,
))
