"""``cryolens library build|info`` and ``cryolens train identify``: the map library and the
identity model of the ``identify`` job (core.library, core.identify, core.identify_train)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def add_library_parser(sub, common=lambda leaf: None) -> argparse.ArgumentParser:
    p = sub.add_parser("library", help="build or inspect a map library for the identify job")
    lsub = p.add_subparsers(dest="library_command", metavar="ACTION")
    lsub.required = True
    b = lsub.add_parser("build", help="create a library, or add maps to an existing one (incremental)")
    b.add_argument("library", metavar="LIBRARY.npz")
    b.add_argument("--maps", nargs="+", default=[], metavar="MAP", help="density maps (.mrc/.map); name = file stem")
    b.add_argument("--csv", help="CSV with columns path,name[,accession] (paths relative to the CSV)")
    b.add_argument("--models", nargs="+", default=[], metavar="MODEL",
                   help="atomic models (.cif/.pdb) made into maps with gemmi (pip install cryolens[models])")
    b.add_argument("--phantoms", type=int, default=0, help="add this many cryolens phantom proteins")
    b.add_argument("--phantom-seed", type=int, default=0)
    b.add_argument("--box", type=int, default=64, help="reference box, px (new library; default 64)")
    b.add_argument("--pixel-size", type=float, default=3.0, help="reference pixel size, A (new library; default 3)")
    b.add_argument("--resolution", type=float, default=15.0, help="references low-passed to this, A (default 15)")
    b.add_argument("--views", type=int, default=200, help="projections per map over the sphere (default 200)")
    b.add_argument("--model", help="identity model to embed the references with (default: the shipped one)")
    b.add_argument("--no-embed", action="store_true", help="do not embed now (identify embeds on first use)")
    i = lsub.add_parser("info", help="list a library's entries")
    i.add_argument("library", metavar="LIBRARY.npz")
    common(b)
    common(i)
    return p


def add_train_parser(tsub, common=lambda leaf: None) -> argparse.ArgumentParser:
    p = tsub.add_parser("identify", help="train the identity model (stage I synthetic; stage II with real classes)")
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
    common(p)
    return p


def run_library(args) -> int:
    from cryolens.core.errors import CryolensError, InputError
    from cryolens.core.identify.library import Library

    path = Path(args.library)
    if args.library_command == "info":
        lib = Library.load(path)
        print(f"{path}: {len(lib)} entries, box {lib.box} px at {lib.pixel_size} A/px, {lib.n_views} views each, "
              f"references low-passed to {lib.resolution_A} A; embeddings: "
              f"{0 if lib.embeddings is None else len(lib.embeddings)} (model {lib.embedding_model or '-'})")
        for _, e in lib.entries.iterrows():
            print(f"  {e['entry']:5d}  {e['name']:<40s} {e['accession'] or '':<14s} {e['source']}")
        return 0
    sources = _sources(args)
    if not sources and not args.phantoms:
        raise CryolensError("nothing to add: give --maps, --csv, --models or --phantoms")
    if path.exists():
        lib = Library.load(path)
        print(f"adding to {path} ({len(lib)} entries, box {lib.box} px at {lib.pixel_size} A/px)")
    else:
        lib = Library(args.box, args.pixel_size, args.resolution, args.views)
    t0, n0 = time.perf_counter(), len(lib)
    for kind, src, name, acc in sources:
        if kind == "map":
            lib.add_map_file(src, name=name, accession=acc, device=args.device)
        else:
            from cryolens.core.maps import from_atomic_model

            ph = from_atomic_model(src, lib.box, lib.pixel_size)
            lib.add_volume(ph.density, name or Path(src).stem, acc, str(src), ph.provenance, device=args.device)
        print(f"  + {lib.entries['name'].iloc[-1]}")
    if args.phantoms:
        from cryolens.core.simulate.proteins import phantom_library

        for ph in phantom_library(args.phantoms, seed=args.phantom_seed, box=lib.box, pixel_size=lib.pixel_size):
            if ph.name in set(lib.entries["name"]):
                raise InputError(f"phantom {ph.name} is already in the library (use another --phantom-seed)", path)
            lib.add_volume(ph.density, ph.name, source="cryolens phantom", provenance=ph.provenance, device=args.device)
        print(f"  + {args.phantoms} phantom proteins (seed {args.phantom_seed})")
    build_s = time.perf_counter() - t0
    if not args.no_embed:
        from cryolens.core.identify import IdentityModel, embed_library

        embed_library(lib, IdentityModel.load(args.model), log=print)
    lib.save(path)
    added = len(lib) - n0
    print(f"{path}: {len(lib)} entries ({added} added in {time.perf_counter() - t0:.1f} s; rendering "
          f"{build_s / max(1, added):.2f} s per map)")
    return 0


def _sources(args) -> list[tuple[str, str, str | None, str]]:
    import pandas as pd

    from cryolens.core.errors import InputError

    out = [("map", m, None, "") for m in args.maps] + [("model", m, None, "") for m in args.models]
    if args.csv:
        csv = Path(args.csv)
        try:
            df = pd.read_csv(csv, dtype=str).fillna("")
        except Exception as exc:
            raise InputError(f"cannot read the CSV ({type(exc).__name__}: {exc})", csv) from None
        if "path" not in df.columns:
            raise InputError("the CSV needs a 'path' column (and optionally name, accession)", csv)
        for _, r in df.iterrows():
            p = Path(r["path"])
            p = p if p.is_absolute() else csv.parent / p
            if not p.exists():
                raise InputError(f"map listed in the CSV not found: {p}", csv)
            kind = "model" if p.suffix.lower() in (".cif", ".pdb", ".ent", ".mmcif") else "map"
            out.append((kind, str(p), r.get("name") or None, r.get("accession", "")))
    return out


def run_train(args) -> int:
    import numpy as np

    from cryolens.core.errors import CryolensError
    from cryolens.core.identify import IdentityModel
    from cryolens.core.identify.train import RecipeConfig, labelled_table, train_identity

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
        real = (cs.images[rows], lab["identity"].astype(str).to_numpy(), Library.load(args.library), px)
        print(f"stage II: {len(rows)} labelled real classes of {len(np.unique(real[1]))} identities")
    model, report = train_identity(cfg, init=init, real=real, calibrate_only=args.calibrate_only)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 writes
        return 0
    command = "cryolens " + " ".join(getattr(args, "argv", []))
    model.meta["calibration_command" if args.calibrate_only else "command"] = command
    model.save(args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) in {report['total_seconds']:.0f} s")
    if args.report:
        from cryolens.core.atomic import atomic_write_text

        atomic_write_text(Path(args.report), json.dumps(report, indent=1, default=str) + "\n")
    return 0
