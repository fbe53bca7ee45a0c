"""Train a job's model (identify, rank)

identify: stage I on synthetic phantom proteins; stage II fine-tunes on labelled real class
averages (--init, --real-classes, --labels, --library). Data, steps and figures of the shipped
model: docs/models/identify.md. Under torchrun, every rank trains and rank 0 writes.
rank: fine-tune the shipped ranker on a user's own accepted/rejected classes (a RELION
backup_selection.star or cryoSPARC selected/excluded templates), or train it from scratch on the
phantom universe (cryolens.recipes.rank_data; docs/models/rank.md). The job takes the model file
as --model.

Example usage
-------------
$ cryolens train identify --out identity.pt --proteins 400 --steps 1500
$ cryolens train rank --classes Class2D/job012/run_it025_optimiser.star \\
      --selection Select/job014/backup_selection.star --out facility_rank.pt
$ cryolens train rank --classes J12_class_averages.cs --class-particles J12_particles.cs \\
      --selection J15_templates_selected.cs [--rejected J15_templates_excluded.cs] --out facility_rank.pt
$ cryolens train rank --from-scratch --out core/weights/rank.pt
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def add_args(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="train_task", metavar="TASK", required=True)
    _identify_args(tasks.add_parser("identify", help="train the identity model (stage I synthetic; stage II "
                                                     "with real classes)"))
    _rank_args(tasks.add_parser("rank", help="fine-tune the 2D class ranker on your own selection (or train "
                                             "it from scratch)"))


def main(args: argparse.Namespace) -> int:
    return train_identify(args) if args.train_task == "identify" else train_rank(args)


# -- identify ---------------------------------------------------------------------------------------
def _identify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--proteins", type=int, default=400, help="stage-I phantom proteins (default 400)")
    p.add_argument("--clusters", type=int, default=16, help="view clusters per protein (default 16)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--groups", type=int, default=24, help="groups per batch (x4 images; default 24)")
    p.add_argument("--encoder", default="resnet_tiny", help="encoder preset (resnet_tiny, resnet_small, vit_tiny, ...)")
    p.add_argument("--in-size", type=int, default=32, help="encoder input size, px (default 32)")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--ctf-corrected", action=argparse.BooleanOptionalAction, default=True,
                   help="class-like training renders carry a CTF-corrected average's transfer (damped low "
                        "frequencies and CTF zeros, as real class averages have; default on)")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--pixel-size", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to 1e-6; default 1e-3)")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--checkpoint-dir", help="write last.pt/best.pt here (resume by re-running)")
    p.add_argument("--init", help="start from this identity model (stage II: fine-tune the shipped one)")
    p.add_argument("--real-classes", help="stage II: stack (.mrcs) or Class2D of labelled real class averages")
    p.add_argument("--labels", help="stage II: CSV with columns class (1-based), identity (library entry name)")
    p.add_argument("--library", help="stage II: the library the labels name")
    p.add_argument("--real-pixel-size", type=float, help="pixel size of --real-classes if its header lacks it")
    p.add_argument("--calibrate-only", action="store_true",
                   help="no training: calibrate --init's confidence and shortlist again on the held-out proteins "
                        "of --proteins/--seed (give the values it was trained with)")
    p.add_argument("--report", help="write the training report (JSON) here")


def train_identify(args: argparse.Namespace) -> int:
    from cryolens.core.errors import CryolensError
    from cryolens.core.identify import IdentityModel
    from cryolens.core.identify.train import (RealClasses, RecipeConfig, calibrate_identity, labelled_table,
                                              train_identity)
    from cryolens.core.runtime import is_main_process

    cfg = RecipeConfig(n_proteins=args.proteins, n_clusters=args.clusters, steps=args.steps, groups=args.groups,
                       encoder=args.encoder, embed_dim=args.embed_dim, box=args.box, pixel_size=args.pixel_size,
                       lr=args.lr, val_every=args.val_every, seed=args.seed, device=str(args.device),
                       checkpoint_dir=args.checkpoint_dir, in_size=args.in_size, ctf_corrected=args.ctf_corrected)
    init = IdentityModel.load(args.init) if args.init else None
    if args.calibrate_only and init is None:
        raise CryolensError("--calibrate-only needs --init (the model to calibrate)")
    real = None
    if args.real_classes or args.labels or args.library:
        if not (args.real_classes and args.labels and args.library):
            raise CryolensError("stage II needs --real-classes, --labels and --library together")
        from cryolens.core.identify.library import Library
        from cryolens.formats import read_classes

        cs = read_classes(args.real_classes)
        lab = labelled_table(args.labels)
        ids = cs.class_ids.tolist()
        missing = sorted(set(lab["class"].astype(int)) - set(ids))
        if missing:
            raise CryolensError(f"--labels names classes {missing} that {args.real_classes} does not have")
        rows = [ids.index(int(c)) for c in lab["class"]]
        px = args.real_pixel_size or cs.pixel_size
        real = RealClasses(cs.images[rows], lab["identity"].astype(str).to_numpy(), Library.load(args.library), px)
        print(f"stage II: {len(rows)} labelled real classes of {len(np.unique(real.labels))} identities")
    model, report = calibrate_identity(cfg, init) if args.calibrate_only else train_identity(cfg, init=init, real=real)
    if not is_main_process():  # torchrun: only rank 0 writes
        return 0
    command = "cryolens " + " ".join(getattr(args, "argv", sys.argv[1:]))
    model.meta["calibration_command" if args.calibrate_only else "command"] = command
    model.save(args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) in {report['total_seconds']:.0f} s")
    if args.report:
        from cryolens.core.atomic import atomic_write_text

        atomic_write_text(Path(args.report), json.dumps(report, indent=1, default=str) + "\n")
    return 0


# -- rank -------------------------------------------------------------------------------------------
def _rank_args(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--monotone", action="store_true",
                   help="make --model (default: the shipped one) monotone in the class statistics (weights against "
                        "more particles, finer resolution or better accuracy set to 0) and recalibrate it on the "
                        "recipe's calibration data sets; networks unchanged")
    g.add_argument("--image-rule", action="store_true",
                   help="fit --model's bare-stack score (a monotone rule on image features within each stack, "
                        "core.rank.image_rule) on the recipe's synthetic training sets, calibrated on its calibration "
                        "sets; everything else unchanged")
    g.add_argument("--image-corpus", metavar="DIR",
                   help="with --image-rule: also fit it on the relion_refine Class2D runs of bench/corpus.py in DIR "
                        "(RELION-made averages) whose particles came from --image-corpus-generator")
    g.add_argument("--image-corpus-generator", default="cryolens", choices=["cryolens", "relion_project"],
                   help="the corpus runs --image-corpus adds (default: cryolens, so that relion_project runs test it)")
    r = p.add_argument_group("the robust head (rule, guard, training domain) from the foreign-generator corpus")
    r.add_argument("--robust-from", metavar="DIR",
                   help="fit the model's robust head on the Class2D runs of bench/corpus.py in DIR (networks unchanged)")
    r.add_argument("--robust-generator", default="cryolens", choices=["cryolens", "relion_project"],
                   help="fit on the runs of this generator only, so the other can test it (default: cryolens)")


def _user_sets(args: argparse.Namespace) -> list:
    from cryolens.core.errors import CryolensError
    from cryolens.core.rank.train import Labelled
    from cryolens.formats import read_classes, read_selection

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


def train_from_scratch(args: argparse.Namespace) -> int:
    from cryolens.core.rank.train import fit
    from cryolens.recipes.rank_data import PURITY_GOOD, TRAIN_RELION, build_training_sets, default_cache

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
    cmd = "cryolens " + " ".join(getattr(args, "argv", sys.argv[1:]))
    model.info = {"name": Path(args.out).name, "trained": time.strftime("%Y-%m-%d"), "command": cmd,
                  "synthetic_sets": args.synthetic_sets, "relion_runs": 0 if args.no_relion else len(TRAIN_RELION),
                  "purity_good": PURITY_GOOD, "image_steps": args.image_steps, "combiner_steps": args.combiner_steps,
                  "seconds_data": round(t_data, 1), "seconds_fit": round(t_fit, 1)}
    model.save(args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB); data {t_data:.0f} s, fit {t_fit:.0f} s")
    if args.report:
        Path(args.report).write_text(json.dumps(model.info, indent=1))
    return 0


def train_rank(args: argparse.Namespace) -> int:
    import torch

    from cryolens.core.rank.model import RankModel
    from cryolens.core.rank.train import fine_tune

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_scratch:
        return train_from_scratch(args)
    if args.robust_from:
        return fit_robust(args)
    if args.monotone:
        return make_monotone(args)
    if args.image_rule:
        return fit_image_rule(args)
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


def fit_robust(args: argparse.Namespace) -> int:
    """``--robust-from``: the robust head of ``--model`` (default: the shipped one) fitted on one
    generator's corpus runs; the networks and calibration stay as they are."""
    from cryolens.core.errors import CryolensError
    from cryolens.core.rank.model import RankModel
    from cryolens.core.rank.train import Labelled, fit_robust_head
    from cryolens.recipes.corpus import load_corpus

    runs = load_corpus(args.robust_from, (args.robust_generator,))
    if not runs:
        raise CryolensError(f"no finished {args.robust_generator} runs in the corpus (bench/corpus.py build)",
                            args.robust_from)
    model = RankModel.load(args.model or None)
    model.robust = fit_robust_head(model, [Labelled(r.classes, r.labels) for r in runs], device=args.device,
                                   trained_on={"generator": args.robust_generator,
                                               "run_names": [r.name for r in runs]})
    model.info["robust_command"] = "cryolens " + " ".join(getattr(args, "argv", sys.argv[1:]))
    model.save(args.out)
    print(f"wrote {args.out}: robust head from {len(runs)} {args.robust_generator} runs")
    return 0


