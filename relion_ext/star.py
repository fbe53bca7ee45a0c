"""RELION particle STAR files <-> ParticleSet: the one place that knows RELION's labels.

Reads RELION 3.0 (one particle block, optics per particle), 3.1/4.0 (``data_optics`` +
``data_particles``, ``# version 30001``) and 5.0 (``# version 50001``, 8-digit image indices),
with any number of optics groups. Writing gives back every column of the input, unknown labels
included, in their order and with their values; canonical fields a job changed are written in
the input's own labels (e.g. pixel origins stay pixels), new fields are appended.

Parsing is done by the ``starfile`` package; this module only maps labels and units.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from cryolens.core.atomic import atomic_path
from cryolens.core.errors import InputError
from cryolens.core.particles import FIELDS, ParticleSet

# RELION label -> canonical field, where the value is the same number in the same unit.
PARTICLE_LABELS = {
    "rlnOpticsGroup": "optics_group",
    "rlnDefocusU": "defocus_u",
    "rlnDefocusV": "defocus_v",
    "rlnDefocusAngle": "defocus_angle",
    "rlnPhaseShift": "phase_shift",
    "rlnCtfBfactor": "ctf_bfactor",
    "rlnCtfScalefactor": "ctf_scale",
    "rlnAngleRot": "rot",
    "rlnAngleTilt": "tilt",
    "rlnAnglePsi": "psi",
    "rlnOriginXAngst": "shift_x",
    "rlnOriginYAngst": "shift_y",
    "rlnClassNumber": "class_id",
    "rlnRandomSubset": "half_set",
    "rlnMicrographName": "micrograph",
    "rlnCoordinateX": "coord_x",
    "rlnCoordinateY": "coord_y",
    # RELION 3.0 keeps optics per particle
    "rlnVoltage": "voltage",
    "rlnSphericalAberration": "cs",
    "rlnAmplitudeContrast": "amp_contrast",
    "rlnImagePixelSize": "pixel_size",
    "rlnImageSize": "box",
    "rlnBeamTiltX": "beam_tilt_x",
    "rlnBeamTiltY": "beam_tilt_y",
    "rlnMagMat00": "mag_00",
    "rlnMagMat01": "mag_01",
    "rlnMagMat10": "mag_10",
    "rlnMagMat11": "mag_11",
    # not a RELION label: cryoSPARC's row identity, kept so .cs -> .star -> .cs gives the same uids
    # (RELION keeps unknown labels through its programs)
    "cryosparcUid": "uid",
}
OPTICS_LABELS = {
    "rlnOpticsGroup": "optics_group",
    "rlnImagePixelSize": "pixel_size",
    "rlnImageSize": "box",
    "rlnVoltage": "voltage",
    "rlnSphericalAberration": "cs",
    "rlnAmplitudeContrast": "amp_contrast",
    "rlnBeamTiltX": "beam_tilt_x",
    "rlnBeamTiltY": "beam_tilt_y",
    "rlnMagMat00": "mag_00",
    "rlnMagMat01": "mag_01",
    "rlnMagMat10": "mag_10",
    "rlnMagMat11": "mag_11",
}
CANONICAL_TO_LABEL = {v: k for k, v in PARTICLE_LABELS.items()}
# Labels computed from canonical fields through a conversion; the raw input text is kept in a
# private column so an unchanged particle is written back exactly as it was read.
DERIVED_LABELS = ("rlnImageName", "rlnOriginX", "rlnOriginY")
RAW = "~"  # prefix of adapter-private raw columns

STAR_VERSION = {"3.0": None, "3.1": 30001, "4.0": 30001, "5.0": 50001}
CS_CARRIED = "cryosparc/"  # STAR columns holding cryoSPARC fields verbatim (see cryosparc_ext.csfile)


# -- low-level STAR access --------------------------------------------------------------------
def read_blocks(path: str | os.PathLike) -> dict[str, Any]:
    """All blocks of a STAR file ({name: DataFrame or dict}), with a readable error."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found" if not path.exists() else "not a file", path)
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=["rlnImageName", "rlnMicrographName"])
    except Exception as exc:  # starfile/pandas raise many kinds; the user needs one line
        raise InputError(f"cannot parse as a STAR file ({type(exc).__name__}: {exc})", path) from None
    if not blocks:
        raise InputError("no data blocks found (empty or not a STAR file)", path)
    return blocks


