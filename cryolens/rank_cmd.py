"""``cryolens train rank``: fine-tune the class ranker on a user's own selection, or train the
shipped model from the phantom universe.

    cryolens train rank --classes Class2D/job012/run_it025_optimiser.star \\
        --selection Select/job014/backup_selection.star --out facility_rank.pt
    cryolens train rank --classes J12_class_averages.cs --class-particles J12_particles.cs \\
        --selection J15_templates_selected.cs [--rejected J15_templates_excluded.cs] --out facility_rank.pt
    cryolens train rank --from-scratch --out core/weights/rank.pt      # the shipped model (docs/models/rank.md)

The model file is then given to the job: ``cryolens run rank ... --model facility_rank.pt``
(RELION: the ``model`` parameter; cryoSPARC: ``--model``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TRAIN_POOL = (100_000, 60)  # (seed, size) of the training phantom pool; the benchmark's pool is disjoint


def add_train_parser(tsub, common=lambda leaf: None) -> argparse.ArgumentParser:
    p = tsub.add_parser("rank", help="fine-tune the 2D class ranker on your own selection (or train it from scratch)")
    p.add_argument("--classes", action="append", default=[],
                   help="2D classes: RELION Class2D (job dir or run_itNNN_*.star), cryoSPARC class averages .cs, "
                        "or a bare .mrcs stack (repeat with --selection for several data sets)")
    p.add_argument("--selection", action="append", default=[],
                   help="the user's choice for the matching --classes: RELION backup_selection.star (rlnSelected "
                        "per class, >= 1 accepted), or the cryoSPARC selected templates .cs")
    p.add_argument("--rejected", action="append", default=[],
                   help="cryoSPARC: the excluded templates .cs (default: every class not selected is rejected)")
    p.add_argument("--class-particles", action="append", default=[],
                   help="cryoSPARC: particles .cs with alignments2D for the matching --classes")
    p.add_argument("--project-dir", help="directory image paths are relative to")
    p.add_argument("--model", default="", help="model to start from (default: the shipped one)")
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps of the image model (default 150)")
    p.add_argument("--folds", type=int, default=4, help="folds for the out-of-fold calibration (default 4)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    g = p.add_argument_group("training from scratch (the shipped model)")
    g.add_argument("--from-scratch", action="store_true", help="train on the phantom universe instead")
    g.add_argument("--synthetic-sets", type=int, default=100, help="fast synthetic Class2D data sets (default 100)")
    g.add_argument("--no-relion", action="store_true", help="leave out the real relion_refine Class2D runs")
    g.add_argument("--image-steps", type=int, default=1500)
    g.add_argument("--combiner-steps", type=int, default=3000)
    g.add_argument("--cache", help="where generated data are cached (default ~/.cache/cryolens/rank)")
    g.add_argument("--report", help="write a JSON training report here")
    common(p)
    return p


# -- the user's labels ------------------------------------------------------------------------------
def read_selection(path: str, cs) -> np.ndarray:
    """0/1 per class of ``cs`` (ClassSet order), -1 where the selection does not say (cryoSPARC with
    both selected and rejected files). InputError naming the file on any mismatch."""
    from cryolens.core.errors import InputError
    from cryolens.formats import kind_of

    kind = kind_of(path)
    if kind == "star":
        from cryolens.relion_ext.star import read_blocks

        blocks = read_blocks(path)
        table = next((b for b in blocks.values() if hasattr(b, "columns") and "rlnSelected" in b.columns), None)
        if table is None:
            raise InputError("no rlnSelected column (expected RELION's backup_selection.star)", path)
        sel = np.asarray(table["rlnSelected"], dtype=np.int64)
        if len(sel) != len(cs):
            raise InputError(f"{len(sel)} rows in the selection but {len(cs)} classes in {cs.source}", path)
        return (sel >= 1).astype(np.int64)
    if kind == "cs":
        from cryolens.cryosparc_ext.csfile import read_classes

        chosen = read_classes(path, load_images=False).class_ids
        unknown = sorted(set(chosen.tolist()) - set(cs.class_ids.tolist()))
        if unknown:
            raise InputError(f"class(es) {unknown} are not in {cs.source}", path)
        return np.isin(cs.class_ids, chosen).astype(np.int64)
    raise InputError("a selection is RELION's backup_selection.star or a cryoSPARC templates .cs", path)


def _user_sets(args):
    from cryolens.core.errors import CryolensError
    from cryolens.core.rank.train import Labelled
    from cryolens.formats import read_classes

    if not args.classes or len(args.classes) != len(args.selection):
        raise CryolensError("give --classes and --selection (once per data set, in pairs)")
    sets = []
    for i, (cpath, spath) in enumerate(zip(args.classes, args.selection)):
        parts = args.class_particles[i] if i < len(args.class_particles) else None
        cs = read_classes(cpath, particles=parts, project_dir=args.project_dir)
        if cs.images is None:
            raise CryolensError("the class average images were not found (give --project-dir)", cpath)
        y = read_selection(spath, cs)
        if i < len(args.rejected) and args.rejected[i]:
            rej = read_selection(args.rejected[i], cs)
            y = np.where(y == 1, 1, np.where(rej == 1, 0, -1))
        keep = y >= 0
        if not keep.all():  # classes neither selected nor excluded carry no label
            cs = cs.subset(cs.class_ids[keep])
            y = y[keep]
        print(f"{cpath}: {len(y)} classes, {int(y.sum())} accepted, {int((y == 0).sum())} rejected ({spath})")
        sets.append(Labelled(cs, y))
    return sets


# -- training from scratch ---------------------------------------------------------------------------
def build_training_sets(n_synthetic: int, use_relion: bool, cache: Path, log=print):
    """(half A, half B, calibration) groups of labelled data sets from the phantom universe.

    Data sets, not classes, are split (classes of one data set share species and statistics);
    RELION runs go one per group in order and weigh 3x (they are few, and the real thing)."""
    from cryolens.core.rank.train import Labelled
    from cryolens.recipes.rank_data import TRAIN_RELION, cached_synthetic, relion_dataset

    groups: tuple[list, list, list] = ([], [], [])
    t0 = time.perf_counter()
    for i in range(n_synthetic):
        d = cached_synthetic(cache, 1000 + i, *TRAIN_POOL)
        g = 0 if i % 20 < 9 else (1 if i % 20 < 17 else 2)
        groups[g].append(Labelled(d.classes, d.labels))
        if (i + 1) % 20 == 0:
            log(f"  synthetic data sets: {i + 1}/{n_synthetic} ({time.perf_counter() - t0:.0f} s)")
    if use_relion:
        for j, (seed, pseed, kw) in enumerate(TRAIN_RELION):
            d = relion_dataset(cache, seed, pseed, log=log, **kw)
            groups[j % 3].append(Labelled(d.classes, d.labels, weight=3.0))
            log(f"  RELION Class2D run {seed}: {len(d.labels)} classes, {int(d.labels.sum())} good")
    return groups


def train_from_scratch(args) -> int:
    from cryolens.core.rank.train import fit
    from cryolens.recipes.rank_data import PURITY_GOOD, TRAIN_RELION, default_cache

    cache = Path(args.cache) if args.cache else default_cache()
    t0 = time.perf_counter()
    groups = build_training_sets(args.synthetic_sets, not args.no_relion, cache)
    t_data = time.perf_counter() - t0
    print(f"data: {sum(len(s.labels) for g in groups for s in g)} classes in {sum(len(g) for g in groups)} data sets "
          f"({t_data:.0f} s)")
    t1 = time.perf_counter()
    model = fit(*groups, image_steps=args.image_steps, combiner_steps=args.combiner_steps, seed=args.seed,
                device=args.device)
    t_fit = time.perf_counter() - t1
    cmd = "cryolens train rank " + " ".join(getattr(args, "argv", sys.argv[1:])[2:]) if hasattr(args, "argv") else \
        " ".join(sys.argv)
    model.info = {"name": Path(args.out).name, "trained": time.strftime("%Y-%m-%d"), "command": cmd,
                  "synthetic_sets": args.synthetic_sets, "relion_runs": 0 if args.no_relion else len(TRAIN_RELION),
                  "purity_good": PURITY_GOOD, "image_steps": args.image_steps, "combiner_steps": args.combiner_steps,
                  "seconds_data": round(t_data, 1), "seconds_fit": round(t_fit, 1)}
    model.save(args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB); data {t_data:.0f} s, fit {t_fit:.0f} s")
    if args.report:
        Path(args.report).write_text(json.dumps(model.info, indent=1))
    return 0


def run_train(args) -> int:
    import torch

    from cryolens.core.rank.model import RankModel
    from cryolens.core.rank.train import fine_tune

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_scratch:
        return train_from_scratch(args)
    t0 = time.perf_counter()
    sets = _user_sets(args)
    base = RankModel.load(args.model or None)
    model = fine_tune(base, sets, steps=args.steps, folds=args.folds, seed=args.seed, device=args.device)
    model.info["name"] = Path(args.out).name
    model.info["fine_tuned"]["data"] = [str(c) for c in args.classes]
    model.save(args.out)
    print(f"wrote {args.out}: fine-tuned on {sum(len(s.labels) for s in sets)} classes in "
          f"{time.perf_counter() - t0:.0f} s; use it with --model {args.out}")
    return 0
