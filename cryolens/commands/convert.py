"""Convert particles between RELION STAR and cryoSPARC .cs, identity preserved

Lossless both ways: mapped values go into the other program's fields, everything else is carried
(``rln/...`` fields in a .cs, ``cryosparc/...`` columns in a STAR file) and restored when converting
back; a particle keeps its image (index@stack, blob/path + blob/idx) and cryoSPARC uid.

Example usage
-------------
$ cryolens convert Select/job014/particles.star particles.cs                # RELION -> cryoSPARC
$ cryolens convert J12_particles.cs particles.star --project-dir /path/to/CS-project --relion-version 5.0
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryolens.core.errors import CryolensError
from cryolens.core.jobs.base import Param
from cryolens.core.jobs.flags import add_options


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN")
    parser.add_argument("output", metavar="OUT")
    parser.add_argument("--project-dir", help="directory image paths are relative to (default: found)")
    add_options(parser, (Param("relion_version", str, None, "STAR flavour to write", choices=("3.0", "3.1", "4.0", "5.0"),
                               unset="the input's, or 3.1"),))


def main(args: argparse.Namespace) -> int:
    from cryolens.formats import kind_of, read_particles, write_particles

    src, dst = Path(args.input), Path(args.output)
    if src.exists() and dst.exists() and os.path.samefile(src, dst):
        raise CryolensError("refusing to overwrite the input file", dst)
    kind_of(dst)  # fail on a bad output name before reading anything
    ps = read_particles(src, project_dir=args.project_dir)
    write_particles(ps, dst, relion_version=args.relion_version)
    print(f"wrote {len(ps)} particles: {src} -> {dst}")
    return 0
