"""Noise for simulated particles: white, coloured (a radially decaying power spectrum) and
ice-like structural noise that passes through each particle's CTF; a low-frequency ice-thickness
background; and the radial power spectrum used to check all of them.

Noise power spectrum (PSD) of the coloured model, k the spatial frequency in 1/Angstrom:

    shape(k) = floor + (1 + (k * knee_A)^2) ** (-slope / 2)
    PSD(k)   = (1 - ctf_fraction) * shape / <shape> + ctf_fraction * CTF(k)^2 * shape / <CTF^2 shape>

``<.>`` is the mean over the full 2D frequency grid, so the PSD has mean 1 and the noise has
pixel variance 1 before it is scaled (Parseval: the variance of a filtered white field is the mean
of the filter's power). Beyond the knee the decaying part falls as k^-slope (log-log slope -slope);
``floor`` adds a white part (detector shot noise) under it. ``ctf_fraction`` is the share of the
noise variance that comes from the specimen (ice, neighbouring density): it is modulated by the
particle's own CTF like any specimen signal, which gives real background spectra their Thon rings.

Real particles (EMPIAR-10076, /work/shared/data/real-particles/empiar_10076_7.mrc, 1.31 A/px, and
relion31.mrcs, 2.806 A/px) have background spectra that are flat beyond ~10 A and 2-5x higher at
low frequency with CTF oscillations; ``NoiseModel.realistic()`` holds parameters fitted to the
EMPIAR-10076 background (bench/bench_simulate.py --fit-noise re-derives them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..images import radial_frequency_grid

__all__ = ["NoiseModel", "noise_psd", "coloured_noise", "ice_background", "radial_power_spectrum",
           "rfft_weights"]


@dataclass(frozen=True)
class NoiseModel:
    """How the noise of a particle image is coloured (its total variance is set by the SNR).

    kind: "white" (flat spectrum; the other fields are ignored) or "coloured".
    slope: exponent of the decay beyond the knee, PSD ~ k^-slope (power, not amplitude).
    knee_A: resolution (Angstrom) of the knee; below 1/knee_A the decaying part is flat.
    floor: white part added to the decaying part (whose value at k = 0 is 1).
    ctf_fraction: share of the noise variance that passes through the particle's CTF.
    """

    kind: str = "white"
    slope: float = 2.0
    knee_A: float = 20.0
    floor: float = 0.0
    ctf_fraction: float = 0.0

    def __post_init__(self):
        if self.kind not in ("white", "coloured"):
            raise ValueError(f"noise kind must be 'white' or 'coloured', not {self.kind!r}")
        if not 0.0 <= self.ctf_fraction < 1.0:
            raise ValueError(f"ctf_fraction must lie in [0, 1), got {self.ctf_fraction}")
        if self.floor < 0 or self.knee_A <= 0:
            raise ValueError("floor must be >= 0 and knee_A > 0")

    @classmethod
    def white(cls) -> "NoiseModel":
        return cls("white")

    @classmethod
    def coloured(cls, slope: float = 2.0, knee_A: float = 20.0, floor: float = 0.0,
                 ctf_fraction: float = 0.0) -> "NoiseModel":
        return cls("coloured", slope, knee_A, floor, ctf_fraction)

    @classmethod
    def realistic(cls) -> "NoiseModel":
        """Fitted to the background (r > 0.4 box, tapered) radial power spectrum of the 7 real
        EMPIAR-10076 particles in /work/shared/data/real-particles/empiar_10076_7.mrc (300 kV,
        1.31 A/px, defocus ~1.5 um): log-spectrum least squares over 1/300 .. 1/2.62 1/A against
        the model PSD averaged over the particles' CTFs (``python bench/bench_simulate.py
        --fit-noise``; the optimum is flat, these are rounded: RMS log error 0.084 vs 0.315 for
        white noise). Below ~15 A the noise power is ~3.8x its white level; 10% of it carries
        the CTF's Thon rings."""
        return cls("coloured", slope=8.0, knee_A=15.0, floor=0.36, ctf_fraction=0.1)

    @property
    def is_white(self) -> bool:
        return self.kind == "white" or (self.ctf_fraction == 0.0 and self.floor == 0.0 and self.slope == 0.0)

    def needs_ctf(self) -> bool:
        return self.kind == "coloured" and self.ctf_fraction > 0.0