def fit_image_rule(args: argparse.Namespace) -> int:
    """``--image-rule``: the bare-stack score of ``--model`` fitted on the synthetic sets of the
    recipe's two training groups, its calibration on the third (``build_training_sets``)."""
    from cryolens.core.rank.features import IMAGE_FEATURES, image_features
    from cryolens.core.rank.image_rule import ImageRule
    from cryolens.core.rank.model import N_STAT, RankModel
    from cryolens.recipes.rank_data import build_training_sets, default_cache

    model = RankModel.load(args.model or None)
    cache = Path(args.cache) if args.cache else default_cache()
    a, b, c = build_training_sets(args.synthetic_sets, False, cache)
    corpus, corpus_names = _image_corpus(args)
    a = list(a) + corpus  # RELION-made averages beside the synthetic sets; calibration stays on c

    def table(sets):
        return [(image_features(s.classes.images), s.labels) for s in sets]

    model.image_rule = ImageRule.fit(table(a + b), table(c))

    def with_logits(sets):
        out = []
        for s in sets:
            ev = model.evidence(s.classes, device=args.device)
            out.append((model.combine(ev, args.device), ev[:, N_STAT:N_STAT + len(IMAGE_FEATURES)], s.labels))
        return out

    model.image_rule.fit_stack(with_logits(a + b), with_logits(c))
    model.image_rule.trained_on.update(synthetic_sets=args.synthetic_sets, calibration_sets=len(c),
                                       corpus_runs=corpus_names,
                                       corpus_generator=args.image_corpus_generator if corpus else "")
    model.info = dict(model.info, image_rule_command="cryolens " + " ".join(getattr(args, "argv", sys.argv[1:])))
    model.save(args.out)
    r = model.image_rule
    print(f"wrote {args.out}: bare-stack image rule on {r.trained_on['sets']} sets ({r.trained_on['classes']} classes): "
          + ", ".join(f"{f} {w:+.2f}" for f, w in zip(r.features, r.weights))
          + f"; with statistics: bias {r.stack[0]:+.2f}, model {r.stack[1]:.2f}, rule {r.stack[2]:.2f}")
    return 0


