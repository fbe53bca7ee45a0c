"""Fourier-slice projection and back-projection in torch, following RELION's ``Projector``.

Projection (RELION src/projector.cpp, relion_project):
  * gridding pre-correction: the volume is divided by sinc^2(r / P) (FT of the trilinear kernel);
  * zero-padded to P = pad * D (made even), centre D//2 -> P//2; 3D FFT; only frequencies within
    pad * (D//2) are kept (a sphere at the original Nyquist);
  * each 2D frequency (kx, ky) with kx^2 + ky^2 <= (D//2)^2 samples the padded transform at
    pad * A^T (kx, ky, 0) by trilinear interpolation on the Hermitian half (x >= 0, conjugate
    otherwise), exactly RELION's loop; the rest of the slice is 0;
  * images are scaled as the line integral along z in voxel units (sum over z), like RELION.
Images have their centre at index box//2 (odd and even). RELION origins (pixels) shift the
projection by -origin, so ``project(A, shifts_px=origin)`` reproduces relion_project.

``project_ft`` returns exactly ``torch.fft.rfft2(project(...))``: the rfft of the image as
stored (origin at index 0), so it compares directly with ``rfft2`` of experimental images.
Note relion_project itself writes odd-box projections 1 px off (centre at box//2 + 1 in x and y,
its ``CenterFFT(img, false)`` is an ifftshift); cryolens keeps box//2 for every box.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Projector", "BackProjector", "padded_size"]

_MARGIN = 2  # extra frequency planes around the padded grid so trilinear corners never leave it


def padded_size(box: int, pad: float) -> int:
    """RELION's padded box: round(pad * box), made even."""
    p = int(round(pad * box))
    return p + p % 2


