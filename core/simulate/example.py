"""The built-in example: a small particle data set made with cryolens' own projector and CTF.

A blob 'protein' (sum of Gaussians) is projected at uniform random poses with small shifts,
realistic per-micrograph defocus and white noise. Used by ``cryolens example`` / ``make demo``
and by tests that need images with known poses. (The full phantom universe lives beside it.)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..ctf import ctf_2d
from ..geometry import euler_to_matrix, random_euler
from ..images import normalize_background
from ..particles import ParticleSet
from ..projector import Projector


def blob_phantom(box: int = 64, seed: int = 0, n_blobs: int = 12, radius_px: float | None = None) -> np.ndarray:
    """An asymmetric blob density (D, D, D) centred at D//2, values >= 0."""
    rng = np.random.default_rng(seed)
    radius_px = box * 0.28 if radius_px is None else radius_px
    c = box // 2
    z, y, x = (np.mgrid[:box, :box, :box].astype(np.float32) - c)
    vol = np.zeros((box, box, box), np.float32)
    for _ in range(n_blobs):
        p = rng.normal(size=3)
        p = p / np.linalg.norm(p) * rng.uniform(0, radius_px)
        s = rng.uniform(0.04, 0.08) * box
        vol += rng.uniform(0.5, 1.5) * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return vol


def example_dataset(n: int = 200, box: int = 64, seed: int = 0, device="cpu", pixel_size: float = 3.0,
                    snr: float = 0.5, voltage: float = 300.0, cs: float = 2.7, amp_contrast: float = 0.1,
                    stack: str = "particles.mrcs") -> tuple[np.ndarray, ParticleSet, np.ndarray]:
    """(volume, ParticleSet with the true poses and CTFs, images (n, box, box) float32)."""
    rng = np.random.default_rng(seed)
    volume = blob_phantom(box, seed)
    angles = random_euler(n, seed)
    shifts = rng.normal(0.0, 1.0, size=(n, 2)) * pixel_size  # Angstrom
    n_mics = max(1, n // 50)
    mic = rng.integers(0, n_mics, n)
    du = rng.uniform(10000, 25000, n_mics)[mic] + rng.normal(0, 50, n)
    dv = du - rng.uniform(0, 300, n)
    da = rng.uniform(0, 180, n)
    ctf = ctf_2d(box, pixel_size, du, dv, da, voltage, cs, amp_contrast, device=device)
    proj = Projector(volume, device=device)
    images = proj.project(torch.as_tensor(euler_to_matrix(angles)), shifts_px=torch.as_tensor(shifts / pixel_size),
                          ctf=ctf)
    noise_std = images.std(dim=(-2, -1), keepdim=True).mean() / np.sqrt(snr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = images + noise_std * torch.randn(images.shape, generator=gen).to(images.device)
    images = normalize_background(images)  # RELION's convention: background mean 0, std 1
    table = pd.DataFrame({
        "image_stack": stack, "image_index": np.arange(n),
        "micrograph": [f"Micrographs/example_mic{m:03d}.mrc" for m in mic],
        "coord_x": rng.uniform(100, 3900, n).round(1), "coord_y": rng.uniform(100, 3900, n).round(1),
        "rot": angles[:, 0], "tilt": angles[:, 1], "psi": angles[:, 2],
        "shift_x": shifts[:, 0], "shift_y": shifts[:, 1],
        "defocus_u": du, "defocus_v": dv, "defocus_angle": da, "phase_shift": 0.0, "ctf_bfactor": 0.0,
        "optics_group": 1, "half_set": 1 + np.arange(n) % 2,
        "pixel_size": pixel_size, "box": box, "voltage": voltage, "cs": cs, "amp_contrast": amp_contrast,
    })
    return volume, ParticleSet(table, source="cryolens example"), images.cpu().numpy().astype(np.float32)