def _image_corpus(args: argparse.Namespace) -> tuple[list, list[str]]:
    """``--image-corpus``: the corpus runs of one generator as labelled sets, and their names."""
    from cryolens.core.errors import CryolensError
    from cryolens.core.rank.train import Labelled
    from cryolens.recipes.corpus import load_corpus

    if not args.image_corpus:
        return [], []
    runs = load_corpus(args.image_corpus, (args.image_corpus_generator,))
    if not runs:
        raise CryolensError(f"no finished {args.image_corpus_generator} runs in the corpus (bench/corpus.py build)",
                            args.image_corpus)
    print(f"image rule: + {len(runs)} {args.image_corpus_generator} corpus runs ({', '.join(r.name for r in runs)})")
    return [Labelled(r.classes, r.labels) for r in runs], [r.name for r in runs]


def make_monotone(args: argparse.Namespace) -> int:
    """``--monotone``: the combiner's weights on the statistics follow their signs
    (``core.rank.train.constrain_statistics``), then the calibrators are refitted on the recipe's
    calibration data sets (the synthetic ones of ``build_training_sets``' third group)."""
    from cryolens.core.rank.model import RankModel
    from cryolens.core.rank.train import calibrate, constrain_statistics
    from cryolens.recipes.rank_data import build_training_sets, default_cache

    model = RankModel.load(args.model or None)
    for line in constrain_statistics(model) or ["already monotone"]:
        print(f"monotone: {line}")
    cache = Path(args.cache) if args.cache else default_cache()
    _, _, calibration_sets = build_training_sets(args.synthetic_sets, False, cache)
    calibrate(model, calibration_sets, device=args.device)
    model.info = dict(model.info, monotone_command="cryolens " + " ".join(getattr(args, "argv", sys.argv[1:])))
    model.save(args.out)
    print(f"wrote {args.out}: monotone in the class statistics, recalibrated on {len(calibration_sets)} data sets")
    return 0
