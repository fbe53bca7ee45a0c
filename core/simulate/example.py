"""The built-in example: a blob 'protein' (sum of Gaussians) and a small particle set of it.

Used by ``cryolens example`` and by tests that need a simple volume or images with known poses;
the particles come from the one particle simulator (core.simulate.particles).
"""
from __future__ import annotations

import numpy as np

from ..particles import ParticleSet


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
                    snr: float = 0.5, stack: str = "particles.mrcs") -> tuple[np.ndarray, ParticleSet, np.ndarray]:
    """(volume, ParticleSet with the true poses and CTFs, images (n, box, box) float32): one blob
    protein through the particle simulator (uniform poses, real defocus distribution, white noise)."""
    from .particles import ParticleSimulator, SimulatorConfig

    volume = blob_phantom(box, seed)
    sim = ParticleSimulator({"example": volume}, SimulatorConfig(box=box, pixel_size=pixel_size, snr=snr),
                            device=device)
    ps, images, _ = sim.dataset(n, seed=seed, stack=stack)
    ps.source = "cryolens example"
    return volume, ps, images
