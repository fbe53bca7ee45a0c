"""Phantom proteins: generation throughput and distinctness; prints JSON.

    python bench/bench_phantoms.py [--n 50] [--n128 10] [--seed 0] [--pixel-size 3.0] [--views 3]

Rendering (``render_atoms_per_s_64px``): ``maps.render`` of a ~5000-pseudo-atom model on a
64^3 grid (windowed separable Gaussians, bincount); baseline: every Gaussian evaluated on the
whole grid, with the NCC of the two maps (the window keeps +-3 sigma).

Throughput (``phantoms_per_s_<box>px``): ``phantom_library(n, seed, box, pixel_size)`` (all five
kinds, stratified; each phantom folded, assembled and rendered from scratch) on CPU. Baseline in
the same process: ``example.blob_phantom`` (a sum of 12 Gaussians, the placeholder phantom) for
as many seeds; the ratio says what the realism costs.

Distinctness (``projection_ncc_same_view``, ``projection_ncc_any_view``): the n phantoms at 64 px
are projected (cryolens' Fourier projector) along ``--views`` random directions shared by all;
for every pair the normalised cross-correlation (NCC) of their projections along the same view,
averaged over the views (mean and max over pairs), and the max over all view pairs (a duplicate
seen from another side would show there). Baseline: the same for ``blob_phantom`` with seeds
0..n-1, whose projections are all centred round blobs. Lower is more distinct; 1 would be a
duplicate. Extra fields: kinds, masses, symmetries, how many fit the box, R_g against 2.2 N^0.38.
"""
from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np
import torch

from cryolens.core.geometry import random_rotations
from cryolens.core.maps import PseudoAtoms, render
from cryolens.core.projector import Projector
from cryolens.core.simulate import proteins as P
from cryolens.core.simulate.example import blob_phantom


def rate(box: int, n: int, seed: int, pixel_size: float) -> tuple[dict, list]:
    t0 = time.perf_counter()
    lib = P.phantom_library(n, seed=seed, box=box, pixel_size=pixel_size)
    secs = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        blob_phantom(box, seed=i)
    base_secs = time.perf_counter() - t0
    value, base = n / secs, n / base_secs
    masses = np.array([p.mass_kda for p in lib])
    protein = [p for p in lib if p.kind not in ("filament",)]
    rg_ratio = [p.atoms.rg / P.expected_rg(p.atoms.mass_kda * 1000 / P.DALTON_PER_RESIDUE) for p in protein]
    res = {"metric": f"phantoms_per_s_{box}px", "value": round(value, 3), "baseline": round(base, 3),
           "ratio": round(value / base, 5), "n": n, "seed": seed, "device": "cpu", "seconds": round(secs, 3),
           "pixel_size": pixel_size, "threads": torch.get_num_threads(),
           "kinds": dict(collections.Counter(p.kind for p in lib)),
           "symmetries": dict(collections.Counter(p.symmetry if not p.symmetry.startswith("H") else "H"
                                                  for p in lib)),
           "with_conformations": sum(p.conformations is not None for p in lib),
           "mass_kda_min_median_max": [round(float(masses.min()), 1), round(float(np.median(masses)), 1),
                                       round(float(masses.max()), 1)],
           "fit_box": f"{sum(p.fits for p in lib)}/{n}",
           "rg_over_expected_median": round(float(np.median(rg_ratio)), 3) if rg_ratio else None,
           "baseline_is": "example.blob_phantom (12 Gaussians)"}
    return res, lib


def projections(vols, views: np.ndarray) -> np.ndarray:
    A = torch.as_tensor(views, dtype=torch.float32)
    out = []
    for v in vols:
        out.append(Projector(torch.as_tensor(np.asarray(v, np.float32))).project(A).numpy())
    x = np.stack(out).astype(np.float64)  # (n, views, D, D)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    return x / np.sqrt((x * x).sum(axis=(-2, -1), keepdims=True))


