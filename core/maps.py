"""Density maps: the map type, maps from atomic models and from files, and 3D resampling.

A map is a (D, D, D) float32 array in (z, y, x) with its centre at index D // 2 (RELION's
convention, as everywhere in cryolens), non-negative, in Da/A^3: its sum times pixel_size**3 is
the mass in Dalton (the interior of a protein is close to 0.81 Da/A^3 = 1.35 g/cm^3).
:class:`Phantom` holds one with what made it. Sources: :func:`from_atomic_model` (PDB/mmCIF
through the optional ``gemmi``: Gaussian atoms :func:`render` ed on the grid, or gemmi's
scattering factors) and :func:`from_map` (any MRC map). :func:`resample_map` brings a map to a
box and pixel size; :func:`fourier_resize_map` is the one 3D Fourier resampler (numpy or torch)
and :func:`fit_box` the centre crop/pad. The phantom proteins of ``core.simulate.proteins`` are
built on this module (it never imports ``simulate``); the identity library imports its maps here.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from .atomic import atomic_write_text
from .errors import InputError
from .finite import require_finite
from .mrc import read_map, write_map

__all__ = [
    "Phantom", "PseudoAtoms", "render", "from_atomic_model", "from_map", "resample_map", "fourier_resize_map",
    "fit_box", "estimate_mass_kda", "resolution_sigma", "density_extent", "jsonable", "PROTEIN_DENSITY",
    "FIT_FRACTION",
]

PROTEIN_DENSITY = 0.81  # Da / A^3 (1.35 g/cm^3)
FIT_FRACTION = 0.45  # a map fits when its max radius (atoms + 2 sigma) < FIT_FRACTION * box * pixel_size


# -- the map type ------------------------------------------------------------------------------
@dataclass
class PseudoAtoms:
    """Gaussian pseudo-atoms: positions (N, 3) Angstrom (x, y, z), mass (N,) Da, width sigma (N,)
    Angstrom (B-factor-like, without the resolution blur), chain (N,) subunit index."""

    xyz: np.ndarray
    mass: np.ndarray
    sigma: np.ndarray
    chain: np.ndarray

    @staticmethod
    def empty() -> "PseudoAtoms":
        return PseudoAtoms(np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0, np.int64))

    @staticmethod
    def concat(parts: Sequence["PseudoAtoms"], relabel: bool = False) -> "PseudoAtoms":
        parts = [p for p in parts if len(p)]
        if not parts:
            return PseudoAtoms.empty()
        chains = [np.full(len(p), i, np.int64) if relabel else p.chain for i, p in enumerate(parts)]
        return PseudoAtoms(np.concatenate([p.xyz for p in parts]), np.concatenate([p.mass for p in parts]),
                           np.concatenate([p.sigma for p in parts]), np.concatenate(chains))

    def __len__(self) -> int:
        return len(self.xyz)

    def transformed(self, R=None, t=None) -> "PseudoAtoms":
        """x -> R x + t."""
        xyz = self.xyz if R is None else self.xyz @ np.asarray(R).T
        xyz = xyz if t is None else xyz + np.asarray(t)
        return PseudoAtoms(xyz, self.mass, self.sigma, self.chain)

    def select(self, keep: np.ndarray) -> "PseudoAtoms":
        return PseudoAtoms(self.xyz[keep], self.mass[keep], self.sigma[keep], self.chain[keep])

    @property
    def mass_kda(self) -> float:
        return float(self.mass.sum()) / 1000.0

    @property
    def com(self) -> np.ndarray:
        return (self.mass[:, None] * self.xyz).sum(0) / max(self.mass.sum(), 1e-12)

    @property
    def rg(self) -> float:
        d = self.xyz - self.com
        return float(np.sqrt((self.mass * (d * d).sum(1)).sum() / self.mass.sum()))

    def max_radius(self, centre=None) -> float:
        c = self.com if centre is None else np.asarray(centre)
        return float(np.sqrt(((self.xyz - c) ** 2).sum(1).max())) if len(self) else 0.0


@dataclass
class Phantom:
    """A density map with what made it.

    ``density`` (D, D, D) float32 in (z, y, x), non-negative, in Da/A^3 (its sum times
    pixel_size**3 is the mass in Da, micelle/nanodisc included), with the protein's centre of
    mass at index D//2 (a micelle or nanodisc can sit off it); ``mass_kda`` is the
    protein's mass; ``symmetry`` 'C1', 'C4', 'D7', 'T', 'O', 'I' or 'H(rise,twist)';
    ``kind`` a phantom kind (``core.simulate.proteins.KINDS``), or 'atomic_model' / 'map' for user sources; ``provenance``
    the generator parameters (or the source file) as JSON-able values; ``conformations`` the
    variants of this protein (this map is their state 0 / t = 0) or None; ``atoms`` the
    pseudo-atomic model (None for maps); ``fits`` whether the particle lies within
    0.45 * box * pixel_size of the centre (``max_radius_A``).
    """

    density: np.ndarray
    pixel_size: float
    name: str
    mass_kda: float
    symmetry: str = "C1"
    provenance: dict = field(default_factory=dict)
    kind: str = "globular"
    conformations: Any = None  # core.simulate.proteins.Conformations, for phantoms
    atoms: PseudoAtoms | None = field(default=None, repr=False)
    max_radius_A: float = 0.0
    fits: bool = True

    @property
    def box(self) -> int:
        return int(self.density.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the map (MRC, atomically) and its metadata beside it (same name, ``.json``)."""
        path = Path(path)
        write_map(path, self.density, self.pixel_size)
        meta = {"name": self.name, "kind": self.kind, "mass_kda": self.mass_kda, "symmetry": self.symmetry,
                "pixel_size": self.pixel_size, "box": self.box, "max_radius_A": self.max_radius_A,
                "fits": self.fits, "provenance": self.provenance,
                "conformations": None if self.conformations is None else self.conformations.describe()}
        atomic_write_text(path.with_suffix(".json"), json.dumps(jsonable(meta), indent=1) + "\n")
        return path


