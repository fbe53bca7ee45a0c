"""Brute-force normalised cross-correlation with an in-plane rotation and shift search.

The classical way to say which reference a 2D class average matches (what emscan does): every
query is rotated through ``n_psi`` in-plane angles, and for each angle its cross-correlation with
every reference is computed for all shifts at once by FFT; the score of a (query, reference) pair
is the best normalised correlation over angles and shifts within ``max_shift_px``. Batched in
torch, chunked over references so large libraries fit in memory, CPU or CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .images import soft_circular_mask


def rotate_images(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """(N, b, b) images rotated about the centre pixel b//2 by each angle: (N, K, b, b), bilinear."""
    n, b = images.shape[0], images.shape[-1]
    a = torch.deg2rad(angles_deg.to(images.dtype))
    cos, sin = torch.cos(a), torch.sin(a)
    # affine_grid works in [-1, 1] coordinates whose centre is (b-1)/2: shift to b//2
    off = (b // 2 - (b - 1) / 2) * 2 / b
    theta = torch.zeros((len(a), 2, 3), dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2] = off - (cos * off - sin * off)
    theta[:, 1, 2] = off - (sin * off + cos * off)
    grid = torch.nn.functional.affine_grid(theta, (len(a), 1, b, b), align_corners=False)
    src = images[:, None].expand(n, len(a), b, b).reshape(n * len(a), 1, b, b)
    grid = grid[None].expand(n, -1, -1, -1, -1).reshape(n * len(a), b, b, 2)
    out = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(n, len(a), b, b)


def _prepare(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked, zero-mean inside the mask, unit norm: then a dot product is an NCC."""
    x = images * mask
    inside = mask > 0.5
    x = x - (x * inside).sum((-2, -1), keepdim=True) / inside.sum()
    x = x * mask
    return x / x.flatten(-2).norm(dim=-1)[..., None, None].clamp_min(1e-12)


@dataclass
class Match:
    score: np.ndarray  # (Q, R) best NCC over angles and shifts
    psi: np.ndarray  # (Q, R) in-plane angle (deg) that rotates the query onto the reference
    shift: np.ndarray  # (Q, R, 2) shift (px, x then y) applied to the rotated query


def ncc_search(queries: torch.Tensor, refs: torch.Tensor, n_psi: int = 36, max_shift_px: int = 4,
               mask_radius_px: float | None = None, ref_chunk: int = 256) -> Match:
    """Best normalised cross-correlation of every query against every reference (module doc)."""
    queries = torch.as_tensor(queries, dtype=torch.float32)
    refs = torch.as_tensor(refs, dtype=torch.float32, device=queries.device)
    b = queries.shape[-1]
    if refs.shape[-1] != b:
        raise ValueError(f"queries are {b} px but references {refs.shape[-1]} px: resample first")
    r = 0.45 * b if mask_radius_px is None else mask_radius_px
    mask = soft_circular_mask(b, r, max(2.0, 0.05 * b), device=queries.device)
    angles = torch.arange(n_psi, device=queries.device, dtype=torch.float32) * (360.0 / n_psi)
    rq = _prepare(rotate_images(queries, angles), mask)  # (Q, K, b, b)
    fq = torch.fft.rfft2(rq)
    Q, K = rq.shape[:2]
    s = int(max_shift_px)
    # circular shifts within +-s of zero (the masked images are zero near the edge)
    win = torch.zeros(b, dtype=torch.bool, device=queries.device)
    win[: s + 1] = True
    if s:
        win[-s:] = True
    best = torch.full((Q, len(refs)), -2.0)
    best_k = torch.zeros((Q, len(refs)), dtype=torch.long)
    best_dy = torch.zeros((Q, len(refs)), dtype=torch.long)
    best_dx = torch.zeros((Q, len(refs)), dtype=torch.long)
    for start in range(0, len(refs), ref_chunk):
        fr = torch.fft.rfft2(_prepare(refs[start:start + ref_chunk], mask))  # (R, b, b//2+1)
        cc = torch.fft.irfft2(fr[None, None] * fq[:, :, None].conj(), s=(b, b))  # (Q, K, R, b, b)
        cc = cc[..., win, :][..., win]
        flat = cc.reshape(Q, K, cc.shape[2], -1)
        val, pos = flat.max(-1)  # best shift per angle
        v, k = val.max(1)  # best angle
        p = pos.gather(1, k[:, None]).squeeze(1)
        sl = slice(start, start + cc.shape[2])
        best[:, sl], best_k[:, sl] = v.cpu(), k.cpu()
        idx = torch.nonzero(win).squeeze(1).cpu()
        w = int(win.sum())
        best_dy[:, sl], best_dx[:, sl] = idx[(p // w).cpu()], idx[(p % w).cpu()]
    dy = torch.where(best_dy > b // 2, best_dy - b, best_dy)
    dx = torch.where(best_dx > b // 2, best_dx - b, best_dx)
    return Match(best.numpy(), angles.cpu()[best_k].numpy(), torch.stack([dx, dy], -1).numpy())
