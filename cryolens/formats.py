"""Pick the adapter for a file by its kind: RELION STAR, cryoSPARC .cs, or MRC.

The command line and the jobs' shell entry use this; core never does (it knows no format).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cryolens.core.errors import InputError
from cryolens.core.particles import ClassSet, ParticleSet

MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st")
CLASS2D_STAR = re.compile(r".*_it\d+_(data|model|optimiser)\.star$")


def kind_of(path: str | os.PathLike) -> str:
    """'star', 'cs', 'mrc' or 'dir', from the name; InputError for anything else."""
    p = Path(path)
    if p.is_dir():
        return "dir"
    suffix = p.suffix.lower()
    if suffix == ".star":
        return "star"
    if suffix == ".cs":
        return "cs"
    if suffix in MRC_SUFFIXES:
        return "mrc"
    raise InputError("unknown file type (expected .star, .cs, .mrc, .mrcs or .map)", p)


def is_class2d(path: str | os.PathLike) -> bool:
    p = Path(path)
    return bool(CLASS2D_STAR.match(p.name)) or (p.is_dir() and any(p.glob("*_it[0-9][0-9][0-9]_model.star")))


def read_particles(path: str | os.PathLike, project_dir: str | os.PathLike | None = None) -> ParticleSet:
    kind = kind_of(path)
    if kind == "star":
        from cryolens.relion_ext.star import read_particles as read_star

        return read_star(path, root=project_dir)
    if kind == "cs":
        from cryolens.cryosparc_ext.csfile import read_particles as read_cs

        return read_cs(path, project_dir=project_dir)
    raise InputError(f"not a particle file ({kind})", path)


def write_particles(ps: ParticleSet, path: str | os.PathLike, relion_version: str | None = None) -> None:
    kind = kind_of(path) if Path(path).suffix else "?"
    if kind == "star":
        from cryolens.relion_ext.star import write_particles as write_star

        write_star(ps, path, version=relion_version)
    elif kind == "cs":
        from cryolens.cryosparc_ext.csfile import write_particles as write_cs

        write_cs(ps, path)
    else:
        raise InputError("cannot write particles here (use .star or .cs)", path)


def read_classes(path: str | os.PathLike, particles: str | os.PathLike | None = None,
                 project_dir: str | os.PathLike | None = None) -> ClassSet:
    kind = kind_of(path)
    if kind in ("star", "dir"):
        from cryolens.relion_ext.class2d import read_class2d

        return read_class2d(path, root=project_dir)
    if kind == "cs":
        from cryolens.cryosparc_ext.csfile import read_classes as read_cs_classes

        return read_cs_classes(path, particles, project_dir=project_dir)
    if kind == "mrc":
        return read_class_stack(path)
    raise InputError(f"not a 2D class file ({kind})", path)


def read_class_stack(path: str | os.PathLike, pixel_size: float | None = None) -> ClassSet:
    """A bare stack of class averages (.mrcs, or a .mrc stack): images only, no statistics and no
    membership; classes are numbered 1..K in stack order. The pixel size comes from the header
    unless given."""
    import numpy as np
    import pandas as pd

    from cryolens.core.mrc import open_stack, stack_info

    info = stack_info(path)
    if info.ny != info.nx:
        raise InputError(f"class averages must be square, this stack is {info.nx} x {info.ny}", path)
    images = np.array(open_stack(path, as_stack=True), dtype=np.float32)
    if not np.isfinite(images).all():
        raise InputError("the stack holds NaN or infinite pixels", path)
    px = pixel_size if pixel_size else info.pixel_size
    if px is not None and not px > 0:
        px = None
    table = pd.DataFrame({"class_id": np.arange(1, len(images) + 1, dtype=np.int64), "image_stack": str(path),
                          "image_index": np.arange(len(images), dtype=np.int64)})
    return ClassSet(table, images, px, None, source=str(path), meta={"bare_stack": True})
