"""Job ``rank``: a calibrated quality score per 2D class, a selection, and its particles.

Input: a Class2D result (RELION iteration or cryoSPARC class averages with their particles), or a
bare stack of class averages (images only: the score then rests on image evidence alone).
The score is the probability that the class is good (``core.ranker``); the selection keeps the
classes at or above a cut that is absolute (``threshold``), a share of the classes (``fraction``)
or derived from this data set's scores (``auto``, see ``auto_threshold``).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryolensError
from ..particles import ClassSet
from .base import Input, JobContext, JobResult, JobSpec, Output, Param, register

SCORE = "rlnClassScore"
PREDICTED = "rlnPredictedClassScore"


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


def gallery_figure(images: np.ndarray, class_ids: np.ndarray, prob: np.ndarray, counts: np.ndarray,
                   resolution: np.ndarray, cut: float, title: str, max_cols: int = 10):
    """All classes sorted by score: tiles captioned with score, particles and resolution, kept ones
    framed green, rejected red, the threshold drawn on the sorted-score curve and between the tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    order = np.argsort(-prob, kind="stable")
    k = len(order)
    cols = max(1, min(max_cols, k))
    rows = max(1, math.ceil(k / cols))
    tile = 1.15
    fig = plt.figure(figsize=(cols * tile, 2.0 + rows * (tile + 0.38)))
    top = 1.6 / (2.0 + rows * (tile + 0.38))
    ax = fig.add_axes([0.08, 1 - top + 0.25 * top, 0.9, 0.62 * top])
    ax.plot(np.arange(1, k + 1), prob[order], "o-", ms=3, lw=1, color="0.3")
    ax.axhline(cut, color="C3", ls="--", lw=1.2)
    ax.text(k + 0.5, cut, f" cut {cut:.2f}", color="C3", va="bottom", ha="right", fontsize=7)
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("rank", fontsize=7)
    ax.set_ylabel("score", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)
    grid_h = 1 - top
    cell_w, cell_h = 1.0 / cols, grid_h / rows
    for j, i in enumerate(order):
        r, c = divmod(j, cols)
        a = fig.add_axes([c * cell_w + 0.04 * cell_w, grid_h - (r + 1) * cell_h + 0.26 * cell_h,
                          0.92 * cell_w, 0.7 * cell_h])
        im = np.asarray(images[i], np.float32)
        lo, hi = np.percentile(im, [1, 99]) if np.isfinite(im).all() else (0.0, 1.0)
        a.imshow(im, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        a.set_xticks([]), a.set_yticks([])
        kept = prob[i] >= cut
        for s in a.spines.values():
            s.set_color("C2" if kept else "C3")
            s.set_linewidth(2.0)
        n = counts[i]
        res = resolution[i]
        cap = f"#{class_ids[i]}  {prob[i]:.2f}\n" + ("n=?" if not np.isfinite(n) else f"n={int(n)}") + \
            ("" if np.isnan(res) else ("  res inf" if np.isinf(res) else f"  {res:.1f} A"))
        a.set_title(cap, fontsize=5.5, pad=1.5)
    # the threshold between the last kept and the first rejected tile
    n_kept = int((prob >= cut).sum())
    if 0 < n_kept < k:
        r, c = divmod(n_kept, cols)
        y0, y1 = grid_h - (r + 1) * cell_h, grid_h - r * cell_h
        fig.add_artist(Rectangle((c * cell_w, y0), 0, y1 - y0, transform=fig.transFigure, ec="C3", lw=2.5, ls="--"))
        if c > 0:  # the line continues under the rest of the row above
            fig.add_artist(Rectangle((c * cell_w, y1), 1 - c * cell_w, 0, transform=fig.transFigure, ec="C3",
                                     lw=2.5, ls="--"))
            fig.add_artist(Rectangle((0, y0), c * cell_w, 0, transform=fig.transFigure, ec="C3", lw=2.5, ls="--"))
        else:
            fig.add_artist(Rectangle((0, y1), 1, 0, transform=fig.transFigure, ec="C3", lw=2.5, ls="--"))
    return fig


def run(inputs: dict[str, Any], params: dict[str, Any], ctx: JobContext) -> JobResult:
    from ..ranker import RankModel
    from ..rank_features import class_counts

    cs: ClassSet = inputs["classes"]
    if len(cs) == 0:
        raise CryolensError("no classes to rank", cs.source)
    if cs.images is None:
        raise CryolensError("ranking needs the class average images: the class stack was not found "
                            "(give --project-dir, or the stack next to the .cs)", cs.source)
    model = RankModel.load(params["model"] or None)
    ctx.report(0, 1)
    ctx.check_abort()
    t0 = time.perf_counter()
    sc = model.score(cs, device=ctx.device)
    seconds = time.perf_counter() - t0
    ctx.check_abort()
    prob = sc.probability
    counts = class_counts(cs)
    res_col = cs.table["resolution"].to_numpy(np.float64) if "resolution" in cs.table else np.full(len(cs), np.nan)

    how = params["select"]
    if how == "threshold":
        cut = float(params["threshold"])
        reason = f"threshold {cut:.2f} (given)"
    elif how == "fraction":
        n_keep = max(1, int(round(params["fraction"] * len(cs))))
        cut = float(np.sort(prob)[::-1][n_keep - 1])
        reason = f"top {100 * params['fraction']:.0f}% of the classes ({n_keep}): score >= {cut:.3f}"
    else:
        cut, reason = auto_threshold(prob, None if np.isnan(counts).all() else counts, params["recall"],
                                     params["min_probability"])
        reason = f"auto cut {cut:.2f}: {reason}"
    keep = prob >= cut
    order = np.argsort(-prob, kind="stable")
    rank = np.empty(len(cs), np.int64)
    rank[order] = np.arange(1, len(cs) + 1)

    scored = ClassSet(cs.table.copy(), cs.images, cs.pixel_size, cs.particles, cs.source, cs.meta)
    scored.table[SCORE] = prob
    scored.table[PREDICTED] = prob
    res = JobResult()
    res.classes["rank_model"] = scored
    res.class_selection["class_averages"] = [int(k) for k in keep]
    res.tables["rank_scores"] = pd.DataFrame({
        "class_id": cs.class_ids, "score": prob, "rank": rank, "selected": keep.astype(int),
        "n_particles": counts, "resolution": res_col, "logit": sc.logit, "evidence": sc.mode})
    mode = "class statistics + images" if sc.mode == "stats" else "images only (no class statistics in the input)"
    res.summary.append(f"rank: {len(cs)} classes scored from {mode} in {seconds:.2f} s "
                       f"({len(cs) / max(seconds, 1e-9):.0f} classes/s; model {model.info.get('name', 'user model')})")
    res.summary.append(f"rank: {reason}")
    kept_ids = cs.class_ids[keep]
    n_total = np.nansum(counts)
    n_kept = np.nansum(counts[keep])
    if keep.any():
        res.classes["class_averages"] = scored.subset(kept_ids)
    if cs.particles is not None and cs.particles.has("class_id"):
        members = cs.particles.table["class_id"].isin(kept_ids).to_numpy()
        if members.any():
            res.particles["particles"] = cs.particles.subset(members)
        if params["write_rejected"] and (~members).any():
            res.particles["rejected"] = cs.particles.subset(~members)
        res.summary.append(f"rank: kept {int(keep.sum())} of {len(cs)} classes, {int(members.sum())} of "
                           f"{len(members)} particles")
        if not members.any():
            res.summary.append("rank: no particles selected: particles.star is not written")
    else:
        res.summary.append(f"rank: kept {int(keep.sum())} of {len(cs)} classes"
                           + (f" ({int(n_kept)} of {int(n_total)} particles by the class counts)"
                              if np.isfinite(counts).any() else "")
                           + "; the input has no particles (a bare stack or classes without their particle "
                             "file): only the class selection and scores are written")
    title = f"rank: {int(keep.sum())} of {len(cs)} classes kept (cut {cut:.2f}, {how}; evidence: {mode})"
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
        Param("model", str, "", "ranker model file (.pt from 'cryolens train rank'); empty = the shipped model"),
        Param("select", str, "auto", "how to select: auto (cut from this data set's scores), threshold, fraction",
              choices=("auto", "threshold", "fraction")),
        Param("threshold", float, 0.5, "with --select threshold: keep classes scoring at least this", min=0, max=1),
        Param("fraction", float, 0.5, "with --select fraction: keep this share of the classes, best first",
              min=0.0001, max=1),
        Param("recall", float, 0.95, "auto: keep an expected share of the good particles of at least this",
              min=0.5, max=1),
        Param("min_probability", float, 0.1, "auto: never keep a class scoring below this", min=0, max=1),
        Param("write_rejected", bool, False, "also write the particles of the classes not selected"),
    ),
    outputs=(Output("particles", "particles", "particles of the selected classes"),
             Output("rejected", "particles", "particles of the other classes (with --write_rejected)"),
             Output("class_averages", "classes", "the selected classes (with their scores)"),
             Output("rank_model", "classes", "every class with rlnClassScore / rlnPredictedClassScore"),
             Output("rank_scores", "table", "score, rank and selection per class"),
             Output("rank_gallery", "figure", "all classes sorted by score, with the cut")),
    run=run,
))
