"""Projector throughput: batched Fourier-slice projections per second; prints JSON.

    python bench/bench_projector.py [--boxes 64 128] [--n 1024] [--batch 256] [--seed 0]

Baseline (same process, same volume and poses): real-space projection with scipy.ndimage,
rotating the volume by A^T with trilinear interpolation (affine_transform, order=1) and summing
along z, one image at a time: the straightforward alternative to a Fourier projector. Its images
are compared with the Fourier ones (baseline_ncc) so both compute the same projection. The
per-image loop of the Fourier projector (batch 1) is reported too (loop_per_s), and CUDA when
present. Volume: a smooth random blob map; poses: uniform random rotations from the seed.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import ndimage

from cryolens.core import geometry
from cryolens.core.projector import Projector


def blob_volume(box: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    vol = np.zeros((box,) * 3, np.float32)
    for _ in range(12):
        p = rng.uniform(-0.25, 0.25, 3) * box
        s = rng.uniform(0.03, 0.07) * box
        vol += np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return vol


def real_space_projection(vol: np.ndarray, A: np.ndarray) -> np.ndarray:
    """P(x, y) = sum_z V(A^T (x, y, z)), trilinear, arrays in (z, y, x) order."""
    c = np.full(3, vol.shape[0] // 2, float)
    M = A.T[::-1, ::-1]  # (x, y, z) -> (z, y, x) index order
    return ndimage.affine_transform(vol, M, offset=c - M @ c, order=1).sum(0)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_box(box: int, n: int, batch: int, seed: int, device: str, n_base: int) -> dict:
    vol = blob_volume(box, seed)
    A = geometry.random_rotations(n, seed)
    At = torch.tensor(A, dtype=torch.float32, device=device)
    proj = Projector(torch.from_numpy(vol), device=device)
    proj.project(At[:batch])  # warm-up (allocations, kernels)
    _sync(device)
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        out = proj.project(At[s:s + batch])
    _sync(device)
    fourier_s = time.perf_counter() - t0
    rate = n / fourier_s
    n_loop = min(n, 64)
    t0 = time.perf_counter()
    for i in range(n_loop):
        proj.project(At[i:i + 1])
    _sync(device)
    loop_rate = n_loop / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    base = [real_space_projection(vol, A[i]) for i in range(n_base)]
    base_rate = n_base / (time.perf_counter() - t0)
    fourier = proj.project(At[:n_base]).cpu().numpy()
    agree = min(ncc(a, b) for a, b in zip(fourier, base))
    return {"metric": f"projections_per_s_{box}px", "value": round(rate, 1), "baseline": round(base_rate, 1),
            "ratio": round(rate / base_rate, 2), "n": n, "seed": seed, "device": device,
            "seconds": round(fourier_s, 3), "batch": batch, "loop_per_s": round(loop_rate, 1),
            "baseline_n": n_base, "baseline_ncc": round(agree, 5), "threads": torch.get_num_threads(),
            "baseline_is": "scipy.ndimage.affine_transform(order=1) + sum over z, one image at a time",
            "out_shape": list(out.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for device in devices:
        for box in args.boxes:
            n = args.n if device == "cuda" or box <= 64 else max(args.batch, args.n // 4)
            out.append(bench_box(box, n, min(args.batch, n), args.seed, device, n_base=16 if box <= 64 else 4))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
