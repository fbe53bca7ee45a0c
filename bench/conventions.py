"""Proof of cryolens' conventions against RELION's and cryoSPARC's own output; prints JSON.

    python bench/conventions.py            # needs ../shared/data (see ../shared/data/README.md)

Each record: metric, value (cryolens' convention), baseline (the same figure under the
nearest wrong convention, so the ratio shows the check can fail), ratio, n, seed, device, seconds.
tests/test_conventions_relion.py imports the functions below and asserts the figures.

Facts established here (see core/geometry.py, core/projector.py, core/ctf.py):
* rln_proj_*: cryolens' projector at the star's angles reproduces relion_project (NCC 1.0000,
  max error 2e-5 of the peak, same absolute scale): RELION matrix A, origins shift the image by
  -origin, sinc^2 gridding, sphere at Nyquist. relion_project writes odd boxes with the centre at
  box//2 + 1 (its CenterFFT(img, false) is an ifftshift), so odd files are compared 1 px off.
* rln_proj_64 (the 5-image file, no optics table) was made from a 64^3 map resampled from the
  65^3 one with the centre at (N-1)/2 (an older ASPIRE downsample): it matches when the Fourier
  cropped map is translated by -0.5 voxel on x, y, z (a free 3-D fit gives -0.49 on each axis).
* relion_proj_batch*: the point-mass phantom is one voxel of value +1 at x = +17 (index
  [32, 32, 49] of a 64^3 map), found by least squares from the peak positions; the batch files
  were made with --pad 1 (relion_proj_batch, relion_proj_star) and --pad 3 (_pfac3).
"""
from __future__ import annotations

import functools
import json
import pickle
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import starfile
import torch

from cryolens.core import geometry
from cryolens.core.ctf import ctf_2d
from cryolens.core.projector import Projector

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONV = DATA / "relion-conventions"
RIBOSOME_APIX = 5.0  # header says 0; relion_project was run with --angpix 5
RIBOSOME_FILES = ["rln_proj_64", "rln_proj_64_centered", "rln_proj_64_shifted",
                  "rln_proj_65", "rln_proj_65_centered", "rln_proj_65_shifted"]
POINT_FILES = {"relion_proj_batch": 1, "relion_proj_batch_pfac3": 3, "relion_proj_star": 1}  # --pad
POINT_MASS_XYZ = (17, 0, 0)  # voxels from the centre of the 64^3 phantom


def ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation per image of two (N, H, W) stacks."""
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    b = b - b.mean(axis=(-2, -1), keepdims=True)
    return (a * b).sum((-2, -1)) / np.sqrt((a * a).sum((-2, -1)) * (b * b).sum((-2, -1)))


def read_star(path: Path):
    """(particles, optics or None) DataFrames of a RELION star file."""
    st = starfile.read(path, always_dict=True)
    return st.get("particles", next(iter(st.values()))), st.get("optics")


def origins_px(parts, pixel_size: float) -> np.ndarray:
    """RELION origins in pixels: rlnOriginX/YAngst (3.1+) or the old pixel columns."""
    if "rlnOriginXAngst" in parts:
        return parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float) / pixel_size
    return parts[["rlnOriginX", "rlnOriginY"]].to_numpy(float)


@functools.lru_cache(maxsize=None)
def _projector(kind: str, box: int, pad: int = 2, half_voxel: bool = False) -> Projector:
    """Cached float64 projectors of the ribosome or of the point-mass phantom."""
    if kind == "ribosome":
        vol = ribosome_volume(box, half_voxel)
    else:
        vol = np.zeros((box,) * 3)
        x, y, z = POINT_MASS_XYZ
        vol[box // 2 + z, box // 2 + y, box // 2 + x] = 1.0
    return Projector(vol, pad=pad, dtype=torch.float64)


def ribosome_volume(box: int, half_voxel: bool = False) -> np.ndarray:
    """The 65^3 ribosome, Fourier-cropped to 64^3 (centre index kept at 32) when box is 64.

    half_voxel translates the cropped map by -0.5 voxel on every axis: the map rln_proj_64 was
    projected from (a centre at (N-1)/2 resampling).
    """
    v = mrcfile.read(CONV / "clean70SRibosome_vol_65p.mrc").astype(np.float64)
    if box == 65:
        return v
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v)))[:box, :box, :box]  # drops frequency +32
    if half_voxel:
        k = np.arange(box) - box // 2
        ph = np.exp(-2j * np.pi * k * -0.5 / box)
        F = F * ph[:, None, None] * ph[None, :, None] * ph[None, None, :]
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F))).real * (box / 65) ** 3


def ribosome_projection_ncc(name: str, transpose: bool = False, odd_offset: bool = True,
                            half_voxel: bool | None = None) -> np.ndarray:
    """Per-image NCC between relion_project's images and cryolens' projections of the ribosome."""
    parts, _ = read_star(CONV / f"{name}.star")
    imgs = mrcfile.read(CONV / f"{name}.mrcs").astype(np.float64)
    box = imgs.shape[-1]
    if half_voxel is None:
        half_voxel = name == "rln_proj_64"
    A = geometry.euler_to_matrix(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    if transpose:
        A = A.transpose(0, 2, 1)
    shifts = origins_px(parts, RIBOSOME_APIX)
    if odd_offset and box % 2:
        shifts = shifts - 1.0  # relion_project's odd-box centre is box//2 + 1
    return ncc(_projector("ribosome", box, 2, half_voxel).project(A, shifts).numpy(), imgs)


def point_mass_ncc(name: str, ctf_sign: float = 1.0) -> np.ndarray:
    """Per-image NCC between relion_project's point-mass images (real CTFs) and cryolens'."""
    parts, optics = read_star(CONV / f"{name}.star")
    imgs = mrcfile.read(CONV / f"{name}.mrcs").astype(np.float64).reshape(len(parts), 64, 64)
    og = optics.iloc[0]
    box, apix = int(og.rlnImageSize), float(og.rlnImagePixelSize)
    col = lambda label, default: parts[label].to_numpy(float) if label in parts else default
    ctf = ctf_2d(box, apix, col("rlnDefocusU", 0), col("rlnDefocusV", 0), col("rlnDefocusAngle", 0),
                 float(og.rlnVoltage), float(og.rlnSphericalAberration), float(og.rlnAmplitudeContrast),
                 col("rlnPhaseShift", 0.0), col("rlnCtfBfactor", 0.0), col("rlnCtfScalefactor", 1.0),
                 dtype=torch.float64)
    A = geometry.euler_to_matrix(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    proj = _projector("point", box, POINT_FILES[name])
    return ncc(proj.project(A, origins_px(parts, apix), ctf_sign * ctf).numpy(), imgs)


def point_mass_fit(name: str = "relion_proj_batch") -> np.ndarray:
    """Least-squares 3-D position (voxels) of the point mass from the peak of each image's
    cross-correlation with its CTF: peak = (A p)_xy - origin. Independent of the phantom guess."""
    parts, optics = read_star(CONV / f"{name}.star")
    imgs = mrcfile.read(CONV / f"{name}.mrcs").astype(np.float64).reshape(len(parts), 64, 64)
    apix = float(optics.iloc[0].rlnImagePixelSize)
    ctf = ctf_2d(64, apix, parts.rlnDefocusU.to_numpy(float), parts.rlnDefocusV.to_numpy(float),
                 parts.rlnDefocusAngle.to_numpy(float), 200.0, 1.4, 0.1, dtype=torch.float64).numpy()
    xc = np.fft.irfft2(np.fft.rfft2(imgs) * ctf, s=(64, 64))
    peak = np.array([np.unravel_index(c.argmax(), c.shape)[::-1] for c in xc], float)  # (x, y)
    peak = peak - 32  # the correlation with an origin-0 CTF peaks at the point's image position
    A = geometry.euler_to_matrix(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    rhs = peak + origins_px(parts, apix)
    p, *_ = np.linalg.lstsq(A[:, :2, :].reshape(-1, 3), rhs.reshape(-1), rcond=None)
    return p


def cryosparc_angle_diff(transpose_baseline: bool = False) -> float:
    """Max angle (degrees) between cryolens' A from cryoSPARC alignments3D/pose (rotvec -> RELION
    Euler -> A) and cryoDRGN's golden rotation matrices for the same 2019 particles."""
    from cryosparc.dataset import Dataset

    ds = Dataset.load(DATA / "cryosparc" / "cryosparc_P12_J24_001_particles.cs")
    with open(DATA / "cryosparc" / "pose.cs.pkl", "rb") as fh:
        gold_rot, _ = pickle.load(fh)
    pose = np.asarray(ds["alignments3D/pose"], dtype=np.float64)
    A = geometry.euler_to_matrix(geometry.rotvec_to_euler(pose))
    if transpose_baseline:
        A = A.transpose(0, 2, 1)
    return float(geometry.angular_distance_deg(A, np.asarray(gold_rot, np.float64)).max())


