"""MRC input/output: the one place in cryolens that knows the format (through ``mrcfile``).

Reading is permissive (RELION 3 and cryoSPARC write stacks without the ``MAP`` id or machine
stamp), but every header is checked against the file before any data is touched, so a bad file
gives an ``InputError`` naming it and the problem instead of garbage or a numpy traceback.

Conventions: maps are returned in (z, y, x) = (D, H, W) order whatever the header's axis order
(mapc/mapr/maps); stacks are (N, ny, nx); a single 2D image is a stack of one. A pixel or voxel
size of 0 in the header means "unknown" and is reported as ``None``: the caller supplies it
(e.g. from the STAR file, which always wins over the MRC header for particle stacks).
Writing is float32 (mode 2) and atomic (temporary name, renamed on success).
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import mrcfile
import numpy as np
from mrcfile.mrcinterpreter import MrcInterpreter

from .atomic import atomic_path
from .errors import InputError
from .finite import require_finite

__all__ = ["StackInfo", "MapInfo", "read_map", "map_info", "write_map", "write_stack", "stack_writer",
           "stack_info", "open_stack", "read_class_stack", "MRC_SUFFIXES", "SUPPORTED_MODES"]

MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st")  # names cryolens takes for MRC files

# modes cryolens reads (all returned as float32 by the readers); 3, 4 (complex) and 101 (4-bit) are not
SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_KNOWN_MODES = {**SUPPORTED_MODES, 3: "complex int16", 4: "complex float32", 101: "4-bit"}
_HEADER_BYTES = 1024


@dataclass(frozen=True)
class StackInfo:
    """What the header says about an image stack (2D image: n=1)."""

    n: int
    ny: int
    nx: int
    pixel_size: float | None  # Angstrom; None where the header has 0
    dtype: np.dtype  # on-disk dtype, byte order included
    offset: int = _HEADER_BYTES  # byte offset of the first image (header + extended header)

    @property
    def image_bytes(self) -> int:
        return self.ny * self.nx * self.dtype.itemsize


@dataclass(frozen=True)
class MapInfo:
    """What the header says about a map, in (z, y, x) order after the header's axis order."""

    shape: tuple[int, int, int]  # (D, H, W)
    voxel_size_xyz: tuple[float, float, float]  # Angstrom, per axis; 0 = unknown
    cell_angles: tuple[float, float, float]  # alpha, beta, gamma (degrees)
    axis_order: tuple[int, int, int]  # mapc, mapr, maps (1=x, 2=y, 3=z)
    space_group: int
    mode: int

    @property
    def voxel_size(self) -> float | None:
        """The voxel size if cubic; None if unknown (0 in the header); NaN if not cubic.

        Axes with 0 (unset, as relion_project leaves z) are ignored."""
        v = [x for x in self.voxel_size_xyz if x > 0]
        if not v:
            return None
        return v[0] if max(v) - min(v) <= 1e-3 * max(v) else math.nan

    @property
    def orthogonal(self) -> bool:
        # 0,0,0 angles occur in the wild and mean "unset"
        return all(abs(a - 90.0) < 0.01 or a == 0.0 for a in self.cell_angles)


