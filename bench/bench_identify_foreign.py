"""identify on class averages another generator made: RELION Class2D classes of relion_project
particles, per run and pooled, the worst run beside the median, and a calibration fitted on foreign
classes of other proteins.

Data: the corpus of ``bench/corpus.py``, its ``relion_project`` runs only (genuine relion_refine
Class2D on particles projected by RELION from ``Particles/<protein>_map.mrc``). Queries: the classes
pure enough to have an answer (truth purity >= ``--min-purity``, >= ``--min-particles`` members),
truth = their majority species. Library: the maps of the corpus proteins (each from the run whose
map spans the most Angstrom; a map that the library's mask would cut is skipped, with the reason in
the output) plus ``--phantoms`` cryolens phantoms as distractors (a seed no training uses), at one
box and pixel size for all. Open set: ``--unknown-share`` of the proteins that have queries
(drawn by protein, seeded) is left out of the library, so their classes must come back "unknown".

Per scorer (``--modes``: the job's modes with its default fast search, and
``correlation_exhaustive``, brute-force NCC over every reference, the classical rule beside them)
and per run, with the model as shipped (``--model``): R@1 and R@5 of the known
classes, the confidently-wrong rate over all classes (named with confidence >= ``--min-confidence``,
the job's default, its best entry leading the next by at least the calibration's margin floor, and
wrong: a left-out protein named anything counts as wrong), the share of known
classes named right, known-vs-unknown AUROC of the confidence, seconds per class (the library's
embedding is a one-off, reported apart).

Foreign calibration: the proteins with queries are split in two halves by protein (known and
left-out ones each halved, seeded); ``core.identify.train.calibrate_on_classes`` is fitted on one
half's classes and measured on the other's, and the other way round, so every class has a
confidence from a calibration that never saw its protein. Confidently-wrong, named-right and AUROC
are reported before (the shipped calibration) and after, on the same classes.

    python bench/bench_identify_foreign.py [--corpus DIR] [--modes embedding correlation combined]
        [--max-classes N] [--phantoms 100] [--box 96 --pixel-size 5] [--out results.json]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import draw_proteins, emit, load_corpus, summarise  # noqa: E402

from cryolens.core.calibration import auroc, logistic  # noqa: E402

PHANTOM_SEED = 8_800_001  # distractors: a seed no training recipe, decoy set or corpus run draws
SCORERS = {"embedding": ("embedding", "fast"), "correlation": ("correlation", "fast"),
           "combined": ("combined", "fast"), "correlation_exhaustive": ("correlation", "exhaustive")}
METRICS = {"R@1": False, "R@5": False, "confidently_wrong": True, "confidently_wrong_after": True,
           "named_right": False, "named_right_after": False, "auroc": False, "auroc_after": False,
           "seconds_per_class": True}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def queries_of(runs, min_purity: float, min_particles: int) -> pd.DataFrame:
    """One row per query class: run index, class row in its ClassSet, species."""
    rows = []
    for i, r in enumerate(runs):
        t = r.truth
        ok = (t["truth_purity"] >= min_purity) & (t["n_particles"] >= min_particles) \
            & t["truth_species"].fillna("").astype(str).isin(r.proteins)
        for j in np.flatnonzero(ok.to_numpy()):
            rows.append({"run": r.name, "run_index": i, "row": int(j), "class_id": int(r.classes.class_ids[j]),
                         "species": str(t["truth_species"].iloc[j]), "n_particles": int(t["n_particles"].iloc[j]),
                         "purity": float(t["truth_purity"].iloc[j])})
    return pd.DataFrame(rows, columns=["run", "run_index", "row", "class_id", "species", "n_particles", "purity"])


def protein_maps(runs, corpus: Path) -> dict[str, Path]:
    """Per protein, its map from the run whose box spans the most Angstrom (a map cut by its own box
    would be a poor reference)."""
    best: dict[str, tuple[float, Path]] = {}
    for r in runs:
        span = r.spec["box"] * r.spec["pixel_size"]
        for p in r.spec["proteins"]:
            f = corpus / r.name / "Particles" / f"{p['name']}_map.mrc"
            if f.exists() and span > best.get(p["name"], (0.0, None))[0]:
                best[p["name"]] = (span, f)
    return {k: v[1] for k, v in sorted(best.items())}


def fitting_maps(runs, corpus: Path, lib) -> tuple[dict, dict]:
    """The corpus proteins' maps (``protein_maps``) at the library's sampling: {name: (phantom, path)}
    for those the library's mask holds, {name: reason} for the others (logged)."""
    from cryolens.core.errors import InputError
    from cryolens.core.maps import from_map

    maps, skipped = {}, {}
    for name, path in protein_maps(runs, corpus).items():
        ph = from_map(path, lib.box, lib.pixel_size, name=name)
        try:
            lib.check_fits(ph.provenance.get("extent_A"), name, path)
            maps[name] = (ph, path)
        except InputError as err:
            skipped[name] = str(err)
            log(f"skipped {name}: {err}")
    return maps, skipped


