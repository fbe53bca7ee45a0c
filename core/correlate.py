"""Brute-force normalised cross-correlation with an in-plane rotation and shift search.

The classical way to say which reference a 2D class average matches (what emscan does): every
query is rotated through ``n_psi`` in-plane angles, and for each angle its cross-correlation with
every reference is computed at every shift within ``max_shift_px`` from Fourier coefficients; the
score of a (query, reference) pair is the best normalised correlation over angles and shifts.
Batched in torch, chunked over references so large libraries fit in memory, CPU or CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import JobAborted
from .images import normalize_in_mask, soft_circular_mask


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
    return normalize_in_mask(images * mask, mask, scale="norm")


@dataclass
class Match:
    score: np.ndarray  # (Q, R) best NCC over angles and shifts
    psi: np.ndarray  # (Q, R) in-plane angle (deg) that rotates the query onto the reference
    shift: np.ndarray  # (Q, R, 2) shift (px, x then y) applied to the rotated query


def _spectral_support(b: int, max_freq: float, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rfft2 coefficients within ``max_freq`` (cycles/px): flat indices, (fy, fx) integer frequencies
    and the Hermitian weight of each (1 on the kx = 0 and Nyquist columns, 2 elsewhere)."""
    fy = torch.fft.fftfreq(b, 1.0 / b, device=device)[:, None].expand(b, b // 2 + 1)
    fx = torch.arange(b // 2 + 1, device=device, dtype=torch.float32)[None, :].expand(b, b // 2 + 1)
    keep = (torch.sqrt(fy ** 2 + fx ** 2) / b <= max_freq + 1e-9).reshape(-1)
    idx = torch.nonzero(keep).squeeze(1)
    w = torch.full((b, b // 2 + 1), 2.0, device=device)
    w[:, 0] = 1.0
    if b % 2 == 0:
        w[:, -1] = 1.0
    return idx, torch.stack([fy.reshape(-1)[idx], fx.reshape(-1)[idx]], -1), w.reshape(-1)[idx]


def ncc_search(queries: torch.Tensor, refs: torch.Tensor, n_psi: int = 36, max_shift_px: int = 4,
               mask_radius_px: float | None = None, ref_chunk: int = 64, max_freq: float = 0.5,
               need: torch.Tensor | None = None, should_stop: Callable[[], bool] | None = None) -> Match:
    """Best normalised cross-correlation of every query against every reference (module doc).

    The correlation at the (2s+1)^2 shifts of the window is evaluated directly from the Fourier
    coefficients (a partial inverse DFT), as ONE complex matrix product per reference chunk:
    cc[(query, angle), (reference, shift)] = Re sum_k conj(Q_k) R_k e^{2 pi i k.d / b} / b^2.
    ``max_freq`` (cycles/px, <= 0.5) keeps only the coefficients below it: class averages and
    references are low-passed anyway, and the search costs in proportion to what is kept.
    ``need`` (Q, R) bool: only these pairs are wanted (e.g. each query's shortlist); a reference
    chunk is searched only for the queries that need one of its references, and unwanted pairs
    score -inf. The work then scales with the wanted pairs, in one batched pass.
    ``should_stop`` is asked before each reference chunk (JobAborted when it says stop), so a
    large library stays abortable within a chunk's time.
    """
    queries = torch.as_tensor(queries, dtype=torch.float32)
    refs = torch.as_tensor(refs, dtype=torch.float32, device=queries.device)
    dev = queries.device
    b = queries.shape[-1]
    if refs.shape[-1] != b:
        raise ValueError(f"queries are {b} px but references {refs.shape[-1]} px: resample first")
    r = 0.45 * b if mask_radius_px is None else mask_radius_px
    mask = soft_circular_mask(b, r, max(2.0, 0.05 * b), device=dev)
    angles = torch.arange(n_psi, device=dev, dtype=torch.float32) * (360.0 / n_psi)
    idx, freqs, weight = _spectral_support(b, float(max_freq), dev)
    rq = _prepare(rotate_images(queries, angles), mask)  # (Q, K, b, b)
    Q, K = rq.shape[:2]
    fq = torch.fft.rfft2(rq).reshape(Q * K, -1)[:, idx].conj()  # (QK, S)
    s = int(max_shift_px)
    d = torch.arange(-s, s + 1, device=dev, dtype=torch.float32)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    shifts = torch.stack([dy.reshape(-1), dx.reshape(-1)], -1)  # (W, 2) as (dy, dx)
    E = torch.polar(weight[None, :] / b ** 2, 2 * torch.pi * (shifts @ freqs.T) / b)  # (W, S)
    W = E.shape[0]
    if need is not None:
        need = torch.as_tensor(need, dtype=torch.bool).cpu()
        if need.shape != (Q, len(refs)):
            raise ValueError(f"need must be (queries, references) = {(Q, len(refs))}, got {tuple(need.shape)}")
    fq = fq.reshape(Q, K, -1)
    best = torch.full((Q, len(refs)), -2.0)
    best_k = torch.zeros((Q, len(refs)), dtype=torch.long)
    best_w = torch.zeros((Q, len(refs)), dtype=torch.long)
    for start in range(0, len(refs), ref_chunk):
        if should_stop is not None and should_stop():
            raise JobAborted()
        sl = slice(start, min(start + ref_chunk, len(refs)))
        rows = torch.arange(Q) if need is None else torch.nonzero(need[:, sl].any(1)).squeeze(1)
        if len(rows) == 0:
            continue
        fr = torch.fft.rfft2(_prepare(refs[sl], mask)).reshape(-1, b * (b // 2 + 1))[:, idx]
        G = (fr[:, None, :] * E[None]).reshape(-1, E.shape[1])  # (R W, S)
        f = fq if need is None else fq[rows.to(dev)]
        cc = (f.reshape(-1, f.shape[-1]) @ G.T).real.reshape(len(rows), K, fr.shape[0], W)
        val, pos = cc.max(-1)  # best shift per angle
        v, k = val.max(1)  # best angle
        best[rows, sl], best_k[rows, sl] = v.cpu(), k.cpu()
        best_w[rows, sl] = pos.gather(1, k[:, None]).squeeze(1).cpu()
    if need is not None:
        best[~need] = -float("inf")
    sh = shifts.cpu().long()[best_w]  # (Q, R, 2) (dy, dx)
    return Match(best.numpy(), angles.cpu()[best_k].numpy(), sh.flip(-1).numpy())
