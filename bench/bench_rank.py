"""2D class ranking: accuracy, calibration and selection on held-out simulated data; prints JSON.

    python bench/bench_rank.py [--model core/weights/rank.pt] [--synthetic-sets 30] [--no-relion]
                               [--train-sets 40] [--out bench/results/rank.json]

Held-out data: fast synthetic Class2D results whose proteins come from a phantom pool never used
in training (pool seed 900000; training uses 100000) with their own simulation seeds (9000+),
and genuine relion_refine Class2D runs of other held-out phantoms (``rank_data.BENCH_RELION``;
cached, built on first use, minutes each). Labels: a class is good when it is a protein class with
purity >= 0.7 (``rank_data.PURITY_GOOD``).

Reported for cryolens and, in the same run on the same classes, baselines:
* ``resolution``: score = 1 / estimated resolution (inf = 0);
* ``count``: score = particle count;
* ``cryosparc_rule``: the naive Select-2D rule (high resolution, many particles, low ESS): mean
  of the within-data-set percentile ranks; as a selection, keep classes with resolution within 2x
  of the data set's best and at least a quarter of the median count (ESS <= 2 where known);
* ``ranker_features_lr``: logistic regression on RELION-class-ranker-style features (statistics +
  image moments/shape/spectrum, ``core.rank.features``), fitted on training data sets.
Metrics: AUROC and AUPRC over all held-out classes (pooled) and the per-data-set median AUROC;
precision and recall of good particles (members of good classes) at the ``auto`` cut and at 0.5;
expected calibration error (10 bins); bare-stack mode (images only) for cryolens; classes/s on CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.core.rank.threshold import auto_threshold
from cryolens.core.rank.features import class_counts, image_features, stat_features
from cryolens.core.calibration import auroc, expected_calibration_error
from cryolens.core.rank import RankModel
from cryolens.recipes.rank_data import (BENCH_RELION, TRAIN_POOL, TRAIN_RELION, cached_synthetic, default_cache,
                                        relion_dataset)

BENCH_POOL = (900_000, 30)


# -- metrics ------------------------------------------------------------------------------------------
def auprc(score: np.ndarray, y: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise)."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(score), kind="stable")
    hits = y[order]
    prec = np.cumsum(hits) / np.arange(1, len(y) + 1)
    return float((prec * hits).sum() / max(hits.sum(), 1))


def particle_pr(keep: np.ndarray, y: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of good particles: members of good classes kept / kept, / all good."""
    n = np.nan_to_num(counts)
    good = (n * y).sum()
    kept = (n * keep).sum()
    hit = (n * keep * y).sum()
    return (float(hit / kept) if kept else float("nan")), (float(hit / good) if good else float("nan"))