def header_version(path: str | os.PathLike) -> int | None:
    """The ``# version NNNNN`` RELION writes before its blocks (None if absent)."""
    with open(path, "r", errors="replace") as fh:
        for _, line in zip(range(200), fh):
            m = re.match(r"\s*#\s*version\s+(\d+)", line)
            if m:
                return int(m.group(1))
    return None


def _exact_text(col: pd.Series) -> pd.Series:
    """A float column as it will be written: ``%.15g`` where that reads back as the same double
    (anything read from RELION's text), else the shortest exact form (e.g. float32 values)."""
    a = col.to_numpy(dtype=np.float64)
    short = np.char.mod("%.15g", a)
    if np.array_equal(short.astype(np.float64), a, equal_nan=True):
        return col
    return pd.Series([repr(float(v)) for v in a], index=col.index, dtype=object)


def write_blocks(path: str | os.PathLike, blocks: dict[str, Any], version: int | None = 30001,
                 comments: tuple[str, ...] | list[str] = ()) -> None:
    """Write STAR blocks atomically, RELION-style: ``# version`` before each block; ``comments``
    become ``#`` lines at the top (RELION and starfile skip them).

    Floats are written with 15 significant digits, or exactly where that would change the number,
    so every double (and every float32 of a .cs) reads back as it was.
    """
    blocks = {k: (v.apply(lambda c: _exact_text(c) if c.dtype.kind == "f" else c)
                  if isinstance(v, pd.DataFrame) and len(v) else v) for k, v in blocks.items()}
    text = starfile.writer.StarWriter(blocks, float_format="%.15g", na_rep="nan").to_string()
    lines = text.splitlines()
    out = ["# written by cryolens"] + [f"# {c}".rstrip() for c in comments]
    # starfile reads a comment after an empty loop as its data: no version line after one
    empty = [isinstance(b, pd.DataFrame) and not len(b) for b in blocks.values()]
    i = 0
    for line in lines[1:]:
        if line.startswith("data_") and version is not None and not (i and empty[i - 1]):
            out.append(f"# version {version}")
            out.append("")
        i += line.startswith("data_")
        out.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out) + "\n")


# -- particle STAR -> ParticleSet -------------------------------------------------------------
def split_image_names(names: pd.Series, path: Path) -> tuple[pd.Series, pd.Series, int]:
    """``NNN@stack`` -> (stack, 0-based index, zero-padding width; 0 = unpadded)."""
    names = names.astype(str)
    if len(names) == 0:
        empty = pd.Series([], dtype=object, index=names.index)
        return empty, pd.Series([], dtype=np.int64, index=names.index), 0
    has_at = names.str.contains("@", regex=False)
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = None
    idx_txt = parts[0].where(has_at, "1")
    stack = parts[1].where(has_at, names)
    num = pd.to_numeric(idx_txt, errors="coerce")
    if num.isna().any() or (num < 1).any():
        bad = names[num.isna() | (num < 1)].iloc[0]
        raise InputError(f"bad rlnImageName {bad!r} (expected a 1-based index, e.g. 000001@stack.mrcs)", path)
    lengths = idx_txt[has_at].str.len()
    width = 0
    if len(lengths) and lengths.nunique() == 1 and (idx_txt[has_at].str.startswith("0").any() or lengths.iloc[0] >= 6):
        width = int(lengths.iloc[0])
    return stack, (num.astype(np.int64) - 1), width


def format_image_names(stack: pd.Series, index: pd.Series, width: int) -> pd.Series:
    """(stack, 0-based index) -> ``NNN@stack``, the index zero-padded to ``width`` digits (0: not)."""
    idx = (index.astype(np.int64) + 1).astype(str)
    if width:
        idx = idx.str.zfill(width)
    return idx + "@" + stack.astype(str)