# -- reading ---------------------------------------------------------------------------------
def _mrcfile_open(path: Path, header_only: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # permissive mrcfile warns for what _check decides on
        try:
            return mrcfile.open(path, mode="r", permissive=True, header_only=header_only)
        except Exception as err:  # mrcfile raises ValueError, but garbage can trigger anything
            raise InputError(f"unreadable MRC data ({err})", path) from None


class _HeaderReader(MrcInterpreter):
    """mrcfile's interpreter on the 1024 header bytes alone: never allocates for the extended header,
    whose length in a non-MRC file can be any garbage up to 2 GB."""

    def _read_bytearray_from_stream(self, number_of_bytes):
        return super()._read_bytearray_from_stream(min(int(number_of_bytes), _HEADER_BYTES))


def _read_header(path: Path) -> tuple[MrcInterpreter, bool]:
    """(header object, compressed), with nothing but the header read."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    compressed = {b"\x1f\x8b": gzip.open, b"BZ": bz2.open}.get(head[:2])  # as mrcfile.open detects them
    if compressed:
        try:
            with compressed(path, "rb") as f:
                head = f.read(_HEADER_BYTES)
        except (OSError, EOFError) as err:
            raise InputError(f"corrupt compressed file ({err})", path) from None
    if len(head) < _HEADER_BYTES:
        raise InputError(f"not an MRC file ({len(head)} bytes, shorter than the {_HEADER_BYTES}-byte MRC header)",
                         path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _HeaderReader(io.BytesIO(head), permissive=True, header_only=True), bool(compressed)
        except Exception as err:
            raise InputError(f"not an MRC file ({err})", path) from None


@contextlib.contextmanager
def _open(path: Path, header_only: bool, compressed_ok: bool = True) -> Iterator[MrcInterpreter]:
    """The checked header (``header_only``) or the whole file via mrcfile; InputError naming the file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a file", path)
    hdr, compressed = _read_header(path)
    if compressed and not compressed_ok:
        raise InputError("compressed image stack; decompress it (images are read in place)", path)
    _check(_fields(hdr), path, None if compressed else st.st_size)  # garbage never reaches the data reader
    if header_only:
        yield hdr
        return
    with _mrcfile_open(path, False) as mrc:
        if mrc.data is None:  # compressed and truncated (the size check needs the uncompressed size)
            raise InputError("truncated compressed MRC file", path)
        yield mrc


def _fields(hdr) -> dict:
    """The header as plain Python values (numpy record attribute access is ~10 us a field)."""
    h = hdr.header
    return dict(zip(h.dtype.names, h.item()))


def _check(h: dict, path: Path, size: int | None) -> None:
    """Reject headers that do not describe the file: garbage, truncation, unsupported modes."""
    has_id = bytes(h["map"])[:3] == b"MAP"
    mode, nx, ny, nz, ext = h["mode"], h["nx"], h["ny"], h["nz"], h["nsymbt"]
    if mode not in _KNOWN_MODES or min(nx, ny, nz) <= 0 or ext < 0:
        if not has_id:
            raise InputError(f"not an MRC file (no MAP id; header says mode {mode}, {nx} x {ny} x {nz})", path)
        raise InputError(f"invalid MRC header (mode {mode}, {nx} x {ny} x {nz}, extended header {ext} bytes)", path)
    if mode not in SUPPORTED_MODES:
        modes = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_MODES.items())
        raise InputError(f"unsupported MRC mode {mode} ({_KNOWN_MODES[mode]}); cryolens reads modes {modes}", path)
    expected = _HEADER_BYTES + ext + nx * ny * nz * mrcfile.utils.dtype_from_mode(mode).itemsize
    if size is not None and size < expected:
        what = "truncated" if has_id else "not an MRC file, or truncated"
        raise InputError(f"{what}: the header describes {nz} x {ny} x {nx} mode {mode} "
                         f"({expected} bytes with header) but the file has {size} bytes", path)


def _f32(x) -> float:
    """A float32 header value as the shortest float that round-trips (4.88, not 4.880000114)."""
    return float(np.format_float_positional(np.float32(x)))


def _axis_order(h: dict) -> tuple[int, int, int]:
    order = (h["mapc"], h["mapr"], h["maps"])
    return order if sorted(order) == [1, 2, 3] else (1, 2, 3)  # 0s in old files mean the default


def _to_zyx(order: tuple[int, int, int]) -> list[int]:
    """Transpose taking the file's (sections, rows, columns) to (z, y, x): output axis k is spatial
    axis 3-k (1=x), found in the file axis whose map* entry names it."""
    return [(order[2], order[1], order[0]).index(3 - k) for k in range(3)]


