"""Build or inspect a map library for the identify job

A library holds each map rendered like a class average at many views over the sphere, and their
embeddings by the identity model (cryolens.core.identify.library). Building is incremental: the
maps already in the library are not rendered again.

Example usage
-------------
$ cryolens library build lib.npz --csv maps.csv         # path,name,accession per row (.mrc or .cif)
$ cryolens library build lib.npz --maps extra.mrc        # add one map
$ cryolens library info lib.npz
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from cryolens.core.identify.library import DEFAULT_BOX, DEFAULT_PIXEL_SIZE, DEFAULT_RESOLUTION_A, DEFAULT_VIEWS
from cryolens.core.jobs.base import Param
from cryolens.core.jobs.flags import add_options


# a new library's geometry; the ranges are checked before anything is read or rendered
BUILD_OPTIONS = (
    Param("phantoms", int, 0, "add this many cryolens phantom proteins", min=0),
    Param("box", int, DEFAULT_BOX, "reference box, px (new library)", min=8),
    Param("pixel_size", float, DEFAULT_PIXEL_SIZE, "reference pixel size, A (new library)", min=0, min_exclusive=True),
    Param("resolution", float, DEFAULT_RESOLUTION_A, "references low-passed to this, A", min=0),
    Param("views", int, DEFAULT_VIEWS, "projections per map over the sphere", min=1),
)


def add_args(parser: argparse.ArgumentParser) -> None:
    lsub = parser.add_subparsers(dest="library_command", metavar="ACTION", required=True)
    b = lsub.add_parser("build", help="create a library, or add maps to an existing one (incremental)")
    b.add_argument("library", metavar="LIBRARY.npz")
    b.add_argument("--maps", nargs="+", default=[], metavar="MAP", help="density maps (.mrc/.map); name = file stem")
    b.add_argument("--csv", help="CSV with columns path,name[,accession] (paths relative to the CSV)")
    b.add_argument("--models", nargs="+", default=[], metavar="MODEL",
                   help="atomic models (.cif/.pdb) made into maps with gemmi (pip install cryolens[models])")
    b.add_argument("--phantom-seed", type=int, default=0)
    add_options(b, BUILD_OPTIONS)
    b.add_argument("--model", help="identity model to embed the references with (default: the shipped one)")
    b.add_argument("--no-embed", action="store_true", help="do not embed now (identify embeds on first use)")
    i = lsub.add_parser("info", help="list a library's entries")
    i.add_argument("library", metavar="LIBRARY.npz")


def main(args: argparse.Namespace) -> int:
    from cryolens.core.errors import CryolensError, InputError
    from cryolens.core.identify.library import Library, add_sources

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
    add_sources(lib, sources, device=args.device, log=print)
    if args.phantoms:
        from cryolens.core.simulate.proteins import phantom_library

        for ph in phantom_library(args.phantoms, seed=args.phantom_seed, box=lib.box, pixel_size=lib.pixel_size):
            if ph.name in set(lib.entries["name"]):
                raise InputError(f"phantom {ph.name} is already in the library (use another --phantom-seed)", path)
            lib.add_volume(ph.density, ph.name, source="cryolens phantom", provenance=ph.provenance, device=args.device)
        print(f"  + {args.phantoms} phantom proteins (seed {args.phantom_seed})")
    build_s = time.perf_counter() - t0
    from cryolens.core.identify import IdentityModel, prepare_library

    # the decoys always (scoring needs them); the embeddings unless --no-embed (then at first use)
    prepare_library(lib, None if args.no_embed else IdentityModel.load(args.model), log=print)
    lib.save(path)
    added = len(lib) - n0
    print(f"{path}: {len(lib)} entries ({added} added in {time.perf_counter() - t0:.1f} s; rendering "
          f"{build_s / max(1, added):.2f} s per map)")
    return 0


def _sources(args) -> list[tuple[str, str, str | None, str]]:
    import pandas as pd

    from cryolens.core.errors import InputError

    from cryolens.core.identify.library import source_kind

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
            out.append((source_kind(p), str(p), r.get("name") or None, r.get("accession", "")))
    return out