# -- atoms to density ----------------------------------------------------------------------
def resolution_sigma(resolution: float | None, pixel_size: float) -> float:
    """Gaussian blur (Angstrom) for a map at ``resolution`` (default: Nyquist, 2 * pixel):
    sigma = 0.225 * resolution (ChimeraX molmap's 1 / (pi sqrt 2))."""
    res = 2.0 * pixel_size if resolution is None else float(resolution)
    return 0.225 * res


def density_extent(atoms: PseudoAtoms, pixel_size: float, resolution: float | None,
                   centre=(0.0, 0.0, 0.0)) -> float:
    """Max radius of the density about the box centre: farthest atom + 2 sigma."""
    if not len(atoms):
        return 0.0
    r = np.sqrt(((atoms.xyz - np.asarray(centre)) ** 2).sum(1))
    s = np.sqrt(atoms.sigma ** 2 + resolution_sigma(resolution, pixel_size) ** 2)
    return float((r + 2 * s).max())


def jsonable(x):
    """Provenance as JSON values: numpy arrays and numbers to lists and numbers, floats to 6 decimals."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return round(float(x), 6)
    return x


def render(atoms: PseudoAtoms, box: int, pixel_size: float, resolution: float | None = None,
           chunk_values: int = 1 << 22) -> tuple[np.ndarray, float]:
    """Sum of 3D Gaussians on a (box,)*3 grid: (density float32 in Da/A^3, fraction of mass lost
    outside the box).

    Atom i contributes mass_i / pixel_size^3 spread as a Gaussian of width
    sqrt(sigma_i^2 + sigma_res^2) over a window of +-3 sigma voxels, normalised per axis on the
    window so the sum over voxels is exact. Separable and vectorised (numpy bincount:
    deterministic, a few thousand atoms at 64^3 in ~10-30 ms).
    """
    box, px = int(box), float(pixel_size)
    vol = np.zeros(box ** 3, np.float64)
    n = len(atoms)
    if n == 0:
        return vol.reshape((box,) * 3).astype(np.float32), 0.0
    s_px = np.sqrt(atoms.sigma ** 2 + resolution_sigma(resolution, px) ** 2) / px
    p = atoms.xyz / px + box // 2  # (N, 3) voxel coords, x y z
    half = max(1, int(math.ceil(3.0 * s_px.max())))
    K = 2 * half + 1
    off = np.arange(-half, half + 1)
    step = max(1, chunk_values // (K ** 3))
    w_all = atoms.mass / px ** 3
    lost = 0.0
    for a in range(0, n, step):
        b = min(n, a + step)
        c = np.rint(p[a:b]).astype(np.int64)  # (n, 3)
        idx = c[:, :, None] + off  # (n, 3, K)
        d = idx - p[a:b, :, None]
        g = np.exp(-0.5 * (d / s_px[a:b, None, None]) ** 2)
        g /= g.sum(-1, keepdims=True)
        inside = (idx >= 0) & (idx < box)
        lost += float((w_all[a:b] * (1 - (g * inside).sum(-1).prod(-1))).sum())
        g = g * inside
        idx = np.clip(idx, 0, box - 1)
        vals = (w_all[a:b, None, None, None] * g[:, 2, :, None, None] * g[:, 1, None, :, None]
                * g[:, 0, None, None, :])
        flat = ((idx[:, 2, :, None, None] * box + idx[:, 1, None, :, None]) * box + idx[:, 0, None, None, :])
        vol += np.bincount(flat.ravel(), weights=vals.ravel(), minlength=box ** 3)
    return vol.reshape((box,) * 3).astype(np.float32), lost / max(float(w_all.sum()), 1e-30)


# -- atomic models and map files ---------------------------------------------------------------
def _gemmi():
    try:
        import gemmi  # noqa: PLC0415 - optional extra
    except ImportError:
        raise ImportError("reading atomic models needs gemmi: pip install 'cryolens[models]' (or pip install gemmi)") \
            from None
    return gemmi


def from_atomic_model(path: str | os.PathLike, box: int, pixel_size: float, resolution: float | None = None,
                      method: str = "gaussian", assembly_name: str | None = None, symmetry: str = "C1",
                      hydrogens: bool = False, centre: bool = True, name: str | None = None) -> Phantom:
    """A map from a PDB/mmCIF model (optional dependency gemmi): first model, waters removed.

    ``method='gaussian'``: one Gaussian an atom, weight its mass, width sqrt(B/8 pi^2 +
    (0.225 resolution)^2); ``method='gemmi'``: gemmi's electron-scattering DensityCalculatorE
    (5-Gaussian form factors and B-factors, blurred to ``resolution``), rescaled so the map still
    integrates to the model's mass. ``assembly_name`` builds a biological assembly from the file
    (e.g. '1'). The model's centre of mass goes to the box centre (``centre=False`` keeps the
    file's origin at the box centre); the shift is in the provenance.
    """
    gemmi = _gemmi()
    path = Path(path)
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    if len(st) == 0:
        raise ValueError(f"{path}: no model in the file")
    if assembly_name is not None:
        asm = next((a for a in st.assemblies if a.name == str(assembly_name)), None)
        if asm is None:
            raise ValueError(f"{path}: no assembly {assembly_name!r} (have {[a.name for a in st.assemblies]})")
        built = gemmi.make_assembly(asm, st[0], gemmi.HowToNameCopiedChain.AddNumber)
        st = gemmi.Structure()
        st.add_model(built)
    st.remove_waters()
    if not hydrogens:
        st.remove_hydrogens()
    model = st[0]
    xyz, mass, bfac, chain_names = [], [], [], []
    for ch in model:
        for res in ch:
            for at in res:
                xyz.append(at.pos.tolist())
                mass.append(at.element.weight * at.occ)
                bfac.append(at.b_iso)
                chain_names.append(ch.name)
    if not xyz:
        raise ValueError(f"{path}: no atoms in the first model")
    xyz, mass, bfac = np.array(xyz, np.float64), np.array(mass), np.array(bfac)
    names = {c: i for i, c in enumerate(dict.fromkeys(chain_names))}
    atoms = PseudoAtoms(xyz, mass, np.sqrt(np.maximum(bfac, 0) / (8 * np.pi ** 2)),
                        np.array([names[c] for c in chain_names], np.int64))
    shift = -atoms.com if centre else np.zeros(3)
    atoms = atoms.transformed(None, shift)
    if method == "gaussian":
        dens, lost = render(atoms, box, pixel_size, resolution)
    elif method == "gemmi":
        dens, lost = _gemmi_density(gemmi, model, shift, box, pixel_size, resolution, atoms.mass.sum())
    else:
        raise ValueError(f"method must be 'gaussian' or 'gemmi', got {method!r}")
    r = density_extent(atoms, pixel_size, resolution)
    prov = {"source": str(path.resolve()), "method": method, "assembly": assembly_name, "n_atoms": len(atoms),
            "shift_A": shift, "box": box, "pixel_size": pixel_size,
            "resolution_A": float(resolution) if resolution else 2.0 * pixel_size,
            "mass_lost_outside_box": round(lost, 6), "chains": list(names)}
    return Phantom(dens.astype(np.float32), float(pixel_size), name or path.stem, round(atoms.mass_kda, 6),
                   symmetry, jsonable(prov), "atomic_model", None, atoms, round(r, 2),
                   bool(r < FIT_FRACTION * box * pixel_size))


def _gemmi_density(gemmi, model, shift, box, pixel_size, resolution, total_mass) -> tuple[np.ndarray, float]:
    L = box * pixel_size
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(L, L, L, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    m = model.clone() if hasattr(model, "clone") else model
    t = np.asarray(shift) + (box // 2) * pixel_size  # box centre = grid point box//2 = position (box//2)*px
    m.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*t.tolist())))
    st.add_model(m)
    dc = gemmi.DensityCalculatorE()
    dc.grid.set_unit_cell(st.cell)
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_size(box, box, box)
    dc.d_min = 0.0  # use the grid as set
    dc.blur = 8 * np.pi ** 2 * resolution_sigma(resolution, pixel_size) ** 2  # B = 8 pi^2 sigma^2
    dc.put_model_density_on_grid(st[0])
    arr = np.array(dc.grid.array, dtype=np.float64, copy=True)  # (x, y, z)
    arr = np.transpose(arr, (2, 1, 0)).clip(min=0)
    s = arr.sum() * pixel_size ** 3
    arr = arr * (total_mass / s) if s > 0 else arr
    return arr.astype(np.float32), 0.0


def estimate_mass_kda(density: np.ndarray, pixel_size: float, threshold: float | None = None,
                      fraction: float = 0.2) -> tuple[float, float]:
    """(mass estimate kDa, threshold): the volume above the threshold times 0.81 Da/A^3. The
    default threshold is ``fraction`` of the robust maximum (mean of the top 0.05 % voxels)."""
    d = np.asarray(density, np.float64).ravel()
    if threshold is None:
        k = max(10, d.size // 2000)
        top = np.partition(d, d.size - k)[d.size - k:]
        threshold = fraction * float(top.mean())
    vol = float((d > threshold).sum()) * pixel_size ** 3
    return vol * PROTEIN_DENSITY / 1000.0, float(threshold)


# -- 3D resampling -----------------------------------------------------------------------------
def fit_box(vol, box: int):
    """Zero-pad or crop a cube (numpy or torch) to ``box``, keeping its centre D//2 at box//2
    (``vol`` itself when it already has that size)."""
    D = vol.shape[0]
    if D == box:
        return vol
    out = vol.new_zeros((box,) * 3) if isinstance(vol, torch.Tensor) else np.zeros((box,) * 3, vol.dtype)
    s = min(D, box)
    a, b = D // 2 - s // 2, box // 2 - s // 2
    out[b:b + s, b:b + s, b:b + s] = vol[a:a + s, a:a + s, a:a + s]
    return out


def fourier_resize_map(vol, n_out: int):
    """The one 3D Fourier resampler: a cubic map (D, D, D) to (n_out,)*3 by cropping or
    zero-padding its centred transform. The centre D//2 goes to n_out//2 and voxel values are
    kept (the voxel size becomes D / n_out times the old one). A numpy array goes through
    numpy.fft, a torch tensor through torch.fft (each its own bytes); ``vol`` itself when
    n_out == D. (The 2D resampler is ``core.images.fourier_resize``.)"""
    D = vol.shape[0]
    if n_out == D:
        return vol
    fft = torch.fft if isinstance(vol, torch.Tensor) else np.fft
    F = fit_box(fft.fftshift(fft.fftn(fft.ifftshift(vol))), n_out)
    return fft.fftshift(fft.ifftn(fft.ifftshift(F))).real * (n_out / D) ** 3


def _lowpass(vol: np.ndarray, cutoff: float) -> np.ndarray:
    """Soft low-pass at ``cutoff`` (fraction of the input Nyquist, 0-1)."""
    n = vol.shape[0]
    f = np.fft.fftfreq(n) * 2  # Nyquist = 1
    fz, fy, fx = np.meshgrid(f, f, np.fft.rfftfreq(n) * 2, indexing="ij")
    r = np.sqrt(fx ** 2 + fy ** 2 + fz ** 2)
    w = np.clip((cutoff - r) / (0.1 * cutoff) + 0.5, 0, 1)
    return np.fft.irfftn(np.fft.rfftn(vol) * w, s=vol.shape, axes=(0, 1, 2))


def resample_map(vol: np.ndarray, pixel_size_in: float, box: int, pixel_size: float,
                 method: str = "auto") -> tuple[np.ndarray, str]:
    """Resample a cubic map to (box,)*3 at ``pixel_size``, centre (index D//2) to centre.

    'fourier': exact Fourier crop/pad (:func:`fourier_resize_map`), used by 'auto' when D_in * pixel_size_in / pixel_size is
    an integer (to 0.1 %); 'spline': low-pass at the new Nyquist when coarsening, then cubic
    spline interpolation (scipy.ndimage). Density values (per A^3) are preserved.
    Returns (map float64, method used).
    """
    vol = np.asarray(vol, np.float64)
    n = vol.shape[0]
    if vol.shape != (n, n, n):
        raise ValueError(f"a cubic map is needed, got shape {vol.shape}")
    ratio = pixel_size_in / pixel_size
    n_f = n * ratio
    if method == "auto":
        method = "fourier" if abs(n_f - round(n_f)) < 1e-3 * n_f else "spline"
    if method == "fourier":
        n_out = int(round(n_f))
        if abs(n_f - n_out) > 1e-3 * n_f:
            raise ValueError(f"Fourier resampling needs an integer size: {n} * {pixel_size_in} / {pixel_size} "
                             f"= {n_f:.3f}")
        return np.array(fit_box(fourier_resize_map(vol, n_out), box)), "fourier"  # a copy, never ``vol``
    if method != "spline":
        raise ValueError(f"method must be 'auto', 'fourier' or 'spline', got {method!r}")
    if ratio < 1:  # coarser output: remove what the new grid cannot hold
        vol = _lowpass(vol, ratio)
    scale = pixel_size / pixel_size_in
    c_in, c_out = n // 2, box // 2
    out = ndimage.affine_transform(vol, np.full(3, scale), offset=c_in - scale * c_out, output_shape=(box,) * 3,
                                   order=3, mode="constant", cval=0.0, prefilter=True)
    return out, "spline"


def mass_radius_A(vol: np.ndarray, pixel_size: float, threshold: float, fraction: float = 0.99) -> float:
    """The radius (A) about the centre of mass that holds ``fraction`` of the density above
    ``threshold``: how far a map's molecule reaches, robust to a few noise voxels at the edge."""
    w = np.where(vol > threshold, vol, 0.0)
    total = w.sum()
    if total <= 0:
        return 0.0
    com = np.array(ndimage.center_of_mass(w))
    idx = np.nonzero(w)
    r = np.sqrt(sum((i - c) ** 2 for i, c in zip(idx, com))) * pixel_size
    order = np.argsort(r)
    cum = np.cumsum(w[idx][order]) / total
    return float(r[order][min(int(np.searchsorted(cum, fraction)), len(r) - 1)])


def from_map(path_or_array, box: int, pixel_size: float, source_pixel_size: float | None = None,
             mass_kda: float | None = None, recentre: bool = True, method: str = "auto",
             symmetry: str = "C1", name: str | None = None, mask: bool = True) -> Phantom:
    """A phantom from any map (an MRC path, or an array with ``source_pixel_size``).

    The background (median of the outer shell) is subtracted, the map resampled to
    (box,)*3 at ``pixel_size`` (:func:`resample_map`), the centre of mass of its density above
    the mass threshold moved to D//2 (``recentre``), negative values clipped and a soft
    spherical mask (radius 0.45 box, cosine edge) applied (``mask``). The map is scaled to
    Da/A^3 like the generated phantoms: to ``mass_kda`` if given, else to the mass estimated
    from its volume on the original grid (:func:`estimate_mass_kda`, recorded as an estimate).
    ``max_radius_A`` is the farthest voxel above the threshold after resampling and masking;
    the provenance's ``extent_A`` is the 99%-mass radius in the map as given (``mass_radius_A``),
    which says whether the mask cut the molecule.
    """
    if isinstance(path_or_array, (str, os.PathLike)):
        path = Path(path_or_array)
        vol, vox = read_map(path)
        src = str(path.resolve())
        if source_pixel_size is None:
            if vox is None:
                raise InputError("the header has no pixel size (set it, e.g. relion_image_handler --angpix)", path)
            source_pixel_size = vox
        name = name or path.stem
    else:
        vol = np.asarray(path_or_array, np.float32)
        src = "array"
        require_finite(vol, "the map")  # read_map checks files
        if source_pixel_size is None:
            raise ValueError("source_pixel_size is needed for an array")
        name = name or "map"
    n = vol.shape[0]
    z, y, x = np.indices(vol.shape) - n // 2
    shell = vol[np.sqrt(x * x + y * y + z * z) > 0.45 * n]
    bg = float(np.median(shell)) if shell.size else 0.0
    vol = np.asarray(vol, np.float64) - bg
    # the mass estimate and its threshold come from the map as given (its own sampling)
    m_est, thr = estimate_mass_kda(vol, float(source_pixel_size))
    extent = mass_radius_A(vol, float(source_pixel_size), thr)
    out, used = resample_map(vol, float(source_pixel_size), box, pixel_size, method)
    shift_px = np.zeros(3)
    if recentre:  # centre of mass of the density above the threshold to D//2 (twice: spline shifts)
        for _ in range(2):
            w = np.where(out > thr, out, 0.0)
            if w.sum() <= 0:
                break
            step = box // 2 - np.array(ndimage.center_of_mass(w))
            out = ndimage.shift(out, step, order=3, mode="constant", cval=0.0)
            shift_px += step
    out = np.clip(out, 0, None)
    if mask:
        zz, yy, xx = np.indices(out.shape) - box // 2
        r = np.sqrt(xx * xx + yy * yy + zz * zz)
        r0, edge = 0.45 * box, 0.05 * box
        out *= np.where(r < r0, 1.0, np.where(r < r0 + edge, 0.5 * (1 + np.cos(np.pi * (r - r0) / edge)), 0.0))
    target = float(mass_kda) if mass_kda is not None else m_est
    s = float(out.sum()) * pixel_size ** 3 / 1000
    scale = target / s if s > 0 else 1.0
    out = (out * scale).astype(np.float32)
    above = out > thr * scale
    if above.any():
        zi, yi, xi = np.nonzero(above)
        rr = np.sqrt((xi - box // 2) ** 2 + (yi - box // 2) ** 2 + (zi - box // 2) ** 2).max() * pixel_size
    else:
        rr = 0.0
    prov = {"source": src, "source_pixel_size": float(source_pixel_size), "source_box": int(n),
            "background_subtracted": bg, "resample": used, "recentre_shift_px": (-shift_px[::-1]).tolist(),
            "mass_estimated": mass_kda is None, "mass_threshold": thr * scale, "scale_to_da_per_A3": scale,
            "box": box, "pixel_size": pixel_size, "extent_A": round(extent, 2)}
    return Phantom(out, float(pixel_size), name, round(target, 6), symmetry, jsonable(prov), "map", None, None,
                   round(float(rr), 2), bool(rr < FIT_FRACTION * box * pixel_size))