# -- baselines ----------------------------------------------------------------------------------------
def _pct(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ok = np.isfinite(x)
    out = np.full(len(x), 0.5)
    if ok.sum() > 1:
        out[ok] = (rankdata(x[ok]) - 1) / (ok.sum() - 1)
    return out


def baseline_scores(cs) -> dict[str, np.ndarray]:
    res = cs.table["resolution"].to_numpy(float) if "resolution" in cs.table else np.full(len(cs), np.nan)
    inv = np.where(np.isfinite(res) & (res > 0), 1 / np.where(res > 0, res, 1), 0.0)
    n = class_counts(cs)
    ess = cs.table["ess"].to_numpy(float) if "ess" in cs.table else np.full(len(cs), np.nan)
    parts = [_pct(inv), _pct(n)] + ([_pct(-ess)] if np.isfinite(ess).any() else [])
    return {"resolution": inv, "count": np.nan_to_num(n), "cryosparc_rule": np.mean(parts, 0)}


def cryosparc_rule_keep(cs) -> np.ndarray:
    res = cs.table["resolution"].to_numpy(float)
    n = class_counts(cs)
    best = np.nanmin(np.where(np.isfinite(res), res, np.nan))
    keep = np.isfinite(res) & (res <= 2 * best) & (n >= 0.25 * np.nanmedian(n))
    if "ess" in cs.table and np.isfinite(cs.table["ess"].to_numpy(float)).any():
        keep &= ~(cs.table["ess"].to_numpy(float) > 2)
    return keep


class FeatureLR:
    """L2 logistic regression on standardised ranker-style features (NaN -> 0 + missing flags)."""

    def fit(self, X: np.ndarray, y: np.ndarray, l2: float = 1.0) -> "FeatureLR":
        from scipy.optimize import minimize

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.mean = np.nan_to_num(np.nanmean(X, 0))
            sd = np.nanstd(X, 0)
        self.sd = np.where(np.isfinite(sd) & (sd > 1e-9), sd, 1.0)
        Z = self._z(X)
        w_pos = 0.5 / max(y.mean(), 1e-9)
        w = np.where(y == 1, w_pos, 0.5 / max(1 - y.mean(), 1e-9))

        def loss(beta):
            z = Z @ beta[1:] + beta[0]
            s = 0.5 * (1 + np.tanh(0.5 * z))
            val = (w * (np.logaddexp(0, z) - y * z)).sum() + 0.5 * l2 * (beta[1:] ** 2).sum()
            g = w * (s - y)
            return val, np.concatenate([[g.sum()], Z.T @ g + l2 * beta[1:]])

        self.beta = minimize(loss, np.zeros(Z.shape[1] + 1), jac=True, method="L-BFGS-B").x
        return self

    def _z(self, X):
        Z = np.clip((X - self.mean) / self.sd, -6, 6)
        miss = np.isnan(Z)
        return np.concatenate([np.where(miss, 0, Z), miss.astype(float)], 1)

    def predict(self, X):
        z = self._z(X) @ self.beta[1:] + self.beta[0]
        return 0.5 * (1 + np.tanh(0.5 * z))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def lr_features(cs) -> np.ndarray:
    return np.concatenate([stat_features(cs), image_features(cs.images)], 1)


# -- the run ------------------------------------------------------------------------------------------
def summarise(name: str, score: np.ndarray, y: np.ndarray, per_set: list) -> dict:
    aucs = [auroc(s, t) for s, t in per_set]
    aucs = [a for a in aucs if np.isfinite(a)]
    return {"method": name, "auroc": round(auroc(score, y), 4), "auprc": round(auprc(score, y), 4),
            "auroc_median_per_set": round(float(np.median(aucs)), 4) if aucs else None, "n_sets_auroc": len(aucs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="ranker model (default: the shipped weights)")
    ap.add_argument("--synthetic-sets", type=int, default=30)
    ap.add_argument("--train-sets", type=int, default=40, help="training data sets for the LR baseline")
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "rank.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    cache = Path(args.cache) if args.cache else default_cache()
    model = RankModel.load(args.model or None)

    # baseline LR on training data (the same distribution the shipped model was trained on)
    train = [cached_synthetic(cache, 1000 + i, *TRAIN_POOL) for i in range(args.train_sets)]
    if not args.no_relion:
        train += [relion_dataset(cache, s, p, **kw) for s, p, kw in TRAIN_RELION]
    lr = FeatureLR().fit(np.concatenate([lr_features(d.classes) for d in train]),
                         np.concatenate([d.labels for d in train]).astype(float))

    held = [cached_synthetic(cache, 9000 + i, *BENCH_POOL) for i in range(args.synthetic_sets)]
    if not args.no_relion:
        held += [relion_dataset(cache, s, p, **kw) for s, p, kw in BENCH_RELION]
    train_species = {sp for d in train for sp in d.species}
    overlap = sorted(train_species & {sp for d in held for sp in d.species})
    if overlap:
        raise SystemExit(f"held-out proteins overlap the training proteins: {overlap}")

    report: dict = {"benchmark": "rank", "device": "cpu", "threads": args.threads, "seed": args.seed,
                    "model": model.info.get("name", args.model), "purity_good": 0.7, "routes": {}}
    for route in ("synthetic", "relion", "all"):
        sets = [d for d in held if route == "all" or d.route == route]
        if not sets:
            continue
        rows = {k: [] for k in ("y", "p", "p_img", "n", "lr", "resolution", "count", "cryosparc_rule")}
        per = {k: [] for k in ("cryolens", "cryolens_bare_stack", "ranker_features_lr", "resolution", "count",
                               "cryosparc_rule")}
        sel = {k: [] for k in ("auto", "0.5", "cryosparc_rule", "lr_0.5")}
        seconds, n_classes = 0.0, 0
        for d in sets:
            cs, y = d.classes, d.labels
            t0 = time.perf_counter()
            sc = model.score(cs)
            seconds += time.perf_counter() - t0
            n_classes += len(cs)
            bare = type(cs)(cs.table[["class_id"]].copy(), cs.images, None, None, cs.source, {"bare_stack": True})
            p_img = model.score(bare).probability
            base = baseline_scores(cs)
            p_lr = lr.predict(lr_features(cs))
            n = class_counts(cs)
            rows["y"].append(y), rows["p"].append(sc.probability), rows["p_img"].append(p_img), rows["n"].append(n)
            rows["lr"].append(p_lr)
            for k in ("resolution", "count", "cryosparc_rule"):
                rows[k].append(base[k])
                per[k].append((base[k], y))
            per["cryolens"].append((sc.probability, y))
            per["cryolens_bare_stack"].append((p_img, y))
            per["ranker_features_lr"].append((p_lr, y))
            cut, _ = auto_threshold(sc.probability, n)
            sel["auto"].append((sc.probability >= cut, y, n))
            sel["0.5"].append((sc.probability >= 0.5, y, n))
            sel["cryosparc_rule"].append((cryosparc_rule_keep(cs), y, n))
            sel["lr_0.5"].append((p_lr >= 0.5, y, n))
        cat = {k: np.concatenate(v) for k, v in rows.items()}
        y = cat["y"]
        methods = [summarise("cryolens", cat["p"], y, per["cryolens"]),
                   summarise("cryolens_bare_stack", cat["p_img"], y, per["cryolens_bare_stack"]),
                   summarise("ranker_features_lr", cat["lr"], y, per["ranker_features_lr"])]
        methods += [summarise(k, cat[k], y, per[k]) for k in ("resolution", "count", "cryosparc_rule")]
        best_base = max((m for m in methods[2:]), key=lambda m: m["auroc"])
        selections = {}
        for k, v in sel.items():
            keep = np.concatenate([a for a, _, _ in v])
            yy = np.concatenate([b for _, b, _ in v])
            nn = np.concatenate([c for _, _, c in v])
            prec, rec = particle_pr(keep, yy, nn)
            per_rec = [particle_pr(a, b, c)[1] for a, b, c in v]
            per_rec = [r for r in per_rec if np.isfinite(r)]
            selections[k] = {"particle_precision": round(prec, 4), "particle_recall": round(rec, 4),
                             "particle_recall_min_per_set": round(float(np.min(per_rec)), 4) if per_rec else None,
                             "classes_kept": int(keep.sum()), "classes": int(len(keep))}
        report["routes"][route] = {
            "data_sets": len(sets), "classes": int(len(y)), "good_classes": int(y.sum()),
            "methods": methods,
            "ece": {"cryolens": round(expected_calibration_error(cat["p"], y), 4),
                    "cryolens_bare_stack": round(expected_calibration_error(cat["p_img"], y), 4),
                    "ranker_features_lr": round(expected_calibration_error(cat["lr"], y), 4)},
            "best_baseline": best_base["method"],
            "auroc_ratio_vs_best_baseline": round(methods[0]["auroc"] / best_base["auroc"], 4),
            "selection": selections,
            "classes_per_s_incl_first_call": round(n_classes / max(seconds, 1e-9), 1),
        }
    # speed: a typical Class2D result (200 classes of 128 px), scored from a bare stack and with
    # statistics; best of 3 (the machine is shared)
    from cryolens.core.images import fourier_resize

    d = held[0]
    reps = int(np.ceil(200 / len(d.labels)))
    imgs = fourier_resize(torch.as_tensor(np.concatenate([d.classes.images] * reps)[:200]), 128).numpy()
    table = pd.concat([d.classes.table] * reps, ignore_index=True).iloc[:200].copy()
    table["class_id"] = np.arange(1, 201)
    big = type(d.classes)(table, imgs, d.classes.pixel_size / 2, None, "speed test")
    best = min(_timed(lambda: model.score(big)) for _ in range(3))
    report["speed"] = {"classes": 200, "box": 128, "threads": args.threads, "seconds": round(best, 3),
                       "classes_per_s": round(200 / best, 1)}
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    try:
        report["load_avg"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    text = json.dumps(report, indent=1)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
