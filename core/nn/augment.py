"""Batched image augmentations for cryo-EM images and class averages, among them the pipeline of
Kuczbanski et al., "Learning image representation for limited cryo-EM data" (``class_average_augment``).

Every op takes (B, H, W) or (B, C, H, W) float images on any device and a ``torch.Generator``;
each sample is transformed with probability ``p`` and its random parameters are drawn from the
generator ON THE GENERATOR'S DEVICE, so a CPU generator gives the same augmentations for CPU and
CUDA images. Shape, dtype and device are kept. Geometric ops rotate about the pixel box//2 (the
project's image centre) and fill with 0 (the background of a normalised image).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..images import apply_soft_mask, radial_frequency_grid


def _rand(g: torch.Generator | None, n: int, lo: float = 0.0, hi: float = 1.0, *shape) -> torch.Tensor:
    dev = g.device if g is not None else "cpu"
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g, device=dev)


class Augment:
    """Base class: ``apply(x, g)`` transforms every sample; ``__call__`` picks samples with prob ``p``."""

    p: float = 1.0

    def apply(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x.shape[0]
        chosen = _rand(generator, b) < self.p
        y = self.apply(x, generator)
        if self.p >= 1.0:
            return y
        m = chosen.to(x.device).reshape(b, *([1] * (x.dim() - 1)))
        return torch.where(m, y, x)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Compose:
    def __init__(self, ops: Sequence[Augment]):
        self.ops = list(ops)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for op in self.ops:
            x = op(x, generator)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.ops)) + "])"


# ------------------------------------------------------------------------------------ geometry


def affine_resample(x: torch.Tensor, matrix: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """out(r) = x(A r + t) about the centre box//2: ``matrix`` (B, 2, 2) acts on (x, y) pixel
    offsets from the centre, ``shift_px`` (B, 2) in pixels. Bilinear, zero outside."""
    squeeze = x.dim() == 3
    xi = x.unsqueeze(1) if squeeze else x
    b, _, h, w = xi.shape
    dev, dt = x.device, torch.float32
    ys = torch.arange(h, device=dev, dtype=dt) - h // 2
    xs = torch.arange(w, device=dev, dtype=dt) - w // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    r = torch.stack([gx, gy], -1).reshape(1, -1, 2)                          # (1, HW, 2)
    src = r @ matrix.to(dev, dt).transpose(1, 2) + shift_px.to(dev, dt)[:, None, :]
    nx = (src[..., 0] + w // 2) * (2.0 / (w - 1)) - 1.0
    ny = (src[..., 1] + h // 2) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack([nx, ny], -1).reshape(b, h, w, 2)
    out = F.grid_sample(xi.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True).to(x.dtype)
    return out.squeeze(1) if squeeze else out


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


class RandomRotation(Augment):
    """Rotation by an angle uniform in [-degrees, degrees] about the centre."""

    def __init__(self, degrees: float = 180.0, p: float = 1.0):
        self.degrees, self.p = float(degrees), float(p)

    def apply(self, x, g):
        ang = _rand(g, x.shape[0], -self.degrees, self.degrees).double() * (math.pi / 180.0)
        return affine_resample(x, _rotation(ang).float(), torch.zeros(x.shape[0], 2))


class RandomTranslation(Augment):
    """Shift by up to ``fraction`` of the box along each axis (uniform)."""

    def __init__(self, fraction: float = 0.1, p: float = 1.0):
        self.fraction, self.p = float(fraction), float(p)

    def apply(self, x, g):
        b, box = x.shape[0], x.shape[-1]
        t = _rand(g, b, -self.fraction, self.fraction, 2) * box
        return affine_resample(x, torch.eye(2).expand(b, 2, 2), t)


class RandomResizedCrop(Augment):
    """Crop a region of area fraction in ``scale`` and aspect ratio in ``ratio`` (log-uniform) at a
    random position inside the image, and resample it to the full box."""

    def __init__(self, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), p: float = 1.0):
        self.scale, self.ratio, self.p = tuple(scale), tuple(ratio), float(p)

    def apply(self, x, g):
        b, box = x.shape[0], x.shape[-1]
        area = _rand(g, b, *self.scale)
        logr = _rand(g, b, math.log(self.ratio[0]), math.log(self.ratio[1]))
        ar = torch.exp(logr)
        sx = torch.sqrt(area * ar).clamp(max=1.0)       # crop width / box
        sy = torch.sqrt(area / ar).clamp(max=1.0)
        u = _rand(g, b, -1.0, 1.0, 2)
        t = torch.stack([(1 - sx) * u[:, 0], (1 - sy) * u[:, 1]], -1) * (box / 2)
        m = torch.diag_embed(torch.stack([sx, sy], -1))
        return affine_resample(x, m, t)


# ------------------------------------------------------------------------------------ intensity


class RandomHistogramShift(Augment):
    """Intensity remapping per image: gamma on the min-max normalised values (gamma log-uniform in
    ``gamma``), then contrast (x ``contrast``) and brightness (+ ``brightness`` x std)."""

    def __init__(self, brightness: float = 0.2, contrast=(0.7, 1.3), gamma=(0.7, 1.4), p: float = 1.0):
        self.brightness, self.contrast, self.gamma, self.p = float(brightness), tuple(contrast), tuple(gamma), float(p)

    def apply(self, x, g):
        b = x.shape[0]
        view = (b,) + (1,) * (x.dim() - 1)
        gam = torch.exp(_rand(g, b, math.log(self.gamma[0]), math.log(self.gamma[1]))).to(x.device).reshape(view)
        con = _rand(g, b, *self.contrast).to(x.device).reshape(view)
        bri = _rand(g, b, -self.brightness, self.brightness).to(x.device).reshape(view)
        xf = x.float()
        dims = tuple(range(1, x.dim()))
        lo, hi = xf.amin(dims, keepdim=True), xf.amax(dims, keepdim=True)
        span = (hi - lo).clamp_min(1e-8)
        y = ((xf - lo) / span).clamp(0, 1).pow(gam) * span + lo
        mean, std = y.mean(dims, keepdim=True), y.std(dims, keepdim=True)
        y = (y - mean) * con + mean + bri * std
        return y.to(x.dtype)


class PixelDropout(Augment):
    """Set each pixel to ``fill`` with probability ``rate`` (0.2 in Kuczbanski et al.)."""

    def __init__(self, rate: float = 0.2, fill: float = 0.0, p: float = 1.0):
        self.rate, self.fill, self.p = float(rate), float(fill), float(p)

    def apply(self, x, g):
        drop = (_rand(g, x.shape[0], 0.0, 1.0, *x.shape[1:]) < self.rate).to(x.device)
        return x.masked_fill(drop, self.fill)


class RandomLowpass(Augment):
    """Low-pass with a cutoff uniform in ``cutoff`` (fractions of Nyquist) and a raised-cosine edge
    of ``width_shells`` Fourier shells that ends at the cutoff (as ``core.images.lowpass``)."""

    def __init__(self, cutoff=(0.05, 1.0), width_shells: float = 2.0, p: float = 1.0):
        self.cutoff, self.width_shells, self.p = tuple(cutoff), float(width_shells), float(p)

    def apply(self, x, g):
        b, box = x.shape[0], x.shape[-1]
        view = (b,) + (1,) * (x.dim() - 1)
        fc = (_rand(g, b, *self.cutoff) * 0.5).to(x.device).reshape(view)       # cycles / pixel
        f = radial_frequency_grid(box, True, None, x.device)
        w = self.width_shells / box
        t = ((fc - f) / w).clamp(0, 1)                                         # 0 at cutoff, 1 at cutoff - w
        filt = 0.5 - 0.5 * torch.cos(math.pi * t)
        out = torch.fft.irfft2(torch.fft.rfft2(x.float()) * filt, s=x.shape[-2:])
        return out.to(x.dtype)


class SoftCircularMask(Augment):
    """Soft circular mask of radius ``radius`` (fraction of box/2, or a (lo, hi) range drawn per
    batch) with a cosine fall-off of ``width_px`` pixels (``core.images.apply_soft_mask``)."""

    def __init__(self, radius=0.9, width_px: float = 5.0, p: float = 1.0):
        self.radius, self.width_px, self.p = radius, float(width_px), float(p)

    def apply(self, x, g):
        box = x.shape[-1]
        if isinstance(self.radius, (tuple, list)):
            frac = float(_rand(g, 1, *self.radius)[0])
        else:
            frac = float(self.radius)
        return apply_soft_mask(x, frac * box / 2, self.width_px)


def class_average_augment(p_crop: float = 0.5, p_affine: float = 1.0, p_hist: float = 0.5, dropout: float = 0.2,
                          p_dropout: float = 0.5, p_lowpass: float = 0.8, mask_radius=0.9) -> Compose:
    """The augmentations for class-average retrieval of Kuczbanski et al. ("Learning image
    representation for limited cryo-EM data"): resized crop, rotation up to 180 degrees,
    translation up to 10 %, histogram shift, pixel dropout 0.2, low-pass (0.05-1 Nyquist), soft
    circular mask. The probabilities are ours (the paper gives none)."""
    ops: list[Augment] = [
        RandomResizedCrop(p=p_crop),
        RandomRotation(180.0, p=p_affine),
        RandomTranslation(0.1, p=p_affine),
        RandomLowpass((0.05, 1.0), p=p_lowpass),
        RandomHistogramShift(p=p_hist),
        PixelDropout(dropout, p=p_dropout),
    ]
    if mask_radius:
        ops.append(SoftCircularMask(mask_radius))
    return Compose(ops)
