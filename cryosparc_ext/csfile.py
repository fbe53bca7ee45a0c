"""cryoSPARC ``.cs`` files <-> ParticleSet / ClassSet: the one place that knows the ``.cs`` format.

Files are read and written only through cryosparc-tools' :class:`cryosparc.dataset.Dataset`
(``Dataset.load`` / ``Dataset.save``); files are written in the numpy format, as CryoSPARC
writes job outputs, so ``np.load`` (pyem, cryoDRGN) reads them as well.

Mapping (cryoSPARC field -> canonical column, neutral units)
-----------------------------------------------------------
``uid`` -> ``uid`` (uint64, kept); ``blob/path`` -> ``image_stack`` (a leading ``>``, written by
exports, is stripped and put back on writing); ``blob/idx`` -> ``image_index`` (0-based, both);
``blob/psize_A`` -> ``pixel_size``; ``blob/shape[0]`` -> ``box``; ``ctf/accel_kv`` -> ``voltage``;
``ctf/cs_mm`` -> ``cs``; ``ctf/amp_contrast``; ``ctf/df1_A``/``df2_A`` -> ``defocus_u``/``_v``;
``ctf/df_angle_rad`` -> ``defocus_angle`` (deg); ``ctf/phase_shift_rad`` -> ``phase_shift`` (deg);
``ctf/bfactor`` -> ``ctf_bfactor``; ``ctf/scale`` -> ``ctf_scale``; ``ctf/exp_group_id`` + 1 ->
``optics_group``; ``ctf/tilt_A`` -> ``beam_tilt_x/y`` (mrad = 1000 asin(tilt_A / Cs[A])); ``ctf/anisomag``
+ identity -> ``mag_00 mag_01 mag_10 mag_11``; ``alignments3D/pose`` (rotation vector) -> ``rot``/``tilt``/``psi`` (RELION ZYZ
degrees, through core.geometry); ``alignments3D/shift`` (px at ``alignments3D/psize_A``) ->
``shift_x``/``shift_y`` (Angstrom); without a 3D alignment ``alignments2D/pose`` -> ``psi`` and
``alignments2D/shift`` -> shifts; ``alignments2D/class`` + 1 -> ``class_id`` (``alignments3D/class``
when there is no 2D alignment); ``alignments3D/split`` + 1 -> ``half_set``;
``location/micrograph_path`` -> ``micrograph``; ``location/center_x_frac * nx`` -> ``coord_x`` and
``location/center_y_frac * ny`` -> ``coord_y`` with ``(ny, nx) = location/micrograph_shape``.

Coordinates are NOT flipped in y. They are pixels of the micrograph named in
``location/micrograph_path``, row index = y, as cryoSPARC itself computes them (cryosparc-tools
README "recenter particles": ``center_x_frac * micrograph_shape[1] - shift_x``, no flip; shifts are
subtracted in the same frame, and our shifts are copied without a y sign change, so flipping only
the coordinates would be inconsistent). pyem's ``--inverty`` compensates for cryoSPARC Patch
Motion writing micrographs flipped relative to MotionCor2's: a property of the micrograph files,
not of the ``.cs`` convention; pass ``invert_y=True`` to read/write_particles to get it.

Where the round-trip data lives
-------------------------------
* Scalar fields that map to no canonical column (``alignments2D/class_posterior``, ``ctf/type``,
  ``blob/import_sig``, ``pick_stats/ncc_score`` ...) are ordinary table columns named exactly like
  the field (``prefix/name``), in the file's dtype (float32 stays float32, strings are ``str``).
  A job can read and change them; they are written back from the table.
* Array-valued fields (``blob/shape`` (2,), ``ctf/tetra_A`` (4,), ``alignments3D/pose`` (3,) ...)
  and the raw values of every mapped field live in ``ps.meta["cryosparc"]["raw"]``: a dict
  field -> array whose rows follow ``ps.meta["cryosparc"]["raw_uid"]`` (sorted uids). Lookups
  go by uid, so subsets, reordering and joins keep them. For the rotation vector (converted with
  transcendental maths) the Euler angles seen at read time are kept too (``at_read``).
* Writing: for each mapped group of fields, rows whose canonical values equal what was read are
  written from the raw values (bit-identical); rows a job changed are converted from the canonical
  columns; rows without a uid in ``raw`` (new, or RELION-origin) are converted, missing fields
  get cryoSPARC's defaults. Field order and dtypes are the input's (``meta["cryosparc"]["descr"]``).
  Table columns that are neither canonical nor ``prefix/name`` (e.g. RELION labels) are not written.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from cryosparc.dataset import Dataset

from cryolens.core import mrc
from cryolens.core.atomic import atomic_path
from cryolens.core.errors import InputError
from cryolens.core.geometry import euler_to_rotvec, pose2d_to_psi, psi_to_pose2d, rotvec_to_euler
from cryolens.core.particles import FIELDS, ClassSet, ParticleSet

__all__ = ["read_particles", "write_particles", "read_classes", "write_classes",
           "find_passthrough_files", "derive_uids", "load_dataset"]

Field = tuple  # ("name", "dtype") or ("name", "dtype", shape): Dataset.descr() entries

# Slot layouts of real CryoSPARC files (4k_dataset.cs header and the cryoDRGN fixtures); used
# when a slot that the input lacked has to be created (RELION-origin particles, new poses).
SLOTS: dict[str, list[Field]] = {
    "blob": [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
             ("blob/sign", "<f4"), ("blob/import_sig", "<u8")],
    "ctf": [("ctf/type", "O"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
            ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
            ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"), ("ctf/scale_const", "<f4"),
            ("ctf/shift_A", "<f4", (2,)), ("ctf/tilt_A", "<f4", (2,)), ("ctf/trefoil_A", "<f4", (2,)),
            ("ctf/tetra_A", "<f4", (4,)), ("ctf/anisomag", "<f4", (4,)), ("ctf/bfactor", "<f4")],
    "location": [("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"),
                 ("location/micrograph_path", "O"), ("location/micrograph_shape", "<u4", (2,)),
                 ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"),
                 ("location/min_dist_A", "<f4"), ("location/micrograph_psize_A", "<f4")],
}
for _p in ("alignments3D", "alignments2D"):
    SLOTS[_p] = [(f"{_p}/split", "<u4"), (f"{_p}/shift", "<f4", (2,)),
                 (f"{_p}/pose", "<f4", (3,)) if _p == "alignments3D" else (f"{_p}/pose", "<f4"),
                 *[(f"{_p}/{n}", "<f4") for n in ("psize_A", "error", "error_min", "resid_pow", "slice_pow",
                                                   "image_pow", "cross_cor", "alpha", "alpha_min", "weight",
                                                   "pose_ess", "shift_ess", "class_posterior")],
                 (f"{_p}/class", "<u4"), (f"{_p}/class_ess", "<f4")]
# 2D class averages (type "template"): blob/path -> Jx_NNN_class_averages.mrc, idx = class index.
TEMPLATE_SLOTS: dict[str, list[Field]] = {
    "blob": [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
             ("blob/res_A", "<f4")],
}
# Per-class statistics a template dataset keeps in cryolens's own slot (``class_stats/<field>``,
# float64; left out of the .csg, so CryoSPARC ignores them): cryoSPARC has no field for them, and
# without them a Class2D exported to .cs would be ranked on other evidence than the same Class2D
# read from RELION. Read back, they win over what the particles give (RELION's distribution is the
# model's class prior, not the share of hard assignments); n_particles is always recounted.
CLASS_STATS_SLOT = "class_stats"
CLASS_STATS = ("distribution", "posterior", "ess", "acc_rot", "acc_trans", "completeness")
# cryoSPARC's values for fields nobody set (imported particles in the real files: sign -1).
DEFAULTS: dict[str, Any] = {
    "blob/sign": -1.0, "ctf/type": "imported", "ctf/scale": 1.0,
    "alignments3D/alpha": 1.0, "alignments3D/class_posterior": 1.0, "alignments3D/class_ess": 1.0,
    "alignments2D/alpha": 1.0, "alignments2D/class_posterior": 1.0, "alignments2D/class_ess": 1.0,
}


# -- small helpers --------------------------------------------------------------------------------
def _name(f: Field) -> str:
    return f[0]


def _shape(f: Field) -> tuple[int, ...]:
    return tuple(f[2]) if len(f) > 2 else ()


def _is_str(f: Field) -> bool:
    return np.dtype(f[1]).kind in "OSU"


def _empty(f: Field, n: int) -> np.ndarray:
    """A column of n default values for field f."""
    if _is_str(f):
        return np.full(n, DEFAULTS.get(f[0], ""), dtype=object)
    return np.full((n, *_shape(f)), DEFAULTS.get(f[0], 0), dtype=np.dtype(f[1]))


def _num(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _strip(paths: np.ndarray) -> np.ndarray:
    return np.array([p[1:] if isinstance(p, str) and p.startswith(">") else p for p in paths], dtype=object)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality, NaN == NaN (numbers) / None == None (strings)."""
    if a.dtype == object or b.dtype == object:
        return np.array([(x == y) or (_isna(x) and _isna(y)) for x, y in zip(a, b)], dtype=bool)
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _isna(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x)) or x is pd.NA


