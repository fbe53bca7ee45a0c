"""RELION's contrast transfer function in torch (src/ctf.h ``CTF::getCTF``), batched over particles.

    lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))            (Angstrom, V in volts, relativistic)
    df(a)  = (dU + dV)/2 + (dU - dV)/2 cos(2 (a - defocus_angle))   (a = atan2(ky, kx))
    chi    = pi lambda df s^2 - pi/2 Cs lambda^3 s^4 + phase_shift + atan(Q0 / sqrt(1 - Q0^2))
    CTF    = scale * sin(chi) * exp(-B s^2 / 4)

which is RELION's ``-sin(K1 deltaf u2 + K2 u4 - K5 - K3)`` with its negative ``deltaf``. Sign:
RELION's CTF is POSITIVE at low frequency (CTF(0) = +Q0, rising with underfocus dU, dV > 0), so a
positive density projects to a positive (white) particle, as in RELION's contrast-inverted
particle stacks. Verified against 49 relion_project images of a point mass with real CTFs
(NCC >= 0.99984, same absolute scale; the flipped sign gives -1, a mirrored astigmatism angle
0.992), see tests/test_conventions_relion.py.

Frequencies follow torch.fft (unshifted): rows ``ky = fftfreq(box)``, columns ``kx = rfftfreq(box)``
(or ``fftfreq`` when ``rfft=False``), in 1/Angstrom, except that the Nyquist index of an even box
is +Nyquist (RELION's FFTW loop); x is the image column and the astigmatism angle is measured
from x towards y (row), as RELION.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["electron_wavelength", "ctf_2d", "frequency_grid"]


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom (RELION's constant)."""
    v = voltage_kv * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + v * 0.978466e-6))


def frequency_grid(box: int, pixel_size: float = 1.0, rfft: bool = True, device=None,
                   dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(ky, kx) broadcastable grids in 1/Angstrom, torch.fft layout: (box, 1) and (1, box//2+1 or box).

    Index i holds frequency i for i <= box//2, else i - box: torch's fftfreq except that the
    Nyquist index of an even box is +1/(2 pixel_size), as in RELION (it matters with astigmatism).
    """
    i = torch.arange(box, device=device)
    f = torch.where(i <= box // 2, i, i - box).to(dtype) / (box * pixel_size)
    return f[:, None], (f[: box // 2 + 1] if rfft else f)[None, :]


def _col(x, device) -> torch.Tensor:
    """Scalar or (N,) parameter (number, numpy, tensor) -> (N, 1, 1) float64 tensor."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))
    return t.to(device=device, dtype=torch.float64).reshape(-1, 1, 1)


def ctf_2d(box: int, pixel_size: float, defocus_u, defocus_v, defocus_angle_deg, voltage_kv, cs_mm,
           amp_contrast, phase_shift_deg=0.0, bfactor=0.0, scale=1.0, *, device=None,
           dtype=torch.float32, rfft: bool = True) -> torch.Tensor:
    """RELION CTF images, (N, box, box//2+1) (rfft) or (N, box, box) (full), torch.fft layout.

    Defocus in Angstrom (underfocus positive), angle and phase shift in degrees, voltage in kV,
    Cs in mm, B-factor in A^2. Every parameter is a scalar or an (N,) array/tensor (broadcast).
    Computed in float64 (chi reaches tens of radians), returned in ``dtype``.
    """
    if device is None:
        device = next((p.device for p in (defocus_u, defocus_v) if isinstance(p, torch.Tensor)), None)
    ky, kx = frequency_grid(box, pixel_size, rfft, device)
    s2 = kx * kx + ky * ky
    ang = torch.atan2(ky, kx)
    du, dv, da = _col(defocus_u, device), _col(defocus_v, device), torch.deg2rad(_col(defocus_angle_deg, device))
    volt = _col(voltage_kv, device) * 1e3
    lam = 12.2643247 / torch.sqrt(volt * (1.0 + volt * 0.978466e-6))
    cs = _col(cs_mm, device) * 1e7
    q0 = _col(amp_contrast, device)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (ang - da))
    chi = (math.pi * lam * df * s2 - 0.5 * math.pi * cs * lam ** 3 * s2 * s2
           + torch.deg2rad(_col(phase_shift_deg, device)) + torch.atan(q0 / torch.sqrt(1.0 - q0 * q0)))
    ctf = torch.sin(chi) * torch.exp(-_col(bfactor, device) / 4.0 * s2) * _col(scale, device)
    return ctf.to(dtype)
