"""Write the built-in example RELION project

A map, its particles and their STAR file: a small, quick data set for trying the commands and
jobs.

Example usage
-------------
$ cryolens example demo/ --n 200 --box 64
$ cryolens info demo/particles.star
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outdir", metavar="OUTDIR")
    parser.add_argument("--n", type=int, default=200, metavar="N", help="number of particles (default 200)")
    parser.add_argument("--box", type=int, default=64, metavar="N", help="box size in pixels (default 64)")


def main(args: argparse.Namespace) -> int:
    from cryolens.core.mrc import write_map, write_stack
    from cryolens.core.simulate.example import example_dataset
    from cryolens.relion_ext.star import write_particles

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    volume, ps, images = example_dataset(n=args.n, box=args.box, seed=args.seed, device=args.device)
    write_map(out / "example_volume.mrc", volume, float(ps.table["pixel_size"].iloc[0]))
    write_stack(out / "particles.mrcs", images, float(ps.table["pixel_size"].iloc[0]))
    ps.root = out
    write_particles(ps, out / "particles.star", version="3.1")
    print(f"wrote example project {out}: {len(ps)} particles of {args.box} px "
          f"(particles.star, particles.mrcs, example_volume.mrc)")
    return 0