def _to_unsigned(values: np.ndarray, dtype: str, what: str, source) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if len(v) and (np.nanmin(v) < 0 or np.nanmax(v) > np.iinfo(np.dtype(dtype)).max):
        raise InputError(f"{what} out of range for a cryoSPARC {np.dtype(dtype).name} field "
                         f"(min {np.nanmin(v):g}, max {np.nanmax(v):g})", source)
    return np.rint(v).astype(dtype)


def derive_uids(keys: Iterable[str]) -> np.ndarray:
    """Deterministic uint64 uids from identity strings (blake2b, 8 bytes, little endian).

    RELION-origin particles get ``derive_uids(ps.image_keys())``: converting the same STAR file
    twice gives the same uids, independent of the index zero-padding of ``rlnImageName``.
    """
    return np.array([int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "little")
                     for k in keys], dtype=np.uint64)


# -- loading ----------------------------------------------------------------------------------------
def load_dataset(path: str | os.PathLike, *, what: str = "cryoSPARC dataset") -> Dataset:
    """``Dataset.load`` with one-line errors: missing file, not a .cs, no uid, duplicate uids."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if not path.is_file():
        raise InputError("not a file", path)
    try:
        # the header first: Dataset.load invents random uids for a file without any
        fields = [f[0] for f in Dataset.inspect(path)["dtype"]]
        if "uid" not in fields:
            raise InputError(f"not a {what}: no 'uid' field (fields: {', '.join(fields[:8]) or 'none'})", path)
        dset = Dataset.load(path)
    except InputError:
        raise
    except Exception as exc:  # DatasetLoadError wraps numpy/format errors
        cause = exc.__cause__ or exc
        raise InputError(f"not a {what} (.cs) file: {type(cause).__name__}: {cause}", path) from None
    uid = np.asarray(dset["uid"])
    if len(np.unique(uid)) != len(uid):
        raise InputError(f"{len(uid) - len(np.unique(uid))} duplicate uid(s)", path)
    return dset


def _output_name(stem: str) -> str:
    """``cryosparc_P12_J24_001_particles`` -> ``particles``; ``P1_J12_particles_selected`` -> ..."""
    return re.sub(r"^(cryosparc_)?(P\d+_)?(J\d+_)?(\d+_)?", "", stem)


def _job_of(stem: str) -> str | None:
    m = re.search(r"(?:^|_)(J\d+)_", stem)
    return m.group(1) if m else None


def find_passthrough_files(path: str | os.PathLike) -> list[Path]:
    """The ``*_passthrough_<output>.cs`` file(s) next to a job's output file, cryoSPARC naming.

    Seen in real projects: ``J12_020_particles.cs`` + ``J12_passthrough_particles.cs``;
    ``particles_selected.cs`` + ``J419_passthrough_particles_selected.cs`` /
    ``P88_J181_passthrough_particles_selected.cs``; ``cryosparc_P12_J24_001_particles.cs`` +
    ``P12_J24_passthrough_particles.cs``; ``..._00000_particles.cs`` +
    ``..._passthrough_particles_all_classes.cs``. An exact output-name match wins; otherwise a
    single passthrough file whose output name starts with ours; files of another job are ignored.
    """
    path = Path(path)
    if "passthrough" in path.stem:
        return []
    out, job = _output_name(path.stem), _job_of(path.stem)
    cands = []
    for c in sorted(path.parent.glob("*passthrough_*.cs")):
        if c.resolve() == path.resolve():
            continue
        cjob = _job_of(c.stem)
        if job and cjob and cjob != job:
            continue
        m = re.search(r"passthrough_(.+)$", c.stem)
        if m:
            cands.append((c, m.group(1)))
    exact = [c for c, o in cands if o == out]
    if exact:
        return exact[:1]
    prefix = [c for c, o in cands if o.startswith(out)]
    return prefix if len(prefix) == 1 else []


def _guess_root(cs_path: Path, stack: str | None) -> Path:
    """Project directory that ``blob/path`` is relative to: where the first stack exists."""
    here = cs_path.resolve().parent
    if stack is None or os.path.isabs(stack):
        return here.parent if re.fullmatch(r"J\d+", here.name) else here
    for cand in (here, *here.parents, Path.cwd()):
        if (cand / stack).exists():
            return cand
    # CryoSPARC layout: <project>/J12/file.cs with paths like J3/extract/...
    return here.parent if re.fullmatch(r"J\d+", here.name) else here


# -- field <-> canonical codecs -------------------------------------------------------------------
@dataclass(frozen=True)
class _Ctx:
    """What an encoder may need beyond its own fields: other canonical columns, flags."""

    get: Callable[[str], np.ndarray | None]  # canonical column (float64/object) of the rows encoded
    prefix: np.ndarray  # bool per row: blob/path gets ">"
    have: np.ndarray  # bool per row: the row was read from a .cs (raw values exist)
    invert_y: bool
    source: Any


@dataclass(frozen=True)
class _Codec:
    name: str
    fields: tuple[str, ...]  # fields read (all must exist for the codec to decode)
    canon: tuple[str, ...]
    decode: Callable[[dict, bool], dict]  # ({field: arr}, invert_y) -> {canon: float64/object arr}
    encode: Callable[[dict, dict, _Ctx], dict]  # (canon, old fields, ctx) -> {field: arr}
    slot: str
    fill: float | None = None  # value for a missing canonical column on new rows (None: leave default)
    exact: bool = True  # False: compare with the canonical values kept at read time
    extra_writes: tuple[str, ...] = ()  # fields written besides ``fields``

    @property
    def writes(self) -> tuple[str, ...]:
        return self.fields + self.extra_writes


def _simple(name: str, field: str, canon: str, slot: str, dec=lambda x: x, enc=lambda y: y,
            kind: str = "f") -> _Codec:
    def decode(f, _inv):
        return {canon: _num(dec(_num(f[field])))}

    def encode(c, _old, ctx):
        v = enc(c[canon])
        return {field: _to_unsigned(v, "<u4", canon, ctx.source) if kind == "u" else v.astype("<f4")}

    return _Codec(name, (field,), (canon,), decode, encode, slot)


def _dec_stack(f, _inv):
    return {"image_stack": _strip(np.asarray(f["blob/path"], dtype=object))}


def _enc_stack(c, _old, ctx):
    s = np.asarray(c["image_stack"], dtype=object)
    return {"blob/path": np.array([(">" + str(v)) if p else str(v) for v, p in zip(s, ctx.prefix)], dtype=object)}


def _dec_pose3d(f, _inv):
    e = np.asarray(rotvec_to_euler(_num(f["alignments3D/pose"]).reshape(-1, 3)), dtype=np.float64).reshape(-1, 3)
    return {"rot": e[:, 0], "tilt": e[:, 1], "psi": e[:, 2]}


def _enc_pose3d(c, _old, _ctx):
    ang = np.stack([c["rot"], c["tilt"], c["psi"]], axis=1)
    return {"alignments3D/pose": np.asarray(euler_to_rotvec(ang), dtype=np.float64).reshape(-1, 3).astype("<f4")}


def _shift_codec(prefix: str) -> _Codec:
    shift, psize = f"{prefix}/shift", f"{prefix}/psize_A"

    def decode(f, _inv):
        px, ps = _num(f[shift]).reshape(-1, 2), _num(f[psize])
        ps = np.where(ps > 0, ps, np.nan)  # pixel size 0: unknown, so the shift has no value in A
        return {"shift_x": px[:, 0] * ps, "shift_y": px[:, 1] * ps}

    def encode(c, old, ctx):
        ps = _num(old[psize])
        pix = ctx.get("pixel_size")
        if pix is not None:
            ps = np.where(ps > 0, ps, pix)  # a new slot: the alignment pixel size is the image's
        if np.any(~(ps > 0)):
            raise InputError(f"cannot convert shifts to pixels: no {psize} and no pixel size", ctx.source)
        px = np.stack([c["shift_x"] / ps, c["shift_y"] / ps], axis=1).astype("<f4")
        return {shift: px, psize: ps.astype("<f4")}

    return _Codec(f"shift_{prefix}", (shift, psize), ("shift_x", "shift_y"), decode, encode, prefix, fill=0.0)


def _dec_coords(f, inv):
    shape = _num(f["location/micrograph_shape"]).reshape(-1, 2)  # [ny, nx]
    x, y = _num(f["location/center_x_frac"]), _num(f["location/center_y_frac"])
    return {"coord_x": x * shape[:, 1], "coord_y": ((1.0 - y) if inv else y) * shape[:, 0]}


def _enc_coords(c, old, ctx):
    shape = _num(old["location/micrograph_shape"]).reshape(-1, 2)
    if np.any(shape <= 0):
        raise InputError("cannot write coordinates: micrograph shape unknown", ctx.source)
    y = c["coord_y"] / shape[:, 0]
    return {"location/center_x_frac": (c["coord_x"] / shape[:, 1]).astype("<f4"),
            "location/center_y_frac": ((1.0 - y) if ctx.invert_y else y).astype("<f4")}


def _mic_codec() -> _Codec:
    def decode(f, _inv):
        return {"micrograph": np.asarray(f["location/micrograph_path"], dtype=object)}

    def encode(c, old, ctx):
        paths = np.array([str(v) for v in c["micrograph"]], dtype=object)
        muid = np.asarray(old["location/micrograph_uid"], dtype=np.uint64).copy()
        muid[~ctx.have] = derive_uids(paths[~ctx.have])  # cryoSPARC's own micrograph uids are kept
        return {"location/micrograph_path": paths, "location/micrograph_uid": muid}

    return _Codec("micrograph", ("location/micrograph_path",), ("micrograph",), decode, encode, "location",
                  extra_writes=("location/micrograph_uid",))


def _psi2d_codec() -> _Codec:
    def decode(f, _inv):
        return {"psi": np.asarray(pose2d_to_psi(_num(f["alignments2D/pose"])), dtype=np.float64)}

    def encode(c, _old, _ctx):
        return {"alignments2D/pose": np.asarray(psi_to_pose2d(c["psi"]), dtype=np.float64).astype("<f4")}

    return _Codec("pose_alignments2D", ("alignments2D/pose",), ("psi",), decode, encode, "alignments2D", fill=0.0)


def _tilt_codec() -> _Codec:
    """``ctf/tilt_A`` (A, scaled by Cs) <-> RELION beam tilt (mrad): tilt_A = sin(mrad/1000) * Cs[A]."""
    def decode(f, _inv):
        t, cs = _num(f["ctf/tilt_A"]).reshape(-1, 2), _num(f["ctf/cs_mm"])[:, None] * 1e7
        with np.errstate(divide="ignore", invalid="ignore"):
            mrad = np.where(cs > 0, np.arcsin(t / np.where(cs > 0, cs, 1.0)) * 1e3, np.where(t == 0, 0.0, np.nan))
        return {"beam_tilt_x": mrad[:, 0], "beam_tilt_y": mrad[:, 1]}

    def encode(c, old, ctx):
        cs = ctx.get("cs")
        cs = _num(old["ctf/cs_mm"]) if cs is None else cs
        mrad = np.stack([c["beam_tilt_x"], c["beam_tilt_y"]], axis=1)
        return {"ctf/tilt_A": (np.sin(mrad * 1e-3) * cs[:, None] * 1e7).astype("<f4")}

    return _Codec("beam_tilt", ("ctf/tilt_A", "ctf/cs_mm"), ("beam_tilt_x", "beam_tilt_y"), decode, encode, "ctf",
                  fill=0.0)


def _anisomag_codec() -> _Codec:
    """``ctf/anisomag`` (2x2, C order, identity subtracted) <-> RELION ``rlnMagMat00..11``."""
    names = ("mag_00", "mag_01", "mag_10", "mag_11")
    eye = np.array([1.0, 0.0, 0.0, 1.0])

    def decode(f, _inv):
        m = _num(f["ctf/anisomag"]).reshape(-1, 4) + eye
        return {k: m[:, i] for i, k in enumerate(names)}

    def encode(c, _old, _ctx):
        return {"ctf/anisomag": (np.stack([c[k] for k in names], axis=1) - eye).astype("<f4")}

    return _Codec("anisomag", ("ctf/anisomag",), names, decode, encode, "ctf")


# Priority order: the first codec that claims a canonical column owns it.
CODECS: list[_Codec] = [
    _Codec("image_stack", ("blob/path",), ("image_stack",), _dec_stack, _enc_stack, "blob"),
    _simple("image_index", "blob/idx", "image_index", "blob", kind="u"),
    _simple("pixel_size", "blob/psize_A", "pixel_size", "blob"),
    _Codec("box", ("blob/shape",), ("box",),
           lambda f, _i: {"box": _num(np.asarray(f["blob/shape"]).reshape(-1, 2)[:, 0])},
           lambda c, _o, ctx: {"blob/shape": np.repeat(_to_unsigned(c["box"], "<u4", "box", ctx.source)[:, None], 2, 1)},
           "blob"),
    _simple("voltage", "ctf/accel_kv", "voltage", "ctf"),
    _simple("cs", "ctf/cs_mm", "cs", "ctf"),
    _simple("amp_contrast", "ctf/amp_contrast", "amp_contrast", "ctf"),
    _simple("defocus_u", "ctf/df1_A", "defocus_u", "ctf"),
    _simple("defocus_v", "ctf/df2_A", "defocus_v", "ctf"),
    _simple("defocus_angle", "ctf/df_angle_rad", "defocus_angle", "ctf", np.rad2deg, np.deg2rad),
    _simple("phase_shift", "ctf/phase_shift_rad", "phase_shift", "ctf", np.rad2deg, np.deg2rad),
    _simple("ctf_bfactor", "ctf/bfactor", "ctf_bfactor", "ctf"),
    _simple("ctf_scale", "ctf/scale", "ctf_scale", "ctf"),
    _simple("optics_group", "ctf/exp_group_id", "optics_group", "ctf", lambda x: x + 1, lambda y: y - 1, "u"),
    _tilt_codec(),
    _anisomag_codec(),
    _Codec("pose_alignments3D", ("alignments3D/pose",), ("rot", "tilt", "psi"), _dec_pose3d, _enc_pose3d,
           "alignments3D", fill=0.0, exact=False),
    _shift_codec("alignments3D"),
    _psi2d_codec(),
    _shift_codec("alignments2D"),
    _simple("class_alignments2D", "alignments2D/class", "class_id", "alignments2D", lambda x: x + 1,
            lambda y: y - 1, "u"),
    _simple("class_alignments3D", "alignments3D/class", "class_id", "alignments3D", lambda x: x + 1,
            lambda y: y - 1, "u"),
    _simple("half_set", "alignments3D/split", "half_set", "alignments3D", lambda x: x + 1, lambda y: y - 1, "u"),
    _mic_codec(),
    _Codec("coords", ("location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"),
           ("coord_x", "coord_y"), _dec_coords, _enc_coords, "location"),
]
_RES = _simple("resolution", "blob/res_A", "resolution", "blob")
CLASS_CODECS: list[_Codec] = [CODECS[0], CODECS[1], CODECS[2], CODECS[3], _RES]
_BY_NAME = {c.name: c for c in CODECS + [_RES]}


# -- generic decode (file columns -> table + meta) --------------------------------------------------
def _decode(cols: dict[str, np.ndarray], descr: list[Field], codecs: Sequence[_Codec], invert_y: bool,
            source: str | os.PathLike | None = None):
    """Split file columns into canonical columns, passthrough columns and raw (by-uid) arrays."""
    uid = np.asarray(cols["uid"], dtype=np.uint64)
    active, claimed = [], set()
    for c in codecs:
        if all(f in cols for f in c.fields) and not claimed & set(c.canon):
            active.append(c)
            claimed |= set(c.canon)
    canon: dict[str, np.ndarray] = {}
    for c in active:
        try:
            canon.update(c.decode({f: cols[f] for f in c.fields}, invert_y))
        except (TypeError, ValueError) as exc:  # e.g. a number field stored as text
            text = [f for f in c.fields if np.asarray(cols[f]).dtype.kind in "OSU"]
            field = (text or list(c.fields))[0]
            raise InputError(f"field {field} ({np.asarray(cols[field]).dtype}) cannot be read as "
                             f"{'/'.join(c.canon)}: {exc}", source) from None
    coded = {f for c in active for f in c.fields}
    order = np.argsort(uid, kind="stable")
    raw = {_name(f): np.array(cols[_name(f)])[order] for f in descr
           if _name(f) != "uid" and (_name(f) in coded or _shape(f))}
    at_read = {k: canon[k][order] for c in active if not c.exact for k in c.canon}
    passthrough = {_name(f): cols[_name(f)] for f in descr
                   if _name(f) != "uid" and _name(f) not in coded and not _shape(f)}
    prefix = ""
    if "blob/path" in cols and len(uid):
        has = np.array([isinstance(p, str) and p.startswith(">") for p in cols["blob/path"]])
        prefix = ">" if has.any() else ""
    meta = {"descr": [tuple(f) for f in descr], "codecs": [c.name for c in active],
            "raw_uid": uid[order], "raw": raw, "at_read": at_read, "blob_path_prefix": prefix,
            "invert_y": bool(invert_y)}
    labels = {k: c.fields[0] for c in active for k in c.canon}
    return uid, canon, passthrough, meta, labels


def _table(uid: np.ndarray, canon: dict, passthrough: dict, n: int) -> pd.DataFrame:
    data: dict[str, Any] = {"uid": np.asarray(uid, dtype=np.uint64)}
    for name in FIELDS:
        if name in canon and name != "uid":
            v = canon[name]
            if FIELDS[name][0] == "int" and v.dtype != object and not np.isnan(v).any():
                v = v.astype(np.int64)
            data[name] = v
    for name, v in passthrough.items():
        data[name] = np.asarray(v, dtype=object) if np.asarray(v).dtype.kind in "OSU" else np.asarray(v)
    return pd.DataFrame(data, index=pd.RangeIndex(n))


def _dataset_columns(dset: Dataset) -> tuple[dict[str, np.ndarray], list[Field]]:
    descr = [tuple(f) for f in dset.descr()]
    return {_name(f): np.array(dset[_name(f)]) for f in descr}, descr


# -- particles: read -------------------------------------------------------------------------------
def read_particles(path: str | os.PathLike, project_dir: str | os.PathLike | None = None,
                   passthrough: Sequence[str | os.PathLike] = (), *, find_passthrough: bool = True,
                   invert_y: bool = False) -> ParticleSet:
    """Read a cryoSPARC particle ``.cs`` (joined on uid with its passthrough files) as a ParticleSet.

    ``passthrough``: passthrough files to join; when empty and ``find_passthrough`` is true they are
    looked for next to ``path`` by cryoSPARC's naming (:func:`find_passthrough_files`). Fields of
    the main file win over passthrough fields of the same name (as CryoSPARC joins outputs).
    ``project_dir``: the directory ``blob/path`` is relative to (default: where the first stack
    is found above the file, else the parent of the job directory). ``invert_y``: see module doc.
    """
    path = Path(path)
    dset = load_dataset(path, what="cryoSPARC particle dataset")
    cols, descr = _dataset_columns(dset)
    del dset
    origin = {_name(f): "main" for f in descr}
    explicit = [Path(p) for p in passthrough]
    found = [] if explicit or not find_passthrough else find_passthrough_files(path)
    used: list[str] = []
    for pt_path, was_found in [(p, False) for p in explicit] + [(p, True) for p in found]:
        pt = load_dataset(pt_path, what="cryoSPARC passthrough dataset")
        pt_uid = np.asarray(pt["uid"], dtype=np.uint64)
        srt = np.argsort(pt_uid, kind="stable")
        pos = np.searchsorted(pt_uid[srt], cols["uid"])
        pos = np.minimum(pos, max(len(pt_uid) - 1, 0))
        ok = (pt_uid[srt][pos] == cols["uid"]) if len(pt_uid) else np.zeros(len(cols["uid"]), bool)
        if not ok.all():
            msg = (f"{int((~ok).sum())} of {len(ok)} particles of {path.name} are not in this passthrough "
                   "file (does it belong to another job?)")
            if was_found:
                warnings.warn(f"{pt_path}: {msg}; not joined", stacklevel=2)
                continue
            raise InputError(msg, pt_path)
        rows = srt[pos]
        for f in pt.descr():
            f = tuple(f)
            if _name(f) == "uid" or _name(f) in cols:
                continue
            cols[_name(f)] = np.array(pt[_name(f)])[rows]
            descr.append(f)
            origin[_name(f)] = "passthrough"
        used.append(str(pt_path))

    uid, canon, pthru, meta, labels = _decode(cols, descr, CODECS, invert_y, path)
    meta.update(origin=origin, file=str(path), passthrough_files=used)
    table = _table(uid, canon, pthru, len(uid))
    first = str(table["image_stack"].iloc[0]) if "image_stack" in table and len(table) else None
    root = Path(project_dir) if project_dir is not None else _guess_root(path, first)
    return ParticleSet(table, root=root, source=str(path), meta={"labels": labels, "cryosparc": meta})


# -- generic encode (table + meta -> file columns) --------------------------------------------------
def _table_uids(table: pd.DataFrame, keys: Callable[[], pd.Series], source) -> np.ndarray:
    n = len(table)
    uid = np.zeros(n, dtype=np.uint64)
    known = np.zeros(n, dtype=bool)
    if "uid" in table.columns:
        col = table["uid"]
        if col.dtype.kind == "f":
            finite = col.dropna()
            if len(finite) and (finite.abs() > 2 ** 53).any():
                raise InputError("the uid column was converted to float and lost precision (e.g. by "
                                 "concatenating particle sets with and without uids); keep it uint64 or "
                                 "pandas UInt64", source)
        known = col.notna().to_numpy()
        if known.any():
            uid[known] = np.array([int(v) for v in col[known]], dtype=np.uint64)
    if not known.all():
        k = keys()[~known]
        repeat = k.groupby(k).cumcount().to_numpy()  # the same image twice: "#1", "#2"... after the key
        uid[~known] = derive_uids([key if r == 0 else f"{key}#{r}" for key, r in zip(k, repeat)])
    if len(np.unique(uid)) != n:
        raise InputError(f"{n - len(np.unique(uid))} duplicate uid(s) among the particles to write", source)
    return uid


def _canon_col(table: pd.DataFrame, name: str) -> np.ndarray | None:
    if name not in table.columns:
        return None
    s = table[name]
    kind = FIELDS[name][0] if name in FIELDS else ("str" if s.dtype.kind in "OSUT" or
                                                   isinstance(s.dtype, pd.StringDtype) else "float")
    if kind == "str":
        return np.array([None if _isna(v) else str(v) for v in s.to_numpy(dtype=object)], dtype=object)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _passthrough_col(series: pd.Series, f: Field, source) -> np.ndarray:
    dt = np.dtype(f[1])
    if _is_str(f):
        return np.array(["" if _isna(v) else str(v) for v in series.to_numpy(dtype=object)], dtype=object)
    vals = series.to_numpy()
    if vals.dtype == dt:
        return vals.copy()
    num = pd.to_numeric(series, errors="coerce")
    if dt.kind in "ui":
        num = num.fillna(0)
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        if len(num) and (num.min() < lo or num.max() > hi):
            raise InputError(f"column {f[0]} has values outside {dt.name}", source)
        return num.to_numpy().astype(dt)
    return num.to_numpy(dtype=np.float64, na_value=np.nan).astype(dt)


def _nan(k: str, n: int) -> np.ndarray:
    if FIELDS.get(k, ("float",))[0] == "str":
        return np.full(n, None, dtype=object)
    return np.full(n, np.nan)


@dataclass(frozen=True)
class _Rows:
    """The rows to write and where each was in the file it was read from."""

    uid: np.ndarray
    pos: np.ndarray  # row -> index into ``raw``'s arrays (meaningful where ``have``)
    have: np.ndarray  # bool per row: read from a .cs (raw values exist)
    raw: dict[str, np.ndarray]  # meta["cryosparc"]["raw"]: field -> values in sorted-uid order
    at_read: dict[str, np.ndarray]  # canonical values kept at read time (inexact codecs)
    invert_y: bool  # the y convention of the file the raw values came from


def _rows(cs: dict, uid: np.ndarray) -> _Rows:
    """Look each uid up among the uids read (``raw_uid`` is sorted)."""
    raw_uid = cs.get("raw_uid", np.zeros(0, np.uint64))
    if len(raw_uid):
        pos = np.minimum(np.searchsorted(raw_uid, uid), len(raw_uid) - 1)
        have = raw_uid[pos] == uid
    else:
        pos, have = np.zeros(len(uid), dtype=np.int64), np.zeros(len(uid), dtype=bool)
    return _Rows(uid, pos, have, cs.get("raw", {}), cs.get("at_read", {}), bool(cs.get("invert_y", False)))


def _file_layout(cs: dict, new_codecs: Sequence[_Codec],
                 slots: dict[str, list[Field]]) -> tuple[list[Field], list[_Codec], set[str]]:
    """(fields, codecs, fields added): the input's fields and codecs, plus each new codec's slot
    layout (only the fields the codec writes where the input holds part of that slot)."""
    descr: list[Field] = [tuple(f) for f in cs.get("descr", [("uid", "<u8")])]
    names = {_name(f) for f in descr}
    active = [_BY_NAME[c] for c in cs.get("codecs", []) if c in _BY_NAME]
    added: set[str] = set()
    for c in new_codecs:
        if c in active:
            continue
        active.append(c)
        slot = slots[c.slot]
        if any(_name(f) in names for f in slot):
            slot = [f for f in slot if _name(f) in c.writes]
        missing = [f for f in slot if _name(f) not in names]
        descr += missing
        names |= {_name(f) for f in missing}
        added |= {_name(f) for f in missing}
    return descr, active, added


def _initial_columns(table: pd.DataFrame, descr: list[Field], rows: _Rows, fresh: set[str],
                     preset: dict[str, np.ndarray], source) -> dict[str, np.ndarray]:
    """Every field before conversion: raw values of read rows, passthrough columns from the table,
    defaults for ``fresh`` fields (new slots, codec outputs); ``preset`` values for rows not read."""
    n = len(table)
    out: dict[str, np.ndarray] = {"uid": rows.uid}
    for f in descr:
        name = _name(f)
        if name == "uid":
            continue
        if name in rows.raw:
            col = _empty(f, n)
            col[rows.have] = rows.raw[name][rows.pos[rows.have]]
        elif name in table.columns and not _shape(f):
            col = _passthrough_col(table[name], f, source)
        elif name in fresh:
            col = _empty(f, n)
        else:
            continue  # a passthrough column the job dropped: not written
        if name in preset:
            col[~rows.have] = preset[name][~rows.have]
        out[name] = col
    return out


def _values_as_read(c: _Codec, rows: _Rows) -> dict[str, np.ndarray]:
    """The canonical values of codec ``c`` each row had when read (NaN / None for new rows)."""
    n = len(rows.uid)
    if c.exact and rows.have.any() and all(f in rows.raw for f in c.fields):
        return c.decode({f: rows.raw[f][rows.pos] for f in c.fields}, rows.invert_y)
    if not c.exact and rows.have.any():
        return {k: rows.at_read[k][rows.pos] if k in rows.at_read else _nan(k, n) for k in c.canon}
    return {k: _nan(k, n) for k in c.canon}


def _rows_to_convert(c: _Codec, cur: dict[str, np.ndarray | None], as_read: dict[str, np.ndarray],
                     have: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(canonical values with blanks filled, rows to convert): changed rows and new rows.

    A blank value of a read row is the value as read; of a new row, the codec's ``fill``, or (no
    fill) the row keeps the fields' defaults.
    """
    changed = ~have
    valid = np.ones(len(have), dtype=bool)
    filled: dict[str, np.ndarray] = {}
    for k in c.canon:
        v = as_read[k].copy() if cur[k] is None else cur[k].copy()
        missing = np.array([_isna(x) for x in v], dtype=bool) if v.dtype == object else np.isnan(v)
        v[missing & have] = as_read[k][missing & have]
        if c.fill is not None:
            v[missing & ~have] = c.fill
        else:
            valid &= ~(missing & ~have)
        filled[k] = v
        changed = changed | (have & ~_same(v, as_read[k]))
    return filled, np.flatnonzero(changed & valid)


