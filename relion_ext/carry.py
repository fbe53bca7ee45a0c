"""A RELION particle STAR file carried through cryoSPARC: every column, every optics group.

cryoSPARC has fields for some RELION labels (``cryosparc_ext.csfile`` maps them); the rest would
be lost on the way RELION -> .cs -> RELION. So a set read from a STAR file also carries that
file's contents, one value per particle, in fields of their own:

* ``rln/<label>``: every column of the particle table, in the file's order, as written;
* ``rln_optics/<label>``: every column of ``data_optics``, the particle's own group's row;
* ``rln_<block>/<label>``: other one-row blocks (RELION 5's ``data_general``);
* ``rln_file/version`` (the ``# version`` line, 0 = none) and, only when they are not the usual
  ``data_optics`` + ``data_particles``, ``rln_file/blocks`` (block names in file order, ``*`` marks
  the particle block).

:func:`restore` rebuilds the STAR blocks from these fields, reads them as the STAR reader does,
and then takes from the cryoSPARC side every canonical value that cryoSPARC changed (beyond
float32 rounding), so values refined in cryoSPARC win and untouched values come back exactly.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.core.geometry import angular_distance_deg, euler_to_matrix
from cryolens.core.particles import FIELDS, ParticleSet

from .star import STAR_VERSION, particles_from_blocks, to_star_blocks

PARTICLE, OPTICS, FILE = "rln/", "rln_optics/", "rln_file/"
# canonical values whose cryoSPARC field is float32: "unchanged" within this (relative) tolerance
RTOL, ATOL, POSE_DEG = 1e-5, 1e-5, 1e-3


def is_carried(ps: ParticleSet) -> bool:
    return any(str(c).startswith(PARTICLE) for c in ps.table.columns)


def _column(values: pd.Series) -> np.ndarray:
    """A STAR column as a plain numpy array a .cs field can hold (int64, float64 or str)."""
    if values.dtype.kind in "iu" or str(values.dtype) in ("Int64", "UInt64"):
        return values.to_numpy(dtype=np.int64) if values.notna().all() else values.to_numpy(np.float64, na_value=np.nan)
    if values.dtype.kind == "f":
        return values.to_numpy(dtype=np.float64)
    return np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                     for v in values.to_numpy(dtype=object)], dtype=object)


def carry(ps: ParticleSet) -> ParticleSet:
    """``ps`` plus its STAR file (as :func:`write_particles` would write it) in carried fields."""
    blocks, version = to_star_blocks(ps)
    rel = ps.meta.get("relion", {})
    main = rel.get("block_name", "particles") if version == "3.0" else "particles"
    particles = blocks[main]
    cols: dict[str, np.ndarray] = {PARTICLE + c: _column(particles[c]) for c in particles.columns}
    n = len(particles)
    if "optics" in blocks:
        optics = blocks["optics"]
        row = pd.Index(optics["rlnOpticsGroup"].astype(int)).get_indexer(particles["rlnOpticsGroup"].astype(int))
        unused = sorted(set(range(len(optics))) - set(row.tolist()))
        if unused:
            warnings.warn(f"{ps.source}: optics group(s) {optics['rlnOpticsGroup'].iloc[unused].tolist()} "
                          "have no particles and are not carried into the .cs", stacklevel=2)
        for c in optics.columns:
            cols[OPTICS + c] = _column(optics[c].iloc[row].reset_index(drop=True))
    for name, block in blocks.items():
        if name in (main, "optics"):
            continue
        if isinstance(block, pd.DataFrame) and len(block) != 1:
            warnings.warn(f"{ps.source}: block data_{name} ({len(block)} rows) is not carried into the .cs",
                          stacklevel=2)
            continue
        one = block.iloc[0].to_dict() if isinstance(block, pd.DataFrame) else dict(block)
        for label, v in one.items():
            cols[f"rln_{name}/{label}"] = _column(pd.Series([v] * n))
    cols[FILE + "version"] = np.full(n, STAR_VERSION[version] or 0, dtype=np.uint32)
    order = " ".join(("*" + b) if b == main else b for b in blocks)
    if order not in ("optics *particles", "*images"):
        cols[FILE + "blocks"] = np.full(n, order, dtype=object)
    carried = pd.DataFrame(cols, index=ps.table.index)
    table = pd.concat([ps.table.drop(columns=[c for c in carried.columns if c in ps.table.columns]), carried],
                      axis=1)
    return ParticleSet(table, ps.root, ps.source, ps.meta)


def _blocks(t: pd.DataFrame) -> tuple[dict, int | None]:
    """The STAR blocks carried in ``t`` (in file order) and the ``# version`` number."""
    def take(prefix: str) -> pd.DataFrame:
        return pd.DataFrame({c[len(prefix):]: t[c].to_numpy() for c in t.columns if str(c).startswith(prefix)})

    order = str(t[FILE + "blocks"].iloc[0]).split(" ") if FILE + "blocks" in t.columns else \
        ["optics", "*particles"] if any(str(c).startswith(OPTICS) for c in t.columns) else ["*images"]
    blocks: dict = {}
    for name in order:
        if name.startswith("*"):
            blocks[name[1:]] = take(PARTICLE)
        elif name == "optics":
            blocks[name] = take(OPTICS).drop_duplicates("rlnOpticsGroup").sort_values(
                "rlnOpticsGroup", kind="stable").reset_index(drop=True)
        else:
            one = take(f"rln_{name}/")
            blocks[name] = {k: one[k].iloc[0] for k in one.columns}
    version = int(t[FILE + "version"].iloc[0]) if FILE + "version" in t.columns else 30001
    return blocks, (version or None)