def _record(metric, value, baseline, n, seconds, **extra):
    ratio = value / baseline if baseline not in (0, None) else None
    return {"metric": metric, "value": round(float(value), 6), "baseline": round(float(baseline), 6),
            "ratio": None if ratio is None else round(float(ratio), 4), "n": int(n), "seed": None,
            "device": "cpu", "seconds": round(seconds, 3), **extra}


def main() -> int:
    if not DATA.is_dir():
        print(json.dumps({"error": f"{DATA} is absent"}))
        return 1
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = []
    for name in RIBOSOME_FILES:
        t = time.perf_counter()
        v = ribosome_projection_ncc(name)
        base = ribosome_projection_ncc(name, transpose=True)  # the scipy matrix instead of A
        extra = {"baseline_is": "A transposed (scipy's from_euler ZYZ matrix)",
                 "per_image": [round(float(x), 6) for x in v]}
        if name.startswith("rln_proj_65"):
            extra["without_odd_box_offset"] = round(float(ribosome_projection_ncc(name, odd_offset=False).mean()), 6)
        if name == "rln_proj_64":
            wrong = ribosome_projection_ncc(name, half_voxel=False)
            extra["without_half_voxel_map_shift"] = round(float(wrong.mean()), 6)
        out.append(_record(f"ncc_{name}", v.mean(), base.mean(), len(v), time.perf_counter() - t, **extra))
    for name in POINT_FILES:
        t = time.perf_counter()
        v = point_mass_ncc(name)
        base = point_mass_ncc(name, ctf_sign=-1.0)
        out.append(_record(f"ctf_ncc_{name}", v.mean(), base.mean(), len(v), time.perf_counter() - t,
                           baseline_is="CTF sign flipped", min=round(float(v.min()), 6)))
    t = time.perf_counter()
    p = point_mass_fit()
    out.append({"metric": "point_mass_fit_px", "value": [round(float(x), 3) for x in p],
                "baseline": list(POINT_MASS_XYZ), "ratio": None, "n": 24, "seed": None, "device": "cpu",
                "seconds": round(time.perf_counter() - t, 3)})
    t = time.perf_counter()
    d = cryosparc_angle_diff()
    b = cryosparc_angle_diff(transpose_baseline=True)
    out.append(_record("cryosparc_max_angle_diff_deg", d, b, 2019, time.perf_counter() - t,
                       baseline_is="A transposed (expmap(pose) instead of expmap(pose)^T)"))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