def _map_info(h: dict) -> MapInfo:
    order = _axis_order(h)
    file_shape = (h["nz"], h["ny"], h["nx"])
    m = (h["mx"], h["my"], h["mz"])  # cell sampling along x, y, z (not the storage axes)
    vox = tuple(_f32(c / s) if s > 0 and c > 0 else 0.0 for c, s in zip(h["cella"], m))
    return MapInfo(tuple(file_shape[p] for p in _to_zyx(order)), vox, tuple(_f32(a) for a in h["cellb"]),
                   order, h["ispg"], h["mode"])


def map_info(path: str | os.PathLike) -> MapInfo:
    """Header of a map (shape in z, y, x order, per-axis voxel size, cell angles), without the data."""
    with _open(Path(path), header_only=True) as hdr:
        return _map_info(_fields(hdr))


def read_map(path: str | os.PathLike, *, strict: bool = True) -> tuple[np.ndarray, float | None]:
    """Read a 3D map: (float32 array (D, H, W) in z, y, x order, voxel size in A or None if unset).

    The header's axis order (mapc, mapr, maps) is applied, so crystallographic maps stored
    e.g. with z fastest come back as (z, y, x). With ``strict`` (default) a map with non-cubic
    voxels or non-orthogonal cell angles is an InputError (projection and alignment assume
    cubic voxels); ``strict=False`` returns it anyway with the x voxel size (see ``map_info``).
    gzip/bzip2-compressed maps are read too.
    """
    path = Path(path)
    with _open(path, header_only=False) as mrc:
        info = _map_info(_fields(mrc))
        if mrc.header.nz == 1 or mrc.data.ndim != 3:
            raise InputError(f"not a 3D map (data shape {mrc.data.shape})", path)
        data = np.array(np.transpose(mrc.data, _to_zyx(info.axis_order)), dtype=np.float32, order="C")
    require_finite(data, "the map", path)
    vox = info.voxel_size
    if strict and (vox is not None and math.isnan(vox) or not info.orthogonal):
        vx, vy, vz = info.voxel_size_xyz
        a, b, g = info.cell_angles
        raise InputError(f"not a map of cubic voxels: voxel {vx:.4g} x {vy:.4g} x {vz:.4g} A, cell angles "
                         f"{a:g}, {b:g}, {g:g} deg; resample it onto a cubic grid first", path)
    if vox is not None and math.isnan(vox):
        vox = float(info.voxel_size_xyz[0])
    return data, vox


def _stack_info(hdr, path: Path) -> StackInfo:
    h = _fields(hdr)
    if mrcfile.utils.spacegroup_is_volume_stack(h["ispg"]):
        raise InputError(f"a stack of volumes (space group {h['ispg']}), not of 2D images", path)
    if _axis_order(h) != (1, 2, 3):
        raise InputError(f"image stack with transposed axes (mapc, mapr, maps = {_axis_order(h)})", path)
    vx = _f32(h["cella"][0] / h["mx"]) if h["mx"] > 0 and h["cella"][0] > 0 else None
    return StackInfo(h["nz"], h["ny"], h["nx"], vx, mrcfile.utils.data_dtype_from_header(hdr.header),
                     _HEADER_BYTES + h["nsymbt"])


def stack_info(path: str | os.PathLike) -> StackInfo:
    """Header of an image stack (a 3D file counts as nz images; a 2D image as one), no data read.

    About 0.1-0.2 ms a file: validating a particle table costs one call per distinct stack.
    """
    path = Path(path)
    with _open(path, header_only=True, compressed_ok=False) as hdr:
        return _stack_info(hdr, path)


def open_stack(path: str | os.PathLike, *, as_stack: bool = False) -> np.memmap:
    """Read-only memory map (N, ny, nx) of an image stack, in the on-disk dtype.

    RELION keeps ``.mrc`` for volumes and ``.mrcs`` for stacks, so a 3D ``.mrc`` is refused
    unless ``as_stack=True`` (the caller knows it is a stack: ``N@file.mrc`` rows, cryoSPARC
    ``blob/path``, EMPIAR stacks stored as .mrc). 2D images (any extension) are one-image stacks.
    """
    path = Path(path)
    info = stack_info(path)
    if info.n > 1 and not as_stack and path.suffix.lower() != ".mrcs":
        raise InputError(f"a 3D {path.suffix} file ({info.n} x {info.ny} x {info.nx}) is a volume to RELION; "
                         "open it with as_stack=True if it is a stack of images", path)
    return np.memmap(path, dtype=info.dtype, mode="r", offset=info.offset, shape=(info.n, info.ny, info.nx))