def find_project_root(star_path: Path, stack: str | None) -> Path:
    """The directory RELION paths in ``star_path`` are relative to.

    RELION programs run in the project directory; tools also write stars next to their stacks.
    Try the cwd, then the star's folder and its parents; fall back to the cwd.
    """
    cwd = Path.cwd()
    if stack is None or os.path.isabs(stack):
        return cwd
    candidates = [cwd, star_path.parent.resolve(), *star_path.parent.resolve().parents]
    for cand in candidates:
        if (cand / stack).exists():
            return cand
    return cwd


def _to_numeric_checked(col: pd.Series, label: str, path: Path) -> pd.Series:
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"column {label} has a non-numeric value {col.iloc[row]!r} (particle {row + 1})", path)
    return num


def _particle_block(blocks: dict[str, Any], path: Path) -> tuple[str, pd.DataFrame]:
    """(name, table) of the particle loop: ``data_particles``, else the only loop besides optics."""
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k != "optics"}
    if "particles" in loops:
        name = "particles"
    elif len(loops) == 1:
        name = next(iter(loops))
    else:
        raise InputError(f"no particles block (found blocks: {', '.join(blocks)})", path)
    raw = loops[name]
    if any(str(c).startswith(CS_CARRIED) for c in raw.columns):
        return name, raw  # a .cs carried through RELION: may be empty, or have no images (cryosparc_ext.carry)
    if "rlnImageName" not in raw.columns:
        raise InputError("missing column rlnImageName (is this a particle STAR file?)", path)
    if len(raw) == 0:
        raise InputError("the particles table is empty", path)
    return name, raw


def _optics_block(blocks: dict[str, Any]) -> pd.DataFrame | None:
    """``data_optics`` as a table (starfile gives a one-row block as a dict), None for RELION 3.0."""
    optics = blocks.get("optics")
    if optics is not None and not isinstance(optics, pd.DataFrame):
        optics = pd.DataFrame([optics])
    return optics


def _map_particle_labels(raw: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict[str, str], int]:
    """(table, labels, name width): canonical fields from the labels of ``PARTICLE_LABELS`` (in
    the input's column order), other labels passed through; ``labels`` maps field -> its label."""
    cols: dict[str, Any] = {}
    labels, width = {}, 0
    if "rlnImageName" in raw.columns:
        stack, index, width = split_image_names(raw["rlnImageName"], path)
        cols["image_stack"] = stack.values
        cols["image_index"] = index.values
        labels = {"image_stack": "rlnImageName", "image_index": "rlnImageName"}
    for label in raw.columns:
        if label == "rlnImageName":
            continue
        field = PARTICLE_LABELS.get(label)
        if field is None or field in cols:
            cols[label] = raw[label]
            continue
        kind = FIELDS[field][0]
        if kind == "str":
            cols[field] = raw[label].astype(str)
        elif kind == "uint":
            cols[field] = pd.to_numeric(raw[label].astype(str), downcast=None).astype(np.uint64)
        else:
            cols[field] = _to_numeric_checked(raw[label], label, path)
        labels[field] = label
    return pd.DataFrame(cols, index=raw.index), labels, width


def _join_optics(table: pd.DataFrame, labels: dict[str, str], optics: pd.DataFrame, path: Path) -> None:
    """Copy each particle's optics-group values (``OPTICS_LABELS``) into ``table`` (RELION 3.1+)."""
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError("optics table has no rlnOpticsGroup column", path)
    if "optics_group" not in table.columns:
        if len(optics) != 1:
            raise InputError("missing column rlnOpticsGroup in particles (several optics groups defined)", path)
        table["optics_group"] = int(optics["rlnOpticsGroup"].iloc[0])
    by_group = optics.set_index(optics["rlnOpticsGroup"].astype(int))
    groups = table["optics_group"].astype(int)
    unknown = set(groups) - set(by_group.index)
    if unknown:
        raise InputError(f"particles refer to optics group(s) {sorted(unknown)} not in data_optics", path)
    for label, field in OPTICS_LABELS.items():
        if field == "optics_group" or label not in by_group.columns:
            continue
        table[field] = groups.map(_to_numeric_checked(by_group[label], label, path)).to_numpy()
        labels[field] = label