def _blob_path_prefix(c: _Codec, out: dict[str, np.ndarray], idx: np.ndarray, have: np.ndarray,
                      cs: dict) -> np.ndarray:
    """Per converted row: does ``blob/path`` get the leading ``>``? As read; new rows as the input's."""
    if c.name != "image_stack" or "blob/path" not in out:
        return np.zeros(len(idx), dtype=bool)
    had = np.array([isinstance(p, str) and p.startswith(">") for p in out["blob/path"][idx]], dtype=bool)
    return np.where(have[idx], had, cs.get("blob_path_prefix", "") == ">")


def _convert_changed(c: _Codec, table: pd.DataFrame, rows: _Rows, out: dict[str, np.ndarray], cs: dict,
                     source) -> None:
    """Overwrite the fields of codec ``c`` in ``out`` for the rows whose canonical values changed."""
    cur = {k: _canon_col(table, k) for k in c.canon}
    if all(v is None for v in cur.values()):
        return  # the job dropped these columns: raw values stay
    cur, idx = _rows_to_convert(c, cur, _values_as_read(c, rows), rows.have)
    if not len(idx):
        return
    old = {f: out[f][idx] for f in set(c.writes) | set(c.fields) if f in out}

    def get(name: str) -> np.ndarray | None:
        v = _canon_col(table, name)
        return None if v is None else v[idx]

    ctx = _Ctx(get, _blob_path_prefix(c, out, idx, rows.have, cs), rows.have[idx], rows.invert_y, source)
    for fname, vals in c.encode({k: v[idx] for k, v in cur.items()}, old, ctx).items():
        if fname in out:
            out[fname][idx] = vals


