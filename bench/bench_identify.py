"""Identity retrieval benchmark -> bench/results/identify.json: the class-average retrieval protocol of
Kuczbanski et al., "Learning image representation for limited cryo-EM data", on data we can make.

Library: phantom proteins never used in training (a seed the training recipe does not draw)
plus the real maps in ../shared/data that fit the library box. Queries of KNOWN identities:
fast synthetic class averages simulated from particles (CTF, SNR 0.05-0.1, misalignment) and,
with --relion, the classes of a real relion_refine Class2D run on simulated particles of three
library proteins of different kinds (an assembly, a filament, a membrane protein in its micelle
or nanodisc: shapes Class2D has a chance to separate at SNR 0.1; truth: majority species,
purity >= 0.7). Queries of UNKNOWN identities: classes
of proteins missing from the library, and junk classes.

Models, side by side in one run: an untrained encoder, the shipped synthetic-only model, and a
two-stage model (the shipped one fine-tuned on labelled "real-like" classes of half the library's
proteins, made with another simulation seed; evaluated on held-out classes); and the three modes
(embedding, correlation, combined). Metrics: R@1, R@5, MRR over entries, kNN accuracy (k=5,
votes of the 5 best references), open-set AUROC (confidence, known vs unknown), and speed.

    .venv/bin/python bench/bench_identify.py [--relion] [--quick] [--speed-only]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryolens.core import calibration

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REAL_MAPS = ["maps/EMD-3001.map", "maps/EMD-3197.map", "maps/trpv1_volume.mrc",
             "relion-conventions/clean70SRibosome_vol_65p.mrc", "maps/ribosome_4ug0_scattering_potential_from_cistem.mrc"]


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > a random negative), ties counted half."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    return calibration.auroc(np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))])


def metrics(es, names: np.ndarray, truth: np.ndarray, ent: np.ndarray, conf: np.ndarray, known: np.ndarray) -> dict:
    from cryolens.core.index import knn_accuracy, mean_reciprocal_rank, recall_at_k

    s = np.where(np.isfinite(es.scores), es.scores, -np.inf)
    order = np.argsort(-s, 1, kind="stable")
    ranked = names[order][known]
    t = truth[known]
    ref = np.where(np.isfinite(es.refs), es.refs, -np.inf)
    top_refs = np.argsort(-ref, 1, kind="stable")[:, :5]
    knn_labels = names[ent[top_refs]][known]
    return {"R@1": recall_at_k(ranked, t, 1), "R@5": recall_at_k(ranked, t, 5), "MRR": mean_reciprocal_rank(ranked, t),
            "kNN@5": knn_accuracy(knn_labels, t, 5), "open_set_AUROC": auroc(conf[known], conf[~known]),
            "unknown_called_unknown": float((conf[~known] < 0.5).mean()),
            "known_right_and_confident": float(((ranked[:, 0] == t) & (conf[known] >= 0.5)).mean())}


def distinct_kinds(phantoms, kinds=("assembly", "filament", "membrane")):
    """The first phantom of each kind: shapes different enough for Class2D to separate (mostly)."""
    return [next(ph for ph in phantoms if ph.kind == k) for k in kinds if any(ph.kind == k for ph in phantoms)]


def relion_queries(phantoms, box, px, seed, log):
    """Class averages of a real relion_refine Class2D run on simulated particles (CTF, SNR 0.1, 10% junk)."""
    import shutil
    import tempfile

    from cryolens.core.simulate.particles import ParticleSimulator, SimulatorConfig
    from cryolens.relion_ext.simulate import class2d_with_truth, write_project

    if not shutil.which("relion_refine"):
        log("relion_refine not found: RELION queries skipped")
        return None
    d = Path(tempfile.mkdtemp(prefix="bench_identify_relion_"))
    sim = ParticleSimulator({ph.name: ph.density for ph in phantoms},
                            SimulatorConfig(box=box, pixel_size=px, snr=0.1, junk=0.1))
    ps, images, truth = sim.dataset(1200, seed=seed)
    star = write_project(d, ps, images, truth)
    t = time.perf_counter()
    cs, ct = class2d_with_truth(d, str(star.relative_to(d)), truth, "Simulated/particles.mrcs", K=6, iters=15,
                                diameter_A=0.9 * box * px, seed=seed)
    log(f"RELION Class2D: {len(cs)} classes in {time.perf_counter() - t:.0f} s")
    good = (ct["truth_purity"].to_numpy() >= 0.7) & (ct["truth_species"].astype(str).to_numpy() != "")
    counts = cs.counts().to_numpy()
    keep = counts > 0
    names = np.where(good, ct["truth_species"].astype(str), "")
    shutil.rmtree(d, ignore_errors=True)
    return cs.images[keep], names[keep]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "identify.json"))
    ap.add_argument("--phantoms", type=int, default=100, help="library phantom proteins (default 100)")
    ap.add_argument("--views", type=int, default=200, help="references per library entry (default 200, the library's)")
    ap.add_argument("--relion", action="store_true", help="also a real relion_refine Class2D run as queries")
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="a small run to check the script")
    ap.add_argument("--model", help="identity model (default: the shipped one)")
    ap.add_argument("--speed-only", action="store_true", help="only the speed section (100 classes vs 1,000 maps)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from cryolens.core.calibration import logistic
    from cryolens.core.identify import (IdentityModel, build_decoys, confidence_features, embed_decoys, embed_library,
                                        prepare_queries, score_entries)
    from cryolens.core.identify.train import (RealClasses, RecipeConfig, shortlist_figures, simulated_queries,
                                              train_identity)
    from cryolens.core.identify.library import Library
    from cryolens.core.nn import encoder_from_config
    from cryolens.core.maps import from_map
    from cryolens.core.simulate.proteins import phantom_library

    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.quick:
        args.phantoms, args.views, args.finetune_steps = 12, 24, 5
    box, px = 64, 3.0
    out: dict = {"library": {}, "queries": {}, "results": {}, "speed": {}}
    # -- library: unseen phantoms + real maps -------------------------------------------------
    n_unknown = max(4, args.phantoms // 7)
    phantoms = phantom_library(args.phantoms + n_unknown, seed=20261121, box=box, pixel_size=px)
    lib_ph, unk_ph = phantoms[: args.phantoms], phantoms[args.phantoms:]
    lib = Library(box, px, n_views=args.views)
    t = time.perf_counter()
    for ph in lib_ph:
        lib.add_volume(ph.density, ph.name, source="phantom")
    t_ph = (time.perf_counter() - t) / len(lib_ph)
    real = []
    for rel in REAL_MAPS:
        p = SHARED / rel
        if not p.exists():
            continue
        try:
            m = from_map(p, box, px)
        except Exception as exc:  # e.g. EMD-3001: a crystallographic cell, not cubic voxels
            log(f"real map {rel}: left out ({exc})")
            continue
        if not m.fits:
            log(f"real map {rel}: {m.max_radius_A:.0f} A radius does not fit {box} px x {px} A: left out")
            continue
        lib.add_volume(m.density, p.stem, accession=p.stem if p.stem.startswith("EMD") else "", source=str(rel))
        real.append(m)
    out["library"] = {"entries": len(lib), "phantoms": len(lib_ph), "real_maps": [m.name for m in real],
                      "views_per_entry": args.views, "box": box, "pixel_size": px,
                      "render_seconds_per_map": t_ph}
    log(f"library: {len(lib)} entries ({len(real)} real maps), {args.views} views, {t_ph:.2f} s per map")
    shipped = IdentityModel.load(args.model)
    t = time.perf_counter()
    embed_library(lib, shipped)
    out["library"]["embed_seconds_per_map"] = (time.perf_counter() - t) / len(lib)
    # once per library (``prepare_library``; stored in the library file): the fixed decoy proteins
    t = time.perf_counter()
    lib.decoys = build_decoys(lib)
    out["library"]["decoy_build_once_s"] = time.perf_counter() - t
    # -- queries --------------------------------------------------------------------------------
    n_known = len(lib_ph) // 2 if not args.quick else 6
    known_ph = lib_ph[:n_known] + real
    qa, na = simulated_queries(known_ph, 2 * len(known_ph), box, px, seed=101)
    qu, _ = simulated_queries(unk_ph, 2 * len(unk_ph), box, px, seed=102, junk=max(4, len(unk_ph)))
    sets = {"synthetic": (qa, na)}
    if args.relion and not args.speed_only:
        r = relion_queries(distinct_kinds(lib_ph), box, px, 7, log)
        if r is not None:
            sets["relion_class2d"] = r
    out["queries"] = {k: {"classes": int(len(v[0])), "known": int((v[1] != "").sum())} for k, v in sets.items()}
    out["queries"]["unknown"] = {"classes": int(len(qu)), "proteins_missing_from_library": len(unk_ph)}
    log(f"queries: {out['queries']}")
    # -- models -----------------------------------------------------------------------------------
    runs, ft_set = [], set()
    if args.speed_only:
        sets = {}
    else:
        torch.manual_seed(0)
        untrained = IdentityModel(encoder_from_config(shipped.encoder.config).eval(), dict(shipped.calibration))
        # two-stage: labelled real-like classes of the first half of the known proteins, another seed
        ft_ph = known_ph[: max(2, len(known_ph) // 2)]
        ft_img, ft_names = simulated_queries(ft_ph, 3 * len(ft_ph), box, px, seed=103)
        keep = ft_names != ""
        t = time.perf_counter()
        cfg = RecipeConfig(n_proteins=40 if not args.quick else 6, n_clusters=8, steps=args.finetune_steps, groups=24,
                           in_size=shipped.encoder.config["in_size"], embed_dim=shipped.encoder.config["embed_dim"],
                           encoder=shipped.encoder.config["name"], lr=2e-4, val_every=max(1, args.finetune_steps),
                           n_val=12 if not args.quick else 3, n_unknown=6 if not args.quick else 2, seed=11)
        two_stage, _ = train_identity(cfg, init=IdentityModel.load(args.model),
                                      real=RealClasses(ft_img[keep], ft_names[keep], lib, px), log=log)
        out["two_stage"] = {"labelled_classes": int(keep.sum()), "identities": len(ft_ph), "steps": args.finetune_steps,
                            "seconds": time.perf_counter() - t}
        ft_set = {ph.name for ph in ft_ph}
        runs = [("untrained", untrained, "embedding"), ("synthetic_only", shipped, "embedding"),
                ("two_stage", two_stage, "embedding"), ("correlation", shipped, "correlation"),
                ("combined", shipped, "combined"), ("two_stage_combined", two_stage, "combined")]
    names = lib.entries["name"].astype(str).to_numpy()
    ent = lib.entry_of_reference()
    for set_name, (qk, nk) in sets.items():
        images = np.concatenate([qk, qu])
        truth = np.concatenate([nk, np.full(len(qu), "")])
        known = truth != ""
        q = prepare_queries(images, px, lib)
        res = {}
        for label, model, mode in runs:
            t = time.perf_counter()
            es = score_entries(q, lib, mode, model, keep_refs=True)
            dt = time.perf_counter() - t
            conf = logistic(confidence_features(es), model.calibration[mode])
            r = metrics(es, names, truth, ent, conf, known)
            r["seconds"] = dt
            if ft_set:  # the identities two-stage was fine-tuned on vs the rest, for every row alike
                seen = np.isin(truth, list(ft_set))
                for tag, sel in (("finetuned_identities", seen), ("other_identities", known & ~seen)):
                    if not sel.any():  # e.g. the RELION classes: all three in one split
                        continue
                    es_sel = type(es)(es.scores[sel | ~known], es.best_ref[sel | ~known], es.psi[sel | ~known],
                                      es.decoy[sel | ~known], es.refs[sel | ~known])
                    k2 = known[sel | ~known]
                    r[tag] = metrics(es_sel, names, truth[sel | ~known], ent, conf[sel | ~known], k2)
            res[label] = r
            if mode == "combined":  # what the embedding passed to NCC
                sf = shortlist_figures(es, names, truth)
                r["shortlist_mean_entries"], r["shortlist_recall"] = sf["shortlist_mean_length"], sf["shortlist_recall"]
            log(f"{set_name:15s} {label:20s} R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f} kNN {r['kNN@5']:.3f} "
                f"MRR {r['MRR']:.3f} AUROC {r['open_set_AUROC']:.3f} ({dt:.1f} s)"
                + (f" shortlist {r['shortlist_mean_entries']:.1f} entries, recall {r['shortlist_recall']:.3f}"
                   if "shortlist_recall" in r else ""))
        out["results"][set_name] = res
    # -- speed: 100 classes against 1,000 maps ---------------------------------------------------
    # the library repeated to >= 1,000 entries (copies: the combined shortlist grows with them);
    # NCC-bound modes are timed on 10 classes and scaled to 100 (labelled so in the JSON)
    n_rep = max(1, int(np.ceil(1000 / len(lib)))) if not args.quick else 2
    embed_library(lib, shipped)  # the runs above leave the last model's embeddings in the library
    big = Library(box, px, n_views=args.views)
    big.references = np.concatenate([lib.references] * n_rep)
    big.embeddings = np.concatenate([lib.embeddings] * n_rep)
    big.embedding_model = lib.embedding_model
    big.decoys = lib.decoys
    import pandas as pd

    big.entries = pd.DataFrame({"entry": np.arange(len(lib) * n_rep), "name": [f"m{i}" for i in range(len(lib) * n_rep)],
                                "accession": "", "source": "copy", "provenance": "{}"})
    big.views = pd.concat([lib.views.assign(entry=lib.views["entry"] + k * len(lib)) for k in range(n_rep)],
                          ignore_index=True)
    q100 = prepare_queries(np.concatenate([qa, qu])[:100], px, lib)
    sp = out["speed"]
    sp.update({"maps": len(big), "references_per_map": args.views, "device": "cpu", "threads": torch.get_num_threads()})
    # once per library and model (``prepare_library`` stores them): the decoys' embeddings, timed
    # from none (the rows above left the last model's in the library)
    lib.decoys.embeddings = None
    t = time.perf_counter()
    embed_decoys(lib.decoys, shipped)
    sp["decoy_embedding_once_s"] = time.perf_counter() - t
    t = time.perf_counter()
    score_entries(q100, big, "embedding", shipped)
    sp["embedding_100_classes_s"] = time.perf_counter() - t
    for mode in ("combined", "correlation"):
        lengths: list = []
        t = time.perf_counter()
        score_entries(q100[:10], big, mode, shipped, log=lambda m: lengths.append(m))
        dt = time.perf_counter() - t
        sp[f"{mode}_10_classes_s"] = dt
        sp[f"{mode}_100_classes_s_extrapolated"] = 10 * dt
        if lengths:
            sp[f"{mode}_log"] = lengths
    log(f"speed: {sp}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