def add_entries(lib, maps: dict, left_out, phantoms: int, phantom_seed: int) -> None:
    """The maps not left out, then ``phantoms`` distractor phantoms of ``phantom_seed``."""
    from cryolens.core.simulate.proteins import phantom_library

    for name, (ph, path) in maps.items():
        if name not in left_out:
            lib.add_volume(ph.density, name, source=str(path), provenance=ph.provenance)
    for ph in phantom_library(phantoms, seed=phantom_seed, box=lib.box, pixel_size=lib.pixel_size):
        lib.add_volume(ph.density, ph.name, source="phantom", provenance=ph.provenance)


def prepared_by_run(queries: pd.DataFrame, runs, lib) -> dict:
    """{run name: its query classes prepared for ``lib``} (each run has its own box and pixel size)."""
    from cryolens.core.identify import prepare_queries

    out = {}
    for run, g in queries.groupby("run", sort=True):
        r = runs[int(g["run_index"].iloc[0])]
        out[run] = prepare_queries(r.classes.images[g["row"].to_numpy()], r.classes.pixel_size, lib)
    return out


def halves(proteins, seed: int) -> tuple[set, set]:
    first = draw_proteins(proteins, 0.5, seed)
    return first, set(proteins) - first


def concat_scores(parts):
    from cryolens.core.identify import EntryScores

    return EntryScores(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("scores", "best_ref", "psi", "decoy")))


def _rows(es, sel):
    from cryolens.core.identify import EntryScores

    return EntryScores(es.scores[sel], es.best_ref[sel], es.psi[sel], es.decoy[sel])


def rank_of_truth(scores: np.ndarray, names: np.ndarray, truth: str) -> float:
    """1-based rank of the true entry (ties count against it); inf when it is absent or unscored."""
    hit = np.flatnonzero(names == truth)
    if not len(hit) or not np.isfinite(scores[hit[0]]):
        return float("inf")
    return float((scores >= scores[hit[0]]).sum())