def _pixel_size_from_magnification(table: pd.DataFrame, labels: dict[str, str], raw: pd.DataFrame,
                                   path: Path) -> None:
    """RELION 3.0 files may give no rlnImagePixelSize: pixel size = detector pixel (um) / magnification."""
    if "pixel_size" in table.columns or not {"rlnDetectorPixelSize", "rlnMagnification"} <= set(raw.columns):
        return
    det = _to_numeric_checked(raw["rlnDetectorPixelSize"], "rlnDetectorPixelSize", path)
    mag = _to_numeric_checked(raw["rlnMagnification"], "rlnMagnification", path)
    table["pixel_size"] = det * 1e4 / mag
    labels["pixel_size"] = "rlnDetectorPixelSize/rlnMagnification"


def _origins_to_angstrom(table: pd.DataFrame, labels: dict[str, str], raw: pd.DataFrame,
                         path: Path) -> pd.DataFrame:
    """Pre-3.1 origins (``rlnOriginX/Y``, pixels) -> canonical shifts (Angstrom), keeping the raw
    text and the value it stood for so that unchanged rows are written back verbatim."""
    for axis in ("X", "Y"):
        px_label, field = f"rlnOrigin{axis}", f"shift_{axis.lower()}"
        if px_label not in raw.columns:
            continue
        px = _to_numeric_checked(raw[px_label], px_label, path)
        table = table.drop(columns=[px_label])
        if field not in table.columns:
            if "pixel_size" not in table.columns:
                raise InputError(f"{px_label} is in pixels but the file gives no pixel size", path)
            table[field] = px.to_numpy() * table["pixel_size"].to_numpy()
            labels[field] = px_label
        table[RAW + px_label] = raw[px_label].to_numpy()
        table[RAW + field] = table[field].to_numpy()
    return table


def read_particles(path: str | os.PathLike, root: str | os.PathLike | None = None) -> ParticleSet:
    """Read a RELION particle STAR file (3.0, 3.1, 4.0 or 5.0) into a ParticleSet."""
    path = Path(path)
    return particles_from_blocks(read_blocks(path), path, header_version(path), root)


def particles_from_blocks(blocks: dict[str, Any], path: Path, header: int | None,
                          root: str | os.PathLike | None = None) -> ParticleSet:
    """The ParticleSet of a particle STAR file's blocks (``header``: its ``# version``).

    Blocks other than the particles and optics (e.g. RELION 5's ``data_general``) are kept in
    ``meta["relion"]["blocks"]`` and written back in their place.
    """
    block_name, raw = _particle_block(blocks, path)
    optics = _optics_block(blocks)
    table, labels, width = _map_particle_labels(raw, path)
    if optics is not None:
        _join_optics(table, labels, optics, path)
        version = "5.0" if (header == 50001 or width == 8) else "3.1"
    else:
        _pixel_size_from_magnification(table, labels, raw, path)
        version = "3.0"
    table = _origins_to_angstrom(table, labels, raw, path)
    if "rlnImageName" in raw.columns:
        table[RAW + "rlnImageName"] = raw["rlnImageName"].astype(str).to_numpy()
    first = str(table["image_stack"].iloc[0]) if "image_stack" in table.columns and len(table) else None
    root_path = Path(root) if root is not None else find_project_root(path, first)
    meta = {
        "labels": labels,
        "relion": {
            "version": version,
            "name_width": width,
            "particle_labels": list(raw.columns),
            "block_name": block_name,
            "optics": None if optics is None else optics.copy(),
            "block_order": list(blocks),
            "blocks": {k: v for k, v in blocks.items() if k not in (block_name, "optics")},
        },
    }
    ps = ParticleSet(table.reset_index(drop=True), root=root_path, source=str(path), meta=meta)
    ps.check_finite()
    return ps