def _slice_coords(box: int, device, r_max: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into the (box, box//2+1) rfft image and (kx, ky) of the kept pixels.

    Row i holds ky = i for i <= box//2, else i - box (RELION's convention for the Nyquist row);
    a pixel is kept when kx^2 + ky^2 <= r_max^2 (default box//2, RELION's r_max_out).
    """
    half = box // 2
    r_max = half if r_max is None else r_max
    i = torch.arange(box, device=device)
    ky = torch.where(i <= half, i, i - box)
    kx = torch.arange(half + 1, device=device)
    KY, KX = torch.meshgrid(ky, kx, indexing="ij")
    keep = (KX * KX + KY * KY <= r_max * r_max).flatten()
    flat = torch.nonzero(keep).squeeze(1)
    return flat, torch.stack([KX.flatten()[flat], KY.flatten()[flat]], -1)


def _phase(box: int, kxy: torch.Tensor, shifts_px: torch.Tensor | None, n: int, dtype) -> torch.Tensor:
    """exp(-2 pi i k.(c - origin)/box): puts the image centre at box//2 and applies RELION origins."""
    c = torch.full((n, 2), float(box // 2), dtype=torch.float64, device=kxy.device)
    if shifts_px is not None:
        c = c - torch.as_tensor(shifts_px, dtype=torch.float64, device=kxy.device).reshape(n, 2)
    arg = (-2 * math.pi / box) * (c @ kxy.to(torch.float64).T)  # (n, P)
    return torch.polar(torch.ones_like(arg), arg).to(dtype)


def _negate(a: torch.Tensor) -> torch.Tensor:
    """a(-f) on the first two axes of a centred even-sized grid (periodic: -(-h) wraps to -h)."""
    return torch.roll(torch.flip(a, (0, 1)), (1, 1), (0, 1))


class _Grid:
    """Hermitian half of a centred padded 3D transform: axes (z, y, x), x >= 0, with margins."""

    def __init__(self, box: int, pad: float, device):
        self.box, self.P = box, padded_size(box, pad)
        self.pad = self.P / box  # RELION recomputes the factor after making P even
        self.r_max = box // 2
        self.max_r2 = round(self.r_max * self.pad) ** 2
        self.offset = self.P // 2 + _MARGIN  # array index of frequency 0 along z and y
        self.shape = (self.P + 2 * _MARGIN, self.P + 2 * _MARGIN, self.P // 2 + 1 + _MARGIN)
        self.device = device
        self.flat, self.kxy = _slice_coords(box, device)

    def sphere(self) -> torch.Tensor:
        f = torch.arange(self.shape[0], device=self.device) - self.offset
        fx = torch.arange(self.shape[2], device=self.device)
        r2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2
        return r2 <= self.max_r2

    def fine(self) -> None:
        """Coordinates for back-projection: all pixels of the rfft grid (phases) and the kept pixels
        of the padded P x P slice (r <= pad * D//2)."""
        D = self.box
        _, self.kxy_all = _slice_coords(D, self.device, r_max=10 * D)
        self.flat_fine, self.kxy_fine = _slice_coords(self.P, self.device, r_max=math.isqrt(self.max_r2))
        # bilinear weights that carry a (D, D//2+1) rfft CTF onto the padded slice grid; the CTF is
        # even and periodic, so (x, y) with x < 0 or x > D//2 reads (-x, -y) or (D - x, -y)
        u = self.kxy_fine.to(torch.float64) / self.pad
        u0 = torch.floor(u)
        f = u - u0
        idx, wts = [], []
        for dy in (0, 1):
            for dx in (0, 1):
                x, y = u0[:, 0].long() + dx, u0[:, 1].long() + dy
                flip = x < 0
                x, y = torch.where(flip, -x, x), torch.where(flip, -y, y)
                wrap = x > D // 2
                x, y = torch.where(wrap, D - x, x), torch.where(wrap, -y, y)
                idx.append((y % D) * (D // 2 + 1) + x)
                wts.append((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]))
        self.ctf_idx, self.ctf_w = torch.stack(idx, -1), torch.stack(wts, -1)

    def corners(self, rotations: torch.Tensor, kxy: torch.Tensor | None = None, scale: float | None = None):
        """Trilinear corners and weights of scale * A^T (kx, ky, 0) (default: pad, kept pixels).

        Returns flat indices (N, P, 8), weights (N, P, 8) in the real dtype, and the mask of
        points that were mirrored to x >= 0 (their value is the conjugate).
        """
        A = rotations.to(device=self.device)
        k = (self.kxy if kxy is None else kxy).to(A.dtype)
        # A^T (kx, ky, 0) = kx * A[0, :] + ky * A[1, :]
        xyz = k[None, :, :1] * A[:, None, 0, :] + k[None, :, 1:] * A[:, None, 1, :]
        xyz = xyz * (self.pad if scale is None else scale)
        neg = xyz[..., 0] < 0
        xyz = torch.where(neg[..., None], -xyz, xyz)
        x0 = torch.floor(xyz)
        f = xyz - x0
        sz, sy = self.shape[1] * self.shape[2], self.shape[2]
        stride = torch.tensor([1, sy, sz], device=x0.device)
        base = (x0.long() * stride).sum(-1) + self.offset * (sy + sz)
        d = torch.tensor([0, 1], device=x0.device)
        offs = (d[:, None, None] * sz + d[None, :, None] * sy + d[None, None, :]).reshape(8)
        w1 = torch.stack([1 - f, f], -2)  # (..., 2 [corner 0/1], 3 [x, y, z])
        w = (w1[..., :, None, None, 2] * w1[..., None, :, None, 1] * w1[..., None, None, :, 0]).flatten(-3)
        return base[..., None] + offs, w, neg


class Projector:
    """Fourier-slice projector of a real-space volume (D, D, D), indexed [z, y, x], centre D//2.

    ``project(rotations (N,3,3) RELION A, shifts_px (N,2) RELION origins or None,
    ctf (N, D, D//2+1) or None) -> (N, D, D)`` real images (float32 by default, CPU or CUDA).
    Differentiable with respect to the rotations (and the volume, through the constructor).
    """

    def __init__(self, volume, pad: float = 2, device=None, dtype=torch.float32, gridding: bool = True):
        vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume must be a cube (D, D, D), got {tuple(vol.shape)}")
        self.device = torch.device(device) if device is not None else vol.device
        self.dtype = dtype
        self.cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        D = vol.shape[0]
        g = self.grid = _Grid(D, pad, self.device)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        vol = vol.to(device=self.device, dtype=work)
        c = D // 2
        if gridding:  # divide by the FT of the trilinear kernel, sinc^2(r / P)
            r = torch.arange(D, device=self.device, dtype=work) - c
            rr = torch.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
            vol = vol / torch.sinc(rr / g.P) ** 2
        P = g.P
        padded = torch.zeros((P, P, P), dtype=work, device=self.device)
        s = P // 2 - c
        padded[s:s + D, s:s + D, s:s + D] = vol
        F = torch.fft.rfftn(torch.fft.ifftshift(padded))  # origin at index 0, (P, P, P//2+1)
        f = (torch.arange(g.shape[0], device=self.device) - g.offset) % P  # periodic wrap into margins
        data = torch.zeros(g.shape, dtype=self.cdtype, device=self.device)
        data[:, :, :P // 2 + 1] = F[f][:, f]
        self.data = (data * g.sphere()).reshape(-1)

    @property
    def box(self) -> int:
        return self.grid.box

    def _slices(self, rotations) -> torch.Tensor:
        """(N, P) interpolated values at the kept pixels, origin at index 0."""
        g = self.grid
        A = torch.as_tensor(rotations, device=self.device).to(self.dtype).reshape(-1, 3, 3)
        # on CPU, chunks of ~256k points keep the (N, P, 8) index/weight arrays in cache
        step = len(A) if self.device.type == "cuda" else max(1, 2 ** 18 // len(g.flat))
        out = []
        for s in range(0, len(A), step):
            idx, w, neg = g.corners(A[s:s + step])
            vals = (self.data[idx] * w).sum(-1)
            out.append(torch.where(neg, vals.conj(), vals))
        return torch.cat(out) if len(out) > 1 else out[0]

    def project_ft(self, rotations, shifts_px=None, ctf=None) -> torch.Tensor:
        """(N, D, D//2+1) complex: rfft2 of the projected images (origin at index 0)."""
        g = self.grid
        vals = self._slices(rotations)
        n = vals.shape[0]
        vals = vals * _phase(g.box, g.kxy, shifts_px, n, self.cdtype)
        out = torch.zeros((n, g.box * (g.box // 2 + 1)), dtype=self.cdtype, device=self.device)
        out[:, g.flat] = vals.to(self.cdtype)
        out = out.reshape(n, g.box, g.box // 2 + 1)
        if g.box % 2 == 0:  # self-conjugate Nyquist points are real in any real image's rfft
            h = g.box // 2
            out[:, [h, 0], [0, h]] = out[:, [h, 0], [0, h]].real.to(self.cdtype)
        if ctf is not None:
            out = out * torch.as_tensor(ctf, device=self.device).to(self.dtype)
        return out

    def project(self, rotations, shifts_px=None, ctf=None) -> torch.Tensor:
        """(N, D, D) real-space projections, centre at D//2, sum over z in voxel units."""
        return torch.fft.irfft2(self.project_ft(rotations, shifts_px, ctf), s=(self.box, self.box))


class BackProjector:
    """Accumulates CTF-weighted Fourier slices and reconstructs a volume.

    ``insert(images (N,D,D), rotations, shifts_px, ctf)`` undoes the origin shift, resamples the
    image's transform on the padded slice grid, and splats ``ctf * F_i`` and ``ctf^2`` with
    trilinear weights (the transpose of the projector's interpolation) at ``A^T (kx, ky, 0)``;
    ``reconstruct()`` returns ``sum(ctf F) / (sum(ctf^2) + eps)`` back in real space (D, D, D).
    Same conventions as ``Projector``: ``reconstruct`` of ``project(V)`` gives back V.
    """

    def __init__(self, box: int, pad: float = 2, device=None, dtype=torch.float32):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.grid = _Grid(box, pad, self.device)
        self.grid.fine()
        n = math.prod(self.grid.shape)
        self.data = torch.zeros(n, 2, dtype=dtype, device=self.device)  # (re, im): index_add_ on any device
        self.weight = torch.zeros(n, dtype=dtype, device=self.device)

    def insert(self, images, rotations, shifts_px=None, ctf=None) -> None:
        imgs = torch.as_tensor(images, device=self.device).to(self.dtype)
        self.insert_ft(torch.fft.rfft2(imgs), rotations, shifts_px, ctf)

    def insert_ft(self, images_ft, rotations, shifts_px=None, ctf=None) -> None:
        """Insert rfft2 images (N, D, D//2+1), the layout ``Projector.project_ft`` returns.

        The centred image is zero-padded to the padded box P before its FT, so its slice samples
        the 3D grid at every padded-grid step (the D x D samples alone leave low radii sparse, at
        pad * sqrt(n), and bias the low frequencies). ``ctf`` is (N, D, D//2+1), interpolated
        bilinearly onto that grid, or exact as (N, P, P//2+1) = ``ctf_2d(self.padded_box, ...)``
        at the same pixel size (better when the CTF oscillates fast).
        """
        g = self.grid
        D, P = g.box, g.P
        F = torch.as_tensor(images_ft, device=self.device).to(self.cdtype)
        n = F.shape[0]
        F = F * _phase(D, g.kxy_all, shifts_px, n, self.cdtype).conj().reshape(n, D, D // 2 + 1)
        vals = self._upsample(F)  # content centred on index 0, on the padded slice grid
        if ctf is None:
            c = torch.ones(vals.shape, dtype=self.dtype, device=self.device)
        else:
            c = torch.as_tensor(ctf, device=self.device).to(self.dtype)
            if c.shape[-2:] == (P, P // 2 + 1):
                c = c.reshape(n, -1)[:, g.flat_fine]
            elif c.shape[-2:] == (D, D // 2 + 1):
                c = (c.reshape(n, -1)[:, g.ctf_idx] * g.ctf_w.to(self.dtype)).sum(-1)
            else:
                raise ValueError(f"ctf must be (N, {D}, {D // 2 + 1}) or (N, {P}, {P // 2 + 1}), "
                                 f"got {tuple(c.shape)}")
        A = torch.as_tensor(rotations, device=self.device).to(self.dtype).reshape(-1, 3, 3)
        idx, w, neg = g.corners(A, g.kxy_fine, 1.0)
        vals = torch.where(neg, vals.conj(), vals) * c
        self.data.index_add_(0, idx.reshape(-1), torch.view_as_real((vals[..., None] * w).reshape(-1)))
        self.weight.index_add_(0, idx.reshape(-1), ((c * c)[..., None] * w).reshape(-1))

    @property
    def padded_box(self) -> int:
        return self.grid.P

    def _upsample(self, F: torch.Tensor) -> torch.Tensor:
        """rfft (N, D, D//2+1) with origin 0 -> its values on the padded slice grid (kept points)."""
        g = self.grid
        D, P = g.box, g.P
        img = torch.fft.fftshift(torch.fft.irfft2(F, s=(D, D)), dim=(-2, -1))  # centre at D//2
        big = torch.zeros((F.shape[0], P, P), dtype=img.dtype, device=img.device)
        s = P // 2 - D // 2
        big[:, s:s + D, s:s + D] = img
        G = torch.fft.rfft2(torch.fft.ifftshift(big, dim=(-2, -1)))
        return G.reshape(F.shape[0], -1)[:, g.flat_fine]

    def reconstruct(self, eps: float = 1e-3) -> torch.Tensor:
        """Real (D, D, D) volume; eps is relative to the mean non-zero weight."""
        g = self.grid
        P, h = g.P, g.P // 2
        data = torch.view_as_complex(self.data.to(torch.float64, copy=True)).reshape(g.shape)
        wt = self.weight.to(torch.float64, copy=True).reshape(g.shape)
        # enforce Hermitian symmetry on the kx = 0 plane: (0, y, z) and (0, -y, -z) are one datum
        o = g.offset
        sl = slice(o - h, o + h)  # frequencies -h .. h-1
        d0, w0 = data[sl, sl, 0].clone(), wt[sl, sl, 0].clone()
        data[sl, sl, 0], wt[sl, sl, 0] = d0 + _negate(d0).conj(), w0 + _negate(w0)
        sphere = g.sphere()
        data, wt = data * sphere, wt * sphere
        pos = wt > 0
        e = eps * (wt[pos].mean() if pos.any() else 1.0)
        F = data / (wt + e)
        F = F[sl, sl, :h + 1]  # (P, P, P//2+1), centred along z, y
        F = torch.fft.ifftshift(F, dim=(0, 1))
        vol = torch.fft.fftshift(torch.fft.irfftn(F, s=(P, P, P)))
        s = h - g.box // 2
        return vol[s:s + g.box, s:s + g.box, s:s + g.box].to(self.dtype)