def rfft_weights(box: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(box//2+1,) multiplicity of each rfft column in the full spectrum (1, 2, ..., 2, 1 or 2)."""
    w = torch.full((box // 2 + 1,), 2.0, device=device, dtype=dtype)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w


def _full_mean(p: torch.Tensor, box: int) -> torch.Tensor:
    """Mean over the full (box, box) grid of an rfft-layout array (..., box, box//2+1)."""
    w = rfft_weights(box, p.device, p.dtype)
    return (p * w).sum(dim=(-2, -1)) / (box * box)


def noise_psd(model: NoiseModel, box: int, pixel_size: float, ctf: torch.Tensor | None = None,
              device=None, dtype=torch.float32) -> torch.Tensor:
    """The model's PSD in rfft layout, mean 1 over the full grid: (1, box, box//2+1), or
    (N, box, box//2+1) when ``model.ctf_fraction > 0`` (then ``ctf`` (N, box, box//2+1) is needed)."""
    if ctf is not None:
        device = ctf.device
    if model.kind == "white":
        return torch.ones((1, box, box // 2 + 1), device=device, dtype=dtype)
    k = radial_frequency_grid(box, True, pixel_size, device, torch.float64)
    shape = model.floor + (1.0 + (k * model.knee_A) ** 2) ** (-model.slope / 2.0)
    shape = (shape / _full_mean(shape, box))[None]
    if model.ctf_fraction > 0:
        if ctf is None:
            raise ValueError("this noise model passes part of the noise through the CTF: give ctf")
        c2 = ctf.to(torch.float64) ** 2 * shape
        c2 = c2 / _full_mean(c2, box).clamp_min(1e-30)[:, None, None]
        shape = (1 - model.ctf_fraction) * shape + model.ctf_fraction * c2
    return shape.to(dtype)


def coloured_noise(n: int, box: int, psd: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   device=None, dtype=torch.float32) -> torch.Tensor:
    """(n, box, box) Gaussian noise whose power spectrum is ``psd`` (rfft layout, mean 1 -> pixel
    variance 1); white when ``psd`` is None. Drawn in real space, then filtered in Fourier space."""
    w = torch.randn((n, box, box), generator=generator, device=device, dtype=dtype)
    if psd is None:
        return w
    return torch.fft.irfft2(torch.fft.rfft2(w) * torch.sqrt(psd.to(device=w.device, dtype=dtype)), s=(box, box))


def ice_background(n: int, box: int, generator: torch.Generator | None = None, device=None,
                   dtype=torch.float32, smooth_fraction: float = 0.5) -> torch.Tensor:
    """(n, box, box) ice-thickness background, mean 0 and std 1 per image: a plane ramp in a random
    direction mixed with a smooth random field of a few cycles per box (about ``smooth_fraction``
    of the variance; Gaussian spectrum, sd 1.5 cycles per box, drawn on a 16 x 16 grid of
    frequencies). Thicker ice scatters more electrons away, so this is a low-frequency amplitude
    effect: it is added to the image, not passed through the CTF."""
    g = torch.rand((n, 1, 1), generator=generator, device=device, dtype=torch.float32) * (2 * math.pi)
    c = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    ramp = torch.cos(g) * c[None, None, :] + torch.sin(g) * c[None, :, None]
    m = min(16, box)
    w = torch.randn((n, m, m), generator=generator, device=device, dtype=torch.float32)
    W = torch.fft.rfft2(w)
    k = radial_frequency_grid(m, True, None, device, torch.float32) * m  # cycles per box
    W = W * torch.exp(-0.5 * (k / 1.5) ** 2)
    F = torch.zeros((n, box, box // 2 + 1), dtype=W.dtype, device=device)
    h = m // 2
    F[:, :h, :h] = W[:, :h, :h]
    F[:, box - h + 1:, :h] = W[:, m - h + 1:, :h]  # negative rows (the Nyquist row of m is dropped)
    smooth = torch.fft.irfft2(F, s=(box, box))
    parts = []
    for x in (ramp, smooth):
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        parts.append(x / x.flatten(1).std(dim=1).clamp_min(1e-12)[:, None, None])
    out = math.sqrt(1 - smooth_fraction) * parts[0] + math.sqrt(smooth_fraction) * parts[1]
    out = out - out.mean(dim=(-2, -1), keepdim=True)
    return (out / out.flatten(1).std(dim=1).clamp_min(1e-12)[:, None, None]).to(dtype)


def radial_power_spectrum(images, pixel_size: float | None = None, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean radial power spectrum of (N, box, box) images: (frequencies, power) for shells
    0 .. box//2 (frequency in cycles/pixel, or 1/Angstrom with ``pixel_size``).

    Power is |rfft2|^2 / box^2, averaged over images and over the pixels of each shell (round(|k| box)),
    so white noise of variance s^2 has power s^2 in every shell. Each image's mean is removed
    first; with ``mask`` (box, box) the images are multiplied by it (after removing the mean
    inside it) and the power is divided by the mask's mean square (a tapered periodogram).
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.to(torch.float64).reshape(-1, x.shape[-2], x.shape[-1])
    box = x.shape[-1]
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(x)
        x = (x - ((x * m).sum(dim=(-2, -1), keepdim=True) / m.sum())) * m
        norm = float((m * m).mean())
    else:
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        norm = 1.0
    p = (torch.fft.rfft2(x).abs() ** 2).mean(0) / (box * box) / norm
    k = radial_frequency_grid(box, True, None, x.device, torch.float64)
    shell = torch.round(k * box).long().flatten()
    w = rfft_weights(box, x.device, torch.float64).expand(box, -1).flatten()
    nsh = box // 2 + 1
    keep = shell < nsh
    num = torch.zeros(nsh, dtype=torch.float64).index_add_(0, shell[keep], (p.flatten() * w)[keep])
    den = torch.zeros(nsh, dtype=torch.float64).index_add_(0, shell[keep], w[keep])
    freq = np.arange(nsh) / box / (1.0 if pixel_size is None else pixel_size)
    return freq, (num / den.clamp_min(1)).numpy()
