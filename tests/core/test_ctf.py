"""cryolens.core.ctf: RELION's CTF formula, sign, layout and batching (real-data proof in
tests/relion/test_conventions_relion.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryolens.core.ctf import ctf_2d, electron_wavelength, frequency_grid

BASE = dict(defocus_u=15000.0, defocus_v=15000.0, defocus_angle_deg=0.0, voltage_kv=300.0, cs_mm=2.7,
            amp_contrast=0.1)


def test_wavelength():
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=1e-6)
    assert electron_wavelength(200) == pytest.approx(0.025079, abs=1e-6)


def test_sign_positive_at_low_frequency():
    c = ctf_2d(64, 1.0, **BASE, dtype=torch.float64)[0]
    assert c[0, 0] == pytest.approx(0.1)  # CTF(0) = +Q0 (RELION: -sin(-K3))
    assert c[0, 1] > c[0, 0] > 0  # underfocus raises it towards the first (positive) peak
    pp = ctf_2d(64, 1.0, **{**BASE, "amp_contrast": 0.0}, phase_shift_deg=90.0, dtype=torch.float64)[0]
    assert pp[0, 0] == pytest.approx(1.0)  # phase plate: full contrast at zero frequency


def test_zeros_at_expected_frequencies():
    # Cs = 0, Q0 = 0: CTF = sin(pi lambda df s^2) is zero at s_n = sqrt(n / (lambda df))
    box, apix, df = 512, 1.0, 20000.0
    c = ctf_2d(box, apix, df, df, 0.0, 300.0, 0.0, 0.0, dtype=torch.float64)[0, 0].numpy()
    lam = electron_wavelength(300.0)
    s = np.arange(box // 2 + 1) / (box * apix)
    for n in range(1, 6):
        sn = math.sqrt(n / (lam * df))
        i = int(sn * box * apix)  # the zero lies between pixels i and i + 1
        assert s[i] <= sn < s[i + 1] and c[i] * c[i + 1] <= 0
    # with Cs and Q0, the zeros are where chi = n pi
    c = ctf_2d(box, apix, df, df, 0.0, 300.0, 2.7, 0.07, dtype=torch.float64)[0, 0].numpy()
    chi = (math.pi * lam * df * s ** 2 - math.pi / 2 * 2.7e7 * lam ** 3 * s ** 4
           + math.atan(0.07 / math.sqrt(1 - 0.07 ** 2)))
    np.testing.assert_allclose(c, np.sin(chi), atol=1e-12)


def test_astigmatism_direction():
    # defocus U acts along the defocus angle (from x towards y), V perpendicular to it
    box, apix = 128, 1.0
    u, v = 20000.0, 12000.0
    for ang in (0.0, 45.0, 90.0, 135.0):
        full = ctf_2d(box, apix, u, v, ang, 300.0, 2.7, 0.1, rfft=False, dtype=torch.float64)[0].numpy()
        iso_u = ctf_2d(box, apix, u, u, 0.0, 300.0, 2.7, 0.1, rfft=False, dtype=torch.float64)[0].numpy()
        iso_v = ctf_2d(box, apix, v, v, 0.0, 300.0, 2.7, 0.1, rfft=False, dtype=torch.float64)[0].numpy()
        ky, kx = (t.numpy() for t in frequency_grid(box, apix, rfft=False))
        theta = np.arctan2(ky, kx)
        along = np.isclose(np.cos(theta - np.deg2rad(ang)) ** 2, 1.0)
        across = np.isclose(np.cos(theta - np.deg2rad(ang)) ** 2, 0.0)
        assert along.sum() > 10 and across.sum() > 10
        np.testing.assert_allclose(full[along], iso_u[along], atol=1e-9)
        np.testing.assert_allclose(full[across], iso_v[across], atol=1e-9)


@pytest.mark.slow
def test_layout_batching_envelope_and_dtypes():
    n = 3
    du = torch.tensor([10000.0, 15000.0, 25000.0])
    args = (du, du + 500, torch.tensor([0.0, 45.0, 120.0]), 300.0, 2.7, 0.1)
    for box in (64, 65):
        r = ctf_2d(box, 1.3, *args)
        f = ctf_2d(box, 1.3, *args, rfft=False)
        assert r.shape == (n, box, box // 2 + 1) and f.shape == (n, box, box) and r.dtype == torch.float32
        torch.testing.assert_close(f[..., : box // 2 + 1], r)  # rfft columns are the first half
        if box % 2:  # CTF(-k) = CTF(k): full grid is point-symmetric about index 0
            torch.testing.assert_close(f[:, 1:, 1:], f[:, 1:, 1:].flip(1, 2))
    d64 = ctf_2d(64, 1.3, *args, dtype=torch.float64)
    torch.testing.assert_close(ctf_2d(64, 1.3, *args).double(), d64, atol=1e-6, rtol=0)
    b = ctf_2d(64, 1.3, *args, bfactor=torch.tensor([0.0, 50.0, 100.0]), scale=0.5, dtype=torch.float64)
    ky, kx = frequency_grid(64, 1.3)
    env = 0.5 * torch.exp(-torch.tensor([0.0, 50.0, 100.0])[:, None, None].double() / 4 * (kx ** 2 + ky ** 2))
    torch.testing.assert_close(b, d64 * env)
    one = ctf_2d(64, 1.3, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    assert one.shape == (1, 64, 33)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    du = torch.tensor([10000.0, 20000.0])
    cpu = ctf_2d(128, 1.0, du, du, 0.0, 300.0, 2.7, 0.1)
    gpu = ctf_2d(128, 1.0, du.cuda(), du.cuda(), 0.0, 300.0, 2.7, 0.1)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)