def _encode(table: pd.DataFrame, cs: dict, uid: np.ndarray, new_codecs: Sequence[_Codec],
            slots: dict[str, list[Field]], source,
            preset: dict[str, np.ndarray] | None = None) -> tuple[list[Field], dict[str, np.ndarray]]:
    """File columns for ``table``: raw values where unchanged, converted values where changed.

    ``cs`` is ``meta["cryosparc"]`` of the set (may be empty); ``new_codecs`` map canonical columns
    the input's slots did not hold, adding their slots' fields (layouts from ``slots``); ``preset``
    gives values of fields for rows that were not read from a .cs (e.g. micrograph shapes from the
    MRC headers).
    """
    descr, active, added = _file_layout(cs, new_codecs, slots)
    rows = _rows(cs, uid)
    coded = {f for c in active for f in c.writes}
    out = _initial_columns(table, descr, rows, added | coded, preset or {}, source)
    for c in active:
        _convert_changed(c, table, rows, out, cs, source)
    return [f for f in descr if _name(f) in out], out


def _new_particle_codecs(table: pd.DataFrame, cs: dict) -> tuple[list[_Codec], list[str]]:
    """Codecs for canonical columns that no slot of the input held (RELION-origin, new poses).

    Returns (new codecs, names of read-time codecs to leave raw): a 2D set that got 3D poses keeps
    its 2D alignment as read and gains an ``alignments3D`` slot.
    """
    active = list(cs.get("codecs", []))
    claimed = {k for name in active for k in _BY_NAME[name].canon}
    cols = set(table.columns)
    new: list[_Codec] = []
    dropped: list[str] = []

    def add(name: str) -> None:
        if name not in active and _BY_NAME[name] not in new:
            new.append(_BY_NAME[name])

    for name in ("image_stack", "image_index", "pixel_size", "box", "voltage", "cs", "amp_contrast",
                 "defocus_u", "defocus_v", "defocus_angle", "phase_shift", "ctf_bfactor", "ctf_scale",
                 "optics_group"):
        if name in cols and name not in claimed:
            add(name)
    for codec in (_BY_NAME["beam_tilt"], _BY_NAME["anisomag"]):
        if set(codec.canon) <= cols and not set(codec.canon) & claimed and ("cs" in cols or codec.name != "beam_tilt"):
            add(codec.name)
    three_d = "pose_alignments3D" in active or bool({"rot", "tilt"} & cols)
    shifts = bool({"shift_x", "shift_y"} & cols) and ("pixel_size" in cols or "shift_x" in claimed)
    if three_d:
        if "pose_alignments3D" not in active:
            add("pose_alignments3D")
            dropped += [n for n in ("pose_alignments2D", "shift_alignments2D") if n in active]
        if shifts and "shift_alignments3D" not in active:
            add("shift_alignments3D")
            dropped += [n for n in ("shift_alignments2D",) if n in active and n not in dropped]
        if "half_set" in cols and "half_set" not in claimed:
            add("half_set")
    else:
        if "psi" in cols and "psi" not in claimed:
            add("pose_alignments2D")
        if shifts and "shift_x" not in claimed:
            add("shift_alignments2D")
    if "class_id" in cols and "class_id" not in claimed:
        two_d = "pose_alignments2D" in active or any(c.name == "pose_alignments2D" for c in new)
        add("class_alignments2D" if two_d or not three_d else "class_alignments3D")
    return new, dropped


