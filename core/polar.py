"""Rotational correlation of centred images in polar Fourier form: a fast first pass before NCC.

Sampled on rings about the centre, an image becomes a function of (radius, angle), and an
in-plane rotation of it a circular shift in angle: with each ring's Fourier series in angle,
``c(phi) = sum_m sum_r A_m(r) conj(B_m(r)) e^{i m phi}``, so the correlation of two images at
every in-plane angle comes from one complex product per angular harmonic, summed over rings
(the classical polar-Fourier rotational alignment; Penczek, Radermacher & Frank 1992,
Ultramicroscopy 40:33; Joyeux & Penczek 2002, Ultramicroscopy 93:1). For many queries against
many references this is a batch of matrix products (harmonics x queries x rings) @ (rings x
references), followed by the evaluation at ``n_angles`` angles: no rotated copies, no shifts.

It ignores translations, so it ranks well only images centred alike (class averages, which
RELION centres on their mass, and projections of centred maps); ``core.correlate.ncc_search``
then searches angles and shifts exhaustively on the pairs this pass keeps.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import JobAborted
from .images import soft_circular_mask


def polar_layout(box: int, max_freq: float, radius_px: float | None = None) -> tuple[int, int, float]:
    """(rings, harmonics, radius) that sample an image band-limited to ``max_freq`` cycles/px
    within ``radius_px`` (default 0.45 box): rings closer than half a period of the band limit,
    harmonics up to the angular frequency the outer ring carries (2 pi r f)."""
    r = 0.45 * box if radius_px is None else float(radius_px)
    f = min(0.5, max(float(max_freq), 1e-3))
    rings = max(4, int(math.ceil(r * 2 * f)))
    harmonics = max(4, int(math.ceil(2 * math.pi * r * f)) + 1)
    return rings, harmonics, r


def polar_coefficients(images, max_freq: float = 0.5, chunk: int = 8192,
                       should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """(N, harmonics, rings) complex64 of a stack of (N, b, b) images band-limited to ``max_freq``
    cycles/px: each masked (radius 0.45 b), zero mean inside the mask (as ``ncc_search`` prepares
    it), sampled on rings (``polar_layout``), expanded in angle and scaled to unit norm, so that
    ``polar_correlation`` of an image with itself is 1 at angle 0. The masking, the mean and the
    bilinear sampling are one sparse linear map, applied to the pixels by gathers (no resampled
    copies of the stack)."""
    x = torch.as_tensor(images)
    n, b = x.shape[0], x.shape[-1]
    rings, harmonics, radius = polar_layout(b, max_freq)
    idx, wgt, off, inside = _sampler(b, rings, harmonics, radius, x.device)
    n_theta = 2 * harmonics
    fold = torch.full((harmonics,), math.sqrt(2.0), device=x.device)
    fold[0] = 1.0  # the m and -m halves of a real ring's series, folded into m >= 1
    out = []
    for start in range(0, n, chunk):
        if should_stop is not None and should_stop():
            raise JobAborted()
        xs = x[start:start + chunk].reshape(-1, b * b).to(torch.float32)
        mean = xs @ inside  # the mean of the masked image inside the mask
        p = (xs[:, idx] * wgt).sum(-1) - mean[:, None] * off  # (n, rings * n_theta)
        a = torch.fft.rfft(p.reshape(-1, rings, n_theta), dim=-1)[..., :harmonics] * fold
        a = a / torch.linalg.vector_norm(a, dim=(1, 2), keepdim=True).clamp_min(1e-12)
        out.append(a.transpose(1, 2).contiguous())
    return torch.cat(out) if out else torch.zeros((0, harmonics, rings), dtype=torch.complex64)


def _sampler(b: int, rings: int, harmonics: int, radius_px: float, device):
    """The sparse map from (b*b) pixels to (rings * 2 harmonics) polar samples of the masked,
    mean-removed image ``(x m - mu) m`` (``normalize_in_mask`` before scaling): bilinear neighbour
    indices (P, 4), their weights times m^2, the mean's weight per sample, and the vector giving
    mu from the pixels. Samples carry the square root of their area element, so that dot
    products of sample vectors approximate integrals over the image."""
    mask = soft_circular_mask(b, radius_px, max(2.0, 0.05 * b), device=device).reshape(-1).to(torch.float64)
    n_theta = 2 * harmonics
    dr = radius_px / rings
    r = (torch.arange(rings, device=device, dtype=torch.float64) + 0.5) * dr
    t = torch.arange(n_theta, device=device, dtype=torch.float64) * (2 * math.pi / n_theta)
    col = (b // 2 + r[:, None] * torch.cos(t)[None, :]).reshape(-1)
    row = (b // 2 + r[:, None] * torch.sin(t)[None, :]).reshape(-1)
    area = torch.sqrt(r * dr * (2 * math.pi / n_theta))[:, None].expand(rings, n_theta).reshape(-1)
    c0, r0 = torch.floor(col), torch.floor(row)
    fc, fr = col - c0, row - r0
    idx, w = [], []
    for dy, dx, wk in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = (r0 + dy).long(), (c0 + dx).long()
        ok = (rr >= 0) & (rr < b) & (cc >= 0) & (cc < b)
        idx.append(torch.where(ok, rr * b + cc, 0))
        w.append(torch.where(ok, wk, 0.0))
    idx, w = torch.stack(idx, -1), torch.stack(w, -1) * area[:, None]
    m = mask[idx]
    inside = (mask > 0.5).to(torch.float64)
    mean_w = mask * inside / inside.sum().clamp_min(1.0)
    return idx, (w * m * m).float(), (w * m).sum(-1).float(), mean_w.float()


def polar_correlation(q: torch.Tensor, refs: torch.Tensor, n_angles: int = 36, chunk: int = 4096,
                      should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Best correlation over ``n_angles`` in-plane angles of every query with every reference,
    (Q, R) float, from ``polar_coefficients`` of both. Work per chunk of references: a batched
    complex matrix product over harmonics, then a real product with the angles' cosines/sines."""
    Q, M, _ = q.shape
    phi = torch.arange(n_angles, device=q.device, dtype=torch.float32) * (2 * math.pi / n_angles)
    m = torch.arange(M, device=q.device, dtype=torch.float32)
    # the coefficients carry the m / -m folding (polar_coefficients), so c(phi) = Re sum_m C_m e^{i m phi}
    # = [Re C, Im C] @ [cos(m phi); -sin(m phi)]
    trig = torch.cat([torch.cos(m[:, None] * phi[None]), -torch.sin(m[:, None] * phi[None])])
    qm = q.transpose(0, 1)  # (M, Q, rings)
    out = torch.empty((Q, len(refs)), dtype=torch.float32)
    for start in range(0, len(refs), chunk):
        if should_stop is not None and should_stop():
            raise JobAborted()
        r = refs[start:start + chunk].to(q.device)
        c = torch.matmul(qm, r.permute(1, 2, 0).conj())  # (M, Q, n)
        c = torch.cat([c.real, c.imag]).permute(1, 2, 0)  # (Q, n, 2M)
        out[:, start:start + len(r)] = (c @ trig).amax(-1).cpu()
    return out
