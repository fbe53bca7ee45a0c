"""A cryoSPARC particle ``.cs`` carried through RELION: every field, its dtype and shape, every uid.

RELION labels hold only the fields ``csfile`` maps (CTF, poses, classes, location); the rest
(``alignments3D/error``, ``blob/sign``, ``ctf/anisomag`` ...) would be lost on the way
.cs -> STAR -> .cs. So a set read from a ``.cs`` also carries, into the STAR file:

* ``cryosparc/<field>``: one STAR column per field, verbatim (the uid is ``cryosparcUid``);
  vector fields as RELION writes vectors, ``[a,b,...]``; float32 values in their shortest exact form;
* ``data_cryosparc_fields``: one row per field (name, dtype, shape), in the file's field order.

:func:`restore` rebuilds the ``.cs`` columns from these and decodes them as ``csfile`` reads a
file, so the writer gives back every field bit for bit, except where a RELION program changed a
mapped label (then that label's value is converted, as for any job's change). Without the fields
block (a RELION program may drop unknown blocks), dtypes come from cryoSPARC's slot layouts.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from cryolens.core.particles import FIELDS, ParticleSet

from .csfile import CODECS, SLOTS, Field, _decode, _name, _shape, _table_uids, particle_columns

PREFIX = "cryosparc/"  # = relion_ext.star.CS_CARRIED: the STAR writer keeps these columns
BLOCK = "cryosparc_fields"
_KNOWN = {_name(f): f for fs in SLOTS.values() for f in fs}


def is_carried(ps: ParticleSet) -> bool:
    return any(str(c).startswith(PREFIX) for c in ps.table.columns)


def _text(x) -> str:
    return str(x) if not isinstance(x, (float, np.floating)) or isinstance(x, np.float32) else repr(float(x))


def _to_star(values: np.ndarray, f: Field):
    """A .cs column as a STAR column: numbers (float32 as their shortest text), strings, ``[a,b]``."""
    if _shape(f):
        return np.array(["[" + ",".join(_text(x) for x in row) + "]" for row in values.reshape(len(values), int(np.prod(_shape(f))))],
                        dtype=object)
    if np.dtype(f[1]) == np.float32:
        return np.array([_text(x) for x in values], dtype=object)
    return values


def carry(ps: ParticleSet) -> ParticleSet:
    """``ps`` plus the fields of its ``.cs`` (as :func:`csfile.write_particles` would write them)
    as STAR columns, and the field list as an extra STAR block."""
    descr, cols = particle_columns(ps)
    carried = pd.DataFrame({"uid": cols["uid"], **{PREFIX + _name(f): _to_star(np.asarray(cols[_name(f)]), f)
                                                  for f in descr if _name(f) != "uid"}}, index=ps.table.index)
    table = pd.concat([ps.table.drop(columns=[c for c in carried.columns if c in ps.table.columns]), carried],
                      axis=1)
    block = pd.DataFrame({"cryosparcField": [_name(f) for f in descr if _name(f) != "uid"],
                          "cryosparcDtype": [np.dtype(f[1]).str for f in descr if _name(f) != "uid"],
                          "cryosparcShape": ["x".join(map(str, _shape(f))) or "0" for f in descr
                                             if _name(f) != "uid"]})
    meta = copy.deepcopy(ps.meta)
    meta.setdefault("relion", {}).setdefault("blocks", {})[BLOCK] = block
    return ParticleSet(table, ps.root, ps.source, meta)


def _field(name: str, values: pd.Series, known: dict) -> Field:
    """A field's (name, dtype[, shape]): from the fields block, cryoSPARC's slots, else the values."""
    if name in known:
        return known[name]
    if values.dtype == object and len(values) and str(values.iloc[0]).startswith("["):
        n = len(str(values.iloc[0]).strip("[]").split(","))
        return (name, "<f4", (n,))
    if values.dtype.kind in "iu":
        return (name, "<u4")
    return (name, "<f4") if values.dtype.kind == "f" else (name, "O")


def _from_star(values: pd.Series, f: Field) -> np.ndarray:
    dt = np.dtype(f[1])
    if _shape(f):
        rows = [[float(x) for x in str(v).strip("[]").split(",")] for v in values]
        return np.array(rows, dtype=np.float64).reshape(len(values), *_shape(f)).astype(dt)
    if dt.kind in "OSU":
        return np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values],
                        dtype=object)
    if dt.kind in "iu":
        return np.array([int(v) for v in values.astype(str)], dtype=dt)
    return pd.to_numeric(values).to_numpy(dtype=np.float64).astype(dt)


def restore(ps: ParticleSet) -> ParticleSet:
    """The set as read from its carried ``.cs``: fields, dtypes, raw values; RELION's changes kept.

    Canonical fields the ``.cs`` did not have (e.g. the optics group every STAR file needs) are
    dropped: the file comes back with its own fields.
    """
    t = ps.table.reset_index(drop=True)
    block = (ps.meta.get("relion") or {}).get("blocks", {}).get(BLOCK)
    known = dict(_KNOWN)
    names = [str(c)[len(PREFIX):] for c in t.columns if str(c).startswith(PREFIX)]
    if block is not None and len(block):
        for name, dt, shape in zip(block["cryosparcField"], block["cryosparcDtype"], block["cryosparcShape"]):
            shp = tuple(int(x) for x in str(shape).split("x")) if str(shape) != "0" else ()
            known[str(name)] = (str(name), str(dt), shp) if shp else (str(name), str(dt))
        listed = [str(n) for n in block["cryosparcField"]]
        names = [n for n in listed if n in names] + [n for n in names if n not in listed]
    descr = [("uid", "<u8")] + [_field(n, t[PREFIX + n], known) for n in names]
    uid = _table_uids(t, ps.image_keys, ps.source)
    cols = {"uid": uid, **{_name(f): _from_star(t[PREFIX + _name(f)], f) for f in descr[1:]}}
    uid, canon, pthru, meta, labels = _decode(cols, descr, CODECS, False, ps.source)
    meta.update(origin={_name(f): "main" for f in descr}, file=str(ps.source), passthrough_files=[])
    claimed = {k for c in CODECS if c.name in meta["codecs"] for k in c.canon} | {"uid"}
    table = t.drop(columns=[c for c in t.columns if str(c).startswith(PREFIX)
                            or (c in FIELDS and c not in claimed)])
    table = pd.concat([table.drop(columns=[c for c in ["uid", *pthru] if c in table.columns]),
                       pd.DataFrame({"uid": uid, **{k: np.asarray(v, dtype=object) if np.asarray(v).dtype.kind in "OSU"
                                                    else v for k, v in pthru.items()}})], axis=1)
    out_meta = dict(ps.meta, cryosparc=meta, labels={**ps.meta.get("labels", {}), **labels})
    return ParticleSet(table, ps.root, ps.source, out_meta)
