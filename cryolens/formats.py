"""Pick the adapter for a file by its kind: RELION STAR, cryoSPARC .cs, or MRC.

The command line's dispatcher: core never uses it (it knows no format), nor do the adapters
(each reads its own files).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryolens.core.errors import InputError
from cryolens.core.mrc import MRC_SUFFIXES, read_class_stack
from cryolens.core.particles import ClassSet, ParticleSet


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
    """Write ``ps`` as STAR or .cs; a set read from the other format carries that file along.

    STAR -> .cs: the STAR file's columns and optics groups go into ``rln*/`` fields
    (relion_ext.carry); .cs -> STAR: the .cs fields go into ``cryosparc/`` columns
    (cryosparc_ext.carry). Writing back to the original format restores the original file.
    """
    kind = kind_of(path) if Path(path).suffix else "?"
    if kind == "star":
        from cryolens.relion_ext import carry as rln_carry
        from cryolens.relion_ext.star import write_particles as write_star

        if rln_carry.is_carried(ps):
            ps = rln_carry.restore(ps)
        elif "cryosparc" in ps.meta:
            from cryolens.cryosparc_ext import carry as cs_carry

            ps = ps if cs_carry.is_carried(ps) else cs_carry.carry(ps)
        write_star(ps, path, version=relion_version)
    elif kind == "cs":
        from cryolens.cryosparc_ext import carry as cs_carry
        from cryolens.cryosparc_ext.csfile import write_particles as write_cs
        from cryolens.relion_ext import carry as rln_carry

        if cs_carry.is_carried(ps):
            ps = cs_carry.restore(ps)
        elif "relion" in ps.meta and not rln_carry.is_carried(ps):
            ps = rln_carry.carry(ps)
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


def read_selection(path: str | os.PathLike, cs: ClassSet) -> np.ndarray:
    """A user's class selection, read from RELION's backup_selection.star or a cryoSPARC selected
    (or excluded) templates .cs: 1 per class of ``cs`` it names, else 0 (ClassSet order).
    InputError naming the file on any mismatch with ``cs``."""
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