def pairwise(x: np.ndarray) -> tuple[float, float, float]:
    n, v = x.shape[:2]
    flat = x.reshape(n * v, -1)
    C = (flat @ flat.T).reshape(n, v, n, v)  # NCC of image (i, a) with (j, b)
    same = np.einsum("iaja->ij", C) / v
    anyv = C.max(axis=(1, 3))
    iu = np.triu_indices(n, 1)
    return float(same[iu].mean()), float(same[iu].max()), float(anyv[iu].max())


def distinctness(lib: list, seed: int, n_views: int) -> list[dict]:
    t0 = time.perf_counter()
    views = random_rotations(n_views, seed)
    box = lib[0].box
    mean_p, max_p, any_p = pairwise(projections([p.density for p in lib], views))
    secs = time.perf_counter() - t0
    mean_b, max_b, any_b = pairwise(projections([blob_phantom(box, seed=i) for i in range(len(lib))], views))
    common = {"n": len(lib), "seed": seed, "device": "cpu", "seconds": round(secs, 3), "views": n_views,
              "box": box, "baseline_is": "example.blob_phantom, seeds 0..n-1, same views",
              "lower_is_more_distinct": True}
    return [
        {"metric": "projection_ncc_same_view_mean", "value": round(mean_p, 4), "baseline": round(mean_b, 4),
         "ratio": round(mean_p / mean_b, 4), **common, "max": round(max_p, 4), "baseline_max": round(max_b, 4)},
        {"metric": "projection_ncc_any_view_max", "value": round(any_p, 4), "baseline": round(any_b, 4),
         "ratio": round(any_p / any_b, 4), **common},
    ]


def dense_render(atoms: PseudoAtoms, box: int, px: float) -> np.ndarray:
    """The straightforward alternative: every Gaussian evaluated on the whole grid (separable)."""
    ax = (np.arange(box) - box // 2) * px
    s = np.sqrt(atoms.sigma ** 2 + (0.225 * 2 * px) ** 2)
    g = [np.exp(-0.5 * ((ax[None, :] - atoms.xyz[:, k:k + 1]) / s[:, None]) ** 2) for k in range(3)]
    norm = (2 * np.pi) ** 1.5 * s ** 3
    w = atoms.mass / norm
    vol = np.zeros((box,) * 3)
    for a in range(0, len(atoms), 64):
        b = slice(a, a + 64)
        vol += np.einsum("n,nz,ny,nx->zyx", w[b], g[2][b], g[1][b], g[0][b], optimize=True)
    return vol


def render_rate(seed: int, box: int = 64, px: float = 3.0, n_base: int = 512) -> dict:
    atoms = P.globular(seed, box, px, mass_kda=275, fit=False).atoms  # ~5000 pseudo-atoms
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        vol, _ = render(atoms, box, px)
    secs = (time.perf_counter() - t0) / reps
    sub = atoms.select(np.arange(len(atoms)) < n_base)
    t0 = time.perf_counter()
    dense = dense_render(sub, box, px)
    base_secs = time.perf_counter() - t0
    ours = render(sub, box, px)[0]
    x, y = ours.ravel().astype(np.float64), dense.ravel()
    x, y = x - x.mean(), y - y.mean()
    agree = float(x @ y / np.sqrt((x @ x) * (y @ y)))
    value, base = len(atoms) / secs, n_base / base_secs
    return {"metric": f"render_atoms_per_s_{box}px", "value": round(value, 1), "baseline": round(base, 1),
            "ratio": round(value / base, 2), "n": len(atoms), "seed": seed, "device": "cpu",
            "seconds": round(secs, 4), "ms_per_map": round(1000 * secs, 2), "baseline_n": n_base,
            "baseline_ncc": round(agree, 6),
            "baseline_is": "every Gaussian on the whole grid (separable einsum, numpy)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="phantoms at 64 px (throughput and distinctness)")
    ap.add_argument("--n128", type=int, default=10, help="phantoms at 128 px (throughput)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pixel-size", type=float, default=3.0)
    ap.add_argument("--views", type=int, default=3)
    args = ap.parse_args()
    out = [render_rate(args.seed)]
    r64, lib = rate(64, args.n, args.seed, args.pixel_size)
    out.append(r64)
    out.extend(distinctness(lib, args.seed, args.views))
    if args.n128 > 0:
        out.append(rate(128, args.n128, args.seed, args.pixel_size)[0])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