# -- ParticleSet -> particle STAR -------------------------------------------------------------
def _derived_value(ps: ParticleSet, label: str, width: int) -> pd.Series:
    t = ps.table
    if label == "rlnImageName":
        fresh = format_image_names(t["image_stack"], t["image_index"], width)
        raw = t.get(RAW + label)
        if raw is None or width != ps.meta.get("relion", {}).get("name_width"):
            return fresh  # no raw text, or a different index width asked for (e.g. 3.1 -> 5.0)
        stack, index, _ = split_image_names(raw.fillna("0@"), Path(ps.source or "?"))
        same = (stack.astype(str).values == t["image_stack"].astype(str).values) & (index.values == t["image_index"].values)
        return pd.Series(np.where(same, raw.values, fresh.values), index=t.index)
    field = f"shift_{label[-1].lower()}"
    fresh = t[field] / t["pixel_size"]
    raw, at_read = t.get(RAW + label), t.get(RAW + field)
    if raw is None or at_read is None:
        return fresh
    same = (at_read.to_numpy() == t[field].to_numpy())
    return pd.Series(np.where(same, pd.to_numeric(raw, errors="coerce"), fresh), index=t.index)


def with_optics(ps: ParticleSet) -> ParticleSet:
    """``ps`` ready to be written as RELION 3.1+, converted as RELION 3.1 converts a particle file
    without ``data_optics`` (3.0, or a 3.1 file that lost the block) when it reads one: an optics
    group per distinct set of optics values (unless the particles name their groups), pixel
    origins as Angstrom. A set that has its optics table comes back unchanged. InputError naming
    the file when the particles give no pixel size, which every 3.1 optics group needs."""
    rel = ps.meta.get("relion", {})
    if rel.get("version") != "3.0" or rel.get("optics") is not None:
        return ps
    if "pixel_size" not in ps.table.columns:
        raise InputError("no data_optics block and no pixel size per particle (rlnImagePixelSize, or "
                         "rlnDetectorPixelSize with rlnMagnification): RELION 3.1+ needs one per optics group; "
                         "restore the file's optics table", ps.source)
    out = ps.copy()
    t = out.table
    if "optics_group" not in t.columns:
        keys = [f for f in OPTICS_LABELS.values() if f != "optics_group" and f in t.columns]
        t["optics_group"] = t.groupby(keys, sort=False, dropna=False).ngroup().to_numpy() + 1
    if "box" not in t.columns:  # as RELION: from the images' header, where they can be found
        try:
            t["box"] = out.image_source(validate=False).box
        except (InputError, OSError):
            pass
    rel = out.meta.setdefault("relion", {})
    rel["particle_labels"] = [f"{label}Angst" if label in ("rlnOriginX", "rlnOriginY") else label
                              for label in rel.get("particle_labels", [])]
    rel["version"] = "3.1"
    rel["block_name"] = "particles"
    rel["optics"] = _optics_table(out, t, "3.1")  # now: a group with mixed optics values fails before any work
    return out