def figures(d: pd.DataFrame, min_conf: float) -> dict:
    known = d["known"].to_numpy(bool)
    out = {"classes": int(len(d)), "known": int(known.sum()), "unknown": int((~known).sum())}
    out["R@1"] = float((d["rank"][known] <= 1).mean()) if known.any() else float("nan")
    out["R@5"] = float((d["rank"][known] <= 5).mean()) if known.any() else float("nan")
    for suf, col in (("", "confidence"), ("_after", "confidence_after")):
        named = d["named" + suf].to_numpy(bool)  # confident and above the calibration's margin floor
        right = d["top1"].to_numpy() == d["species"].to_numpy()
        out["confidently_wrong" + suf] = float((named & ~right).mean()) if len(d) else float("nan")
        out["confidently_wrong_n" + suf] = int((named & ~right).sum())
        out["named_right" + suf] = float((named & right)[known].mean()) if known.any() else float("nan")
        out["auroc" + suf] = auroc(d[col].to_numpy(), known)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "cryolens" / "corpus")
    ap.add_argument("--model", help="identity model (default: the shipped one)")
    ap.add_argument("--modes", nargs="+", default=list(SCORERS), choices=list(SCORERS))
    ap.add_argument("--phantoms", type=int, default=100, help="distractor phantoms in the library (default 100)")
    ap.add_argument("--phantom-seed", type=int, default=PHANTOM_SEED)
    ap.add_argument("--box", type=int, default=96, help="library box, px (default 96)")
    ap.add_argument("--pixel-size", type=float, default=5.0, help="library pixel size, A (default 5)")
    ap.add_argument("--resolution", type=float, default=15.0, help="references low-passed to this, A (the library's default)")
    ap.add_argument("--views", type=int, default=200, help="references per entry (default 200, the library's)")
    ap.add_argument("--unknown-share", type=float, default=0.3, help="share of the proteins left out of the library")
    ap.add_argument("--min-purity", type=float, default=0.7)
    ap.add_argument("--min-particles", type=int, default=20)
    ap.add_argument("--min-confidence", type=float, default=0.5, help="the job's default")
    ap.add_argument("--max-classes", type=int, default=0, help="at most this many query classes (seeded draw; 0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from cryolens.core.identify import IdentityModel, Library, confidence_features, prepare_library, score_entries
    from cryolens.core.identify.score import min_margin
    from cryolens.core.identify.train import calibrate_on_classes

    t0 = time.perf_counter()
    all_runs = load_corpus(args.corpus)
    runs = [r for r in all_runs if r.generator == "relion_project"]
    log(f"{len(all_runs)} finished corpus runs, {len(runs)} of relion_project")
    queries = queries_of(runs, args.min_purity, args.min_particles)
    # -- library: the corpus proteins' maps (those that fit), minus the left-out ones, + phantoms
    lib = Library(args.box, args.pixel_size, args.resolution, args.views)
    maps, skipped = fitting_maps(runs, args.corpus, lib)
    queries = queries[queries["species"].isin(list(maps))].reset_index(drop=True)
    with_queries = sorted(set(queries["species"]))
    n_out = int(round(args.unknown_share * len(with_queries)))
    n_out = min(max(n_out, 1 if len(with_queries) > 1 else 0), max(len(with_queries) - 1, 0))
    left_out = draw_proteins(with_queries, n_out / max(len(with_queries), 1), args.seed)
    queries["known"] = ~queries["species"].isin(list(left_out))
    # calibration folds: known and left-out proteins each halved
    fold_a = set().union(halves(sorted(set(with_queries) - left_out), args.seed + 1)[0],
                         halves(sorted(left_out), args.seed + 2)[0])
    queries["fold"] = np.where(queries["species"].isin(list(fold_a)), "A", "B")
    if args.max_classes and len(queries) > args.max_classes:
        keep = np.sort(np.random.default_rng(args.seed + 3).choice(len(queries), args.max_classes, replace=False))
        queries = queries.iloc[keep].reset_index(drop=True)
    log(f"{len(queries)} query classes of {len(with_queries)} proteins in {queries['run'].nunique()} runs; "
        f"left out of the library: {sorted(left_out)}")
    t = time.perf_counter()
    add_entries(lib, maps, left_out, args.phantoms, args.phantom_seed)
    t_lib = time.perf_counter() - t
    model = IdentityModel.load(args.model)
    t = time.perf_counter()
    prepare_library(lib, model if any(SCORERS[m][0] != "correlation" for m in args.modes) else None, log=log)
    t_prep = time.perf_counter() - t
    log(f"library: {len(lib)} entries x {lib.n_views} views at {lib.box} px x {lib.pixel_size} A "
        f"(rendered {t_lib:.0f} s, decoys and embeddings {t_prep:.0f} s)")
    names = lib.entries["name"].astype(str).to_numpy()
    # -- queries, prepared per run (each run has its own box and pixel size)
    prepared = prepared_by_run(queries, runs, lib)
    classes, per_mode, calib = [], {}, {}
    for scorer in args.modes if len(queries) else []:
        mode, search = SCORERS[scorer]
        parts, rows = [], []
        for run, g in queries.groupby("run", sort=True):
            t = time.perf_counter()
            es = score_entries(prepared[run], lib, mode, model, search=search)
            sec = (time.perf_counter() - t) / len(g)
            parts.append(es)
            s = np.where(np.isfinite(es.scores), es.scores, -np.inf)
            feats = confidence_features(es)
            conf = logistic(feats, model.calibration[mode])
            named = (conf >= args.min_confidence) & (feats[:, 2] >= min_margin(model, mode))
            for k, (_, q) in enumerate(g.iterrows()):
                rows.append({**q.to_dict(), "mode": scorer, "top1": names[int(np.argmax(s[k]))],
                             "rank": rank_of_truth(s[k], names, q["species"]), "confidence": float(conf[k]), "named": bool(named[k]),
                             "seconds_per_class": sec})
            log(f"{scorer} {run}: {len(g)} classes, {sec:.2f} s per class")
        d = pd.DataFrame(rows)
        es_all = concat_scores(parts)
        q_all = torch.cat([prepared[run] for run in sorted(prepared)])
        # foreign calibration: fitted on one fold's proteins, applied to the other fold's classes
        d["confidence_after"] = np.nan
        d["named_after"] = False
        calib[scorer] = {}
        for fit, apply in (("A", "B"), ("B", "A")):
            sel = (d["fold"] == fit).to_numpy()
            m = IdentityModel(model.encoder, dict(model.calibration), copy.deepcopy(model.meta))
            if sel.any():
                labels = np.where(d["known"][sel], d["species"][sel], "unknown")
                rep = calibrate_on_classes(m, lib, q_all[sel], lib.pixel_size, labels, modes=(mode,), log=log,
                                           scores={mode: _rows(es_all, sel)},
                                           note=f"bench_identify_foreign fold {fit}")
            else:
                rep = {"n_classes": 0}
            tgt = (d["fold"] == apply).to_numpy()
            feats = confidence_features(_rows(es_all, tgt))
            conf = logistic(feats, m.calibration[mode])
            d.loc[tgt, "confidence_after"] = conf
            d.loc[tgt, "named_after"] = (conf >= args.min_confidence) & (feats[:, 2] >= min_margin(m, mode))
            calib[scorer][f"fit_{fit}_apply_{apply}"] = {"weights": m.calibration[mode], "report": rep.get(mode, rep),
                                                       "fit_classes": int(sel.sum()), "applied_to": int(tgt.sum()),
                                                       "min_margin": min_margin(m, mode)}
        classes.append(d)
        per_mode[scorer] = d
    # -- figures: per run, pooled, median and worst
    per_run = []
    for mode, d in per_mode.items():
        for run, g in d.groupby("run", sort=True):
            per_run.append({"run": run, "scorer": mode, **figures(g, args.min_confidence),
                            "seconds_per_class": float(g["seconds_per_class"].iloc[0]),
                            **{k: runs[int(g["run_index"].iloc[0])].spec[k] for k in
                               ("box", "pixel_size", "snr", "K", "iterations", "ctf", "tau2_fudge")}})
    table = pd.DataFrame(per_run)
    pooled = {mode: {**figures(d, args.min_confidence), "seconds_per_class": float(
        (d.groupby("run")["seconds_per_class"].first() * d.groupby("run").size()).sum() / len(d))}
        for mode, d in per_mode.items()} if per_mode and len(queries) else {}
    summary = {metric: summarise(table, metric, lower_is_better=low) for metric, low in METRICS.items()} \
        if len(table) else {}
    out = {"benchmark": "identify_foreign", "corpus": str(args.corpus), "seed": args.seed, "device": "cpu",
           "threads": args.threads, "model": str(model.path), "model_fingerprint": model.fingerprint(),
           "corpus_runs": len(all_runs), "relion_project_runs": [r.name for r in runs],
           "runs_with_queries": sorted(set(queries["run"])),
           "library": {"box": lib.box, "pixel_size": lib.pixel_size, "resolution_A": lib.resolution_A,
                       "views": lib.n_views, "entries": len(lib), "phantoms": args.phantoms,
                       "phantom_seed": args.phantom_seed,
                       "corpus_proteins": sorted(n for n in maps if n not in left_out),
                       "left_out": sorted(left_out), "skipped": skipped,
                       "render_seconds": t_lib, "prepare_seconds": t_prep},
           "queries": {"classes": int(len(queries)), "known": int(queries["known"].sum()),
                       "unknown": int((~queries["known"]).sum()), "min_purity": args.min_purity,
                       "min_particles": args.min_particles, "max_classes": args.max_classes,
                       "fold_A_proteins": sorted(fold_a & set(with_queries)),
                       "fold_B_proteins": sorted(set(with_queries) - fold_a)},
           "min_confidence": args.min_confidence, "pooled": pooled, "summary": summary, "calibration": calib,
           "per_run": table.to_dict(orient="records"),
           "per_class": pd.concat(classes).drop(columns=["run_index", "row"]).to_dict(orient="records")
           if classes else [], "seconds": time.perf_counter() - t0}
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