def _micrograph_headers(table: pd.DataFrame, root: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    """([ny, nx] (n, 2), pixel size (n,)) of each particle's micrograph from its MRC header, or None."""
    if "micrograph" not in table.columns:
        return None
    info: dict[str, tuple[int, int, float]] = {}
    mics = table["micrograph"].astype(str).to_numpy(dtype=object)
    for m in pd.unique(mics):
        p = Path(m) if root is None or os.path.isabs(m) else Path(root) / m
        try:
            si = mrc.stack_info(p)
        except Exception:  # missing or unreadable micrograph: coordinates cannot be written
            return None
        info[m] = (si.ny, si.nx, si.pixel_size or 0.0)
    shape = np.array([info[m][:2] for m in mics], dtype=np.uint32).reshape(-1, 2)
    return shape, np.array([info[m][2] for m in mics], dtype=np.float32)


def _stack_boxes(table: pd.DataFrame, root: Path | None) -> np.ndarray | None:
    """Box size of each particle's image stack from its MRC header, or None if a stack is unreadable."""
    stacks = table["image_stack"].astype(str).to_numpy(dtype=object)
    box: dict[str, int] = {}
    for s in pd.unique(stacks):
        p = Path(s) if root is None or os.path.isabs(s) else Path(root) / s
        try:
            box[s] = int(mrc.stack_info(p).nx)
        except Exception:
            return None
    return np.array([box[s] for s in stacks], dtype=np.uint32)


def _kept(table: pd.DataFrame) -> str:
    return " (kept in rln/ fields)" if any(str(c).startswith("rln/") for c in table.columns) else ""


def _save(path: Path, descr: list[Field], cols: dict[str, np.ndarray]) -> None:
    dset = Dataset([(_name(f), cols[_name(f)]) for f in descr])
    with atomic_path(path) as tmp:
        dset.save(tmp)


# -- particles: write ------------------------------------------------------------------------------
def write_particles(ps: ParticleSet, path: str | os.PathLike,
                    passthrough_out: str | os.PathLike | None = None) -> Path:
    """Write ``ps`` as a cryoSPARC particle ``.cs`` (numpy format, atomically). Returns the path.

    Every field of the input is written with its dtype and, where the job did not change it, its
    value. Particles without a uid (RELION origin) get :func:`derive_uids` of their image identity
    (``"<0-based index>@<stack>"``). Table columns named ``prefix/name`` that the input lacked are
    added as fields. ``passthrough_out``: also write the fields that came from passthrough files
    there (uid + those), leaving the main file with uid + its own fields, as CryoSPARC lays out a
    job's outputs.
    """
    path = Path(path)
    descr, cols = particle_columns(ps, path)
    if passthrough_out is None:
        _save(path, descr, cols)
        return path
    origin = (ps.meta.get("cryosparc") or {}).get("origin", {})
    main = [f for f in descr if origin.get(_name(f), "main") == "main"]
    pthru = [("uid", "<u8")] + [f for f in descr if origin.get(_name(f)) == "passthrough"]
    _save(path, main, cols)
    _save(Path(passthrough_out), pthru, cols)
    return path


def particle_columns(ps: ParticleSet, path: str | os.PathLike = "?") -> tuple[list[Field], dict[str, np.ndarray]]:
    """(fields, columns) of the ``.cs`` that :func:`write_particles` writes for ``ps``."""
    src = ps.source
    cs = ps.meta.get("cryosparc") or {}
    t = ps.table
    uid = _table_uids(t, ps.image_keys, src)
    new, dropped = _new_particle_codecs(t, cs)
    cs_eff = dict(cs, codecs=[c for c in cs.get("codecs", []) if c not in dropped])
    preset: dict[str, np.ndarray] = {}
    if {"shift_x", "shift_y"} & set(t.columns) and not any("shift_x" in c.canon for c in new) \
            and not any("shift_x" in _BY_NAME[c].canon for c in cs_eff["codecs"]):
        warnings.warn(f"{path}: origin shifts not in cryoSPARC's alignment fields{_kept(t)}: the file gives "
                      "no pixel size (cryoSPARC stores shifts in pixels)", stacklevel=3)
    if {"coord_x", "coord_y"} <= set(t.columns) and "coords" not in cs_eff["codecs"]:
        hdr = _micrograph_headers(t, ps.root)
        if hdr is None:
            warnings.warn(f"{path}: particle coordinates not in cryoSPARC's location fields{_kept(t)}: the "
                          f"micrographs are not readable under {ps.root} (their shapes give the fractions "
                          "cryoSPARC stores)", stacklevel=3)
        else:  # a location slot only with coordinates (a micrograph name alone is not a location)
            new += [_BY_NAME["coords"]] + ([_BY_NAME["micrograph"]] if "micrograph" not in cs_eff["codecs"] else [])
            preset = {"location/micrograph_shape": hdr[0], "location/micrograph_psize_A": hdr[1]}
    if "blob/shape" not in {_name(f) for f in cs.get("descr", [])} and "box" not in t.columns \
            and "image_stack" in t.columns and len(t):
        box = _stack_boxes(t, ps.root)  # RELION 3.0 stars give no image size: ask the stacks
        if box is not None:
            preset["blob/shape"] = np.repeat(box[:, None], 2, axis=1)
    descr, cols = _encode(t, cs_eff, uid, new, SLOTS, src, preset)
    names = {_name(f) for f in descr}
    for c in t.columns:  # fields a job added (e.g. "cryolens/score")
        if "/" in str(c) and c not in names and c not in FIELDS:
            s = t[c]
            if s.dtype.kind in "biuf":
                arr = s.to_numpy()
            else:
                arr = np.array(["" if _isna(v) else str(v) for v in s.to_numpy(dtype=object)], dtype=object)
            descr.append((c, "O") if arr.dtype == object else (c, arr.dtype.str))
            cols[c] = arr
    return descr, cols


# -- classes -------------------------------------------------------------------------------------
def read_classes(path_templates_cs: str | os.PathLike, particles_cs: str | os.PathLike | ParticleSet | None = None,
                 project_dir: str | os.PathLike | None = None, *, load_images: bool = True) -> ClassSet:
    """2D classes from a cryoSPARC template dataset (``class_averages`` / ``templates_selected``).

    ``class_id = blob/idx + 1`` (the class index into ``Jx_NNN_class_averages.mrc``, also what the
    particles' ``alignments2D/class`` counts); ``resolution = blob/res_A``. With particles (a
    ``.cs`` path or a ParticleSet), membership is their ``class_id`` and per-class statistics are
    computed: ``n_particles``, ``distribution`` (fraction of all particles), ``posterior`` (mean
    ``alignments2D/class_posterior`` of members) and ``ess`` (mean ``alignments2D/class_ess``);
    NaN for empty classes. Images (K, box, box) float32 are read from the stack(s) relative to
    ``project_dir`` unless ``load_images`` is false.
    """
    path = Path(path_templates_cs)
    dset = load_dataset(path, what="cryoSPARC template (class average) dataset")
    cols, descr = _dataset_columns(dset)
    del dset
    for need in ("blob/path", "blob/idx"):
        if need not in cols:
            raise InputError(f"missing field {need} (is this a class-average/template .cs?)", path)
    uid, canon, pthru, meta, labels = _decode(cols, descr, CLASS_CODECS, False, path)
    meta.update(origin={_name(f): "main" for f in descr}, file=str(path))
    table = pd.DataFrame({"class_id": canon["image_index"].astype(np.int64) + 1}) if len(uid) else \
        pd.DataFrame({"class_id": np.zeros(0, np.int64)})
    if table["class_id"].duplicated().any():
        raise InputError("several templates share a blob/idx (class index)", path)
    table["image_stack"] = canon["image_stack"]
    table["image_index"] = canon["image_index"].astype(np.int64)
    if "resolution" in canon:
        table["resolution"] = canon["resolution"]
    table["uid"] = uid
    for k, v in pthru.items():
        stat = k[len(CLASS_STATS_SLOT) + 1:] if k.startswith(CLASS_STATS_SLOT + "/") else None
        table[stat if stat in CLASS_STATS else k] = \
            np.asarray(v, dtype=object) if np.asarray(v).dtype.kind in "OSU" else v
    psize = canon.get("pixel_size")
    pixel_size = float(psize[0]) if psize is not None and len(psize) else None
    if psize is not None and len(np.unique(psize)) > 1:
        raise InputError(f"class averages with different pixel sizes {sorted(set(psize.tolist()))}", path)

    particles = None
    if particles_cs is not None:
        particles = particles_cs if isinstance(particles_cs, ParticleSet) else \
            read_particles(particles_cs, project_dir=project_dir)
        if not particles.has("class_id"):
            raise InputError("the particles carry no 2D class assignment (alignments2D/class)", particles.source)
        pt = particles.table
        counts = pt["class_id"].value_counts()
        total = max(len(pt), 1)
        table["n_particles"] = [int(counts.get(k, 0)) for k in table["class_id"]]
        carried = set(table.columns) & set(CLASS_STATS)  # statistics the templates carry win
        meta["derived_stats"] = sorted({"distribution", "posterior", "ess"} - carried)  # not written back
        if "distribution" not in carried:
            table["distribution"] = table["n_particles"] / total
        for col, field in (("posterior", "alignments2D/class_posterior"), ("ess", "alignments2D/class_ess")):
            if col in carried:
                continue
            if field in pt.columns:
                mean = pd.to_numeric(pt[field], errors="coerce").astype(float).groupby(pt["class_id"]).mean()
                table[col] = [float(mean.get(k, np.nan)) for k in table["class_id"]]
            else:
                table[col] = np.nan

    first = str(table["image_stack"].iloc[0]) if len(table) else None
    root = Path(project_dir) if project_dir is not None else (
        particles.root if particles is not None and particles.root is not None else _guess_root(path, first))
    images = None
    if load_images and len(table):
        from cryolens.core.images import ImageSource

        codes, stacks = pd.factorize(table["image_stack"].astype(str))
        src = ImageSource(list(stacks), codes.astype(np.int64), table["image_index"].to_numpy(np.int64), root=root)
        try:
            images = src.read(np.arange(len(table)))
        finally:
            src.close()
    meta["root"] = str(root)
    cs = ClassSet(table, images, pixel_size, particles, source=str(path),
                  meta={"labels": {**labels, "class_id": "blob/idx"}, "cryosparc": meta})
    cs.check_finite_images(root)
    return cs


def write_classes(classset: ClassSet, path: str | os.PathLike, project_dir: str | os.PathLike | None = None) -> Path:
    """Write a cryoSPARC template dataset (``blob/path``, ``blob/idx``, ``blob/res_A`` ...) atomically.

    Classes that point at a stack (``image_stack``/``image_index``) keep it. A ClassSet without
    them (e.g. new cluster averages) gets its images written to ``<path stem>.mrc`` next to ``path``;
    ``blob/path`` is then relative to ``project_dir`` (default: the directory above ``path``'s folder,
    CryoSPARC's ``<project>/Jx/`` layout).
    """
    path = Path(path)
    t = classset.table.copy()
    cs = classset.meta.get("cryosparc") or {}
    if "class_id" not in t.columns:
        raise InputError("class table has no class_id", classset.source)
    if "image_stack" not in t.columns or "image_index" not in t.columns:
        if classset.images is None:
            raise InputError("classes have neither a stack (image_stack/image_index) nor images to write",
                             classset.source)
        stack = path.with_name(path.stem + ".mrc")
        mrc.write_stack(stack, np.asarray(classset.images, dtype=np.float32), classset.pixel_size)
        proj = Path(project_dir) if project_dir is not None else path.resolve().parent.parent
        try:
            rel = os.path.relpath(stack.resolve(), proj.resolve())
        except ValueError:
            rel = str(stack.resolve())
        t["image_stack"] = rel if not rel.startswith("..") else str(stack.resolve())
        t["image_index"] = np.arange(len(t))
    if classset.pixel_size is not None:
        t["pixel_size"] = float(classset.pixel_size)
    if classset.images is not None and len(classset.images):
        t["box"] = int(np.asarray(classset.images).shape[-1])
    keys = lambda: t["image_index"].astype(np.int64).astype(str) + "@" + t["image_stack"].astype(str)  # noqa: E731
    uid = _table_uids(t, keys, classset.source)
    new = [c for c in CLASS_CODECS if c.name not in cs.get("codecs", []) and c.canon[0] in t.columns]
    derived = set(cs.get("derived_stats", ()))  # what read_classes computed from cryoSPARC's own fields
    stats = {f"{CLASS_STATS_SLOT}/{c}": pd.to_numeric(t[c], errors="coerce").to_numpy(np.float64)
             for c in CLASS_STATS if c in t.columns and c not in derived}
    # n_particles is recounted from the particles by whoever reads the classes (and by CryoSPARC)
    t = t.drop(columns=[c for c in ("n_particles", "class_id", *CLASS_STATS, *stats) if c in t.columns])
    descr, cols = _encode(t, cs, uid, new, TEMPLATE_SLOTS, classset.source)
    descr = [f for f in descr if _name(f) not in stats] + [(k, "<f8") for k in stats]
    _save(path, descr, {**cols, **stats})
    return path