# -- writing ---------------------------------------------------------------------------------
def _label(header) -> None:
    """A fixed label instead of mrcfile's timestamped one: same data, same bytes."""
    header.label[0] = b"cryolens"
    header.nlabl = 1


def _set_stats(header, data: np.ndarray, chunk_bytes: int = 1 << 26) -> None:
    """dmin/dmax/dmean/rms in bounded memory (mrcfile's own std() copies the whole array)."""
    n = data.size
    if n == 0:
        return
    flat = data.reshape(-1)
    step = max(1, chunk_bytes // 8)
    lo, hi, s, s2 = math.inf, -math.inf, 0.0, 0.0
    for i in range(0, n, step):
        c = np.asarray(flat[i:i + step], dtype=np.float64)
        lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        s += float(c.sum())
        s2 += float(np.dot(c, c))
    mean = s / n
    header.dmin, header.dmax, header.dmean = lo, hi, mean
    header.rms = math.sqrt(max(s2 / n - mean * mean, 0.0))


def write_map(path: str | os.PathLike, data: np.ndarray, voxel_size: float | None) -> None:
    """Write a (D, H, W) map as float32 (mode 2, space group 1), atomically."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"write_map needs a 3D array, got shape {data.shape}")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
            mrc.header.ispg = 1  # a volume, even where the data would fit an image stack
            mrc.voxel_size = float(voxel_size or 0.0)
            _label(mrc.header)


@contextlib.contextmanager
def stack_writer(path: str | os.PathLike, shape: tuple[int, int, int],
                 pixel_size: float | None) -> Iterator[np.memmap]:
    """Yield a writable float32 memory map (N, ny, nx) of a new stack; fill it, it is renamed on success.

    For stacks too large for memory. Header as RELION writes stacks: mode 2, ispg 0, mz 1.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"a stack shape is (N, ny, nx) with N >= 1, got {shape}")
    with atomic_path(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=shape, mrc_mode=2, overwrite=True) as mrc:
            yield mrc.data
            mrc.set_image_stack()  # ispg 0, mz 1
            mrc.voxel_size = float(pixel_size or 0.0)
            _set_stats(mrc.header, mrc.data)
            _label(mrc.header)


def write_stack(path: str | os.PathLike, data: np.ndarray, pixel_size: float | None) -> None:
    """Write (N, ny, nx) images (or one (ny, nx) image) as a float32 stack, atomically.

    Use the ``.mrcs`` extension for RELION (``N@file.mrcs``, 1-based N).
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"write_stack needs (N, ny, nx) images, got shape {data.shape}")
    with stack_writer(path, data.shape, pixel_size) as out:
        out[...] = data


def read_class_stack(path: str | os.PathLike, pixel_size: float | None = None):
    """A bare stack of class averages (.mrcs, or a .mrc stack) as a ClassSet: images only, no
    statistics and no membership; classes are numbered 1..K in stack order. The pixel size comes
    from the header unless given."""
    import pandas as pd

    from .particles import ClassSet  # only this reader needs the data model (and pandas)

    info = stack_info(path)
    if info.ny != info.nx:
        raise InputError(f"class averages must be square, this stack is {info.nx} x {info.ny}", path)
    images = np.array(open_stack(path, as_stack=True), dtype=np.float32)
    px = pixel_size if pixel_size else info.pixel_size
    if px is not None and not px > 0:
        px = None
    table = pd.DataFrame({"class_id": np.arange(1, len(images) + 1, dtype=np.int64), "image_stack": str(path),
                          "image_index": np.arange(len(images), dtype=np.int64)})
    cs = ClassSet(table, images, px, None, source=str(path), meta={"bare_stack": True})
    cs.check_finite_images()
    return cs