def _changed(field: str, now: pd.Series, was: pd.Series) -> np.ndarray:
    """Rows where cryoSPARC's value differs from the carried one by more than float32 rounding."""
    if FIELDS[field][0] == "str" or now.dtype == object or was.dtype == object:
        return (now.astype(str).to_numpy() != was.astype(str).to_numpy())
    a = pd.to_numeric(now, errors="coerce").to_numpy(dtype=np.float64)
    b = pd.to_numeric(was, errors="coerce").to_numpy(dtype=np.float64)
    if FIELDS[field][0] in ("int", "uint"):
        return ~((a == b) | (np.isnan(a) & np.isnan(b)))
    return ~(np.isclose(a, b, rtol=RTOL, atol=ATOL) | (np.isnan(a) & np.isnan(b)))


def restore(ps: ParticleSet) -> ParticleSet:
    """The set as read from its carried STAR file, with the canonical values cryoSPARC changed.

    Canonical fields the STAR file did not have (e.g. the uids cryoSPARC needed, or slots the
    .cs writer filled with defaults) are not added: the file comes back with its own columns.
    """
    t = ps.table.reset_index(drop=True)
    blocks, header = _blocks(t)
    back = particles_from_blocks(blocks, Path(ps.source or "?"), header, ps.root)
    t0 = back.table
    for field in FIELDS:
        if field not in t.columns or field not in t0.columns or field in ("rot", "tilt", "psi"):
            continue
        rows = _changed(field, t[field], t0[field]) & t[field].notna().to_numpy()  # NaN: no value in the .cs
        if rows.any():
            t0[field] = np.where(rows, t[field].to_numpy(), t0[field].to_numpy())
    if {"rot", "tilt", "psi"} <= set(t.columns) and {"rot", "tilt", "psi"} <= set(t0.columns):
        now = t[["rot", "tilt", "psi"]].to_numpy(dtype=np.float64, copy=True)
        was = t0[["rot", "tilt", "psi"]].to_numpy(dtype=np.float64, copy=True)
        rows = np.asarray(angular_distance_deg(euler_to_matrix(now), euler_to_matrix(was))) > POSE_DEG
        if rows.any():
            t0.loc[rows, ["rot", "tilt", "psi"]] = now[rows]
    return ParticleSet(t0, back.root, ps.source, back.meta)