def to_star_blocks(ps: ParticleSet, version: str | None = None) -> tuple[dict[str, pd.DataFrame], str]:
    """The STAR blocks for ``ps`` in RELION ``version`` (default: the version it was read as)."""
    rel = ps.meta.get("relion", {})
    version = version or rel.get("version") or "3.1"
    if version not in STAR_VERSION:
        raise ValueError(f"unknown RELION version {version!r} (use one of {sorted(STAR_VERSION)})")
    if version != "3.0":
        ps = with_optics(ps)
        rel = ps.meta.get("relion", {})
    t = ps.table
    images = not any(str(c).startswith(CS_CARRIED) for c in t.columns) or "image_stack" in t.columns
    if images:
        ps.require("image_stack", "image_index")
    if version == rel.get("version") and "name_width" in rel:
        width = rel["name_width"]
    else:
        width = 8 if version == "5.0" else 6
    optics_in_block = version != "3.0"
    optics_fields = {f for f in OPTICS_LABELS.values() if f != "optics_group"}

    # columns: the input's labels in order, then canonical fields it lacked, then new passthrough
    order = list(rel.get("particle_labels", []))
    for f in FIELDS:
        if f in ("image_stack", "image_index") or f not in t.columns:
            continue
        if f in optics_fields:
            continue  # data_optics (3.1+) or appended below (3.0)
        label = CANONICAL_TO_LABEL.get(f)
        if label and label not in order and not (f in ("shift_x", "shift_y") and f"rlnOrigin{f[-1].upper()}" in order):
            order.append(label)
    if "rlnImageName" not in order and images:
        order.insert(0, "rlnImageName")
    # passthrough columns; cryoSPARC fields ("prefix/name") only as carried by cryosparc_ext.csfile
    order += [c for c in t.columns if c not in FIELDS and not c.startswith(RAW) and c not in order
              and ("/" not in c or c.startswith(CS_CARRIED))]
    if not optics_in_block:
        for f in sorted(optics_fields):
            label = CANONICAL_TO_LABEL[f]
            from_mag = f == "pixel_size" and {"rlnDetectorPixelSize", "rlnMagnification"} <= set(order)
            if f in t.columns and label not in order and not from_mag:
                order.append(label)
    if optics_in_block and "optics_group" not in t.columns:
        t = t.assign(optics_group=1)
    if optics_in_block and "rlnOpticsGroup" not in order:
        order.append("rlnOpticsGroup")

    cols: dict[str, Any] = {}
    for label in order:
        if label in DERIVED_LABELS:
            cols[label] = _derived_value(ps, label, width)
        elif label in PARTICLE_LABELS and PARTICLE_LABELS[label] in t.columns:
            field = PARTICLE_LABELS[label]
            if optics_in_block and field in optics_fields:
                continue  # lives in data_optics
            cols[label] = t[field] if label != "rlnOpticsGroup" else t["optics_group"].astype(int)
        elif label in t.columns:
            cols[label] = t[label]
        elif label == "rlnOpticsGroup":
            cols[label] = t["optics_group"].astype(int)
        # a label of the input that a job dropped is simply not written
    out = pd.DataFrame(cols, index=t.index).reset_index(drop=True)
    if not optics_in_block:
        main = {rel.get("block_name", "images") if rel.get("version") == "3.0" else "images": out}
    else:
        main = {"optics": _optics_table(ps, t, version), "particles": out}
    return _with_other_blocks(main, rel), version


def _with_other_blocks(main: dict[str, Any], rel: dict) -> dict[str, Any]:
    """``main`` (optics, particles) with the input's other blocks, in the input's block order."""
    other = rel.get("blocks") or {}
    order = [k for k in rel.get("block_order", []) if k in other or k in main]
    order += [k for k in [*other, *main] if k not in order]
    return {k: main[k] if k in main else other[k] for k in order}


def _optics_table(ps: ParticleSet, t: pd.DataFrame, version: str) -> pd.DataFrame:
    """data_optics: the input's optics rows and columns, canonical values from the particles."""
    rel = ps.meta.get("relion", {})
    groups = t["optics_group"].astype(int)
    orig = rel.get("optics")
    if orig is not None:
        optics = orig.copy().reset_index(drop=True)
    else:
        optics = pd.DataFrame({"rlnOpticsGroup": sorted(groups.unique())})
        optics["rlnOpticsGroupName"] = [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]]
    present = set(optics["rlnOpticsGroup"].astype(int))
    extra = sorted(set(groups.unique()) - present)
    if extra:
        add = pd.DataFrame({"rlnOpticsGroup": extra})
        if "rlnOpticsGroupName" in optics:
            add["rlnOpticsGroupName"] = [f"opticsGroup{g}" for g in extra]
        optics = pd.concat([optics, add], ignore_index=True)
    for label, field in OPTICS_LABELS.items():
        if field == "optics_group" or field not in t.columns:
            continue
        per_group = t.groupby(groups)[field]
        if (per_group.nunique(dropna=False) > 1).any():
            g = int(per_group.nunique(dropna=False).idxmax())
            raise InputError(f"optics group {g} has particles with different {label}; "
                             "give them separate optics groups", ps.source)
        values = per_group.first()
        if label not in optics.columns:
            optics[label] = np.nan
        mapped = optics["rlnOpticsGroup"].astype(int).map(values)
        optics[label] = mapped.where(mapped.notna(), optics[label])
        if field == "box":
            optics[label] = optics[label].astype("Int64")
    if orig is None:
        optics["rlnImageDimensionality"] = 2
    return optics


def write_particles(ps: ParticleSet, path: str | os.PathLike, version: str | None = None) -> str:
    """Write ``ps`` as a RELION particle STAR (atomically). Returns the version written."""
    blocks, version = to_star_blocks(ps, version)
    write_blocks(path, blocks, STAR_VERSION[version])
    return version
