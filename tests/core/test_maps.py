"""core.maps: the one 3D Fourier resampler and the centre crop/pad (the rest of the module, user
maps and atomic models, is tested with the phantoms that build on it in test_sim_proteins.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core.maps import fit_box, fourier_resize_map


def _blob(n: int) -> np.ndarray:
    z, y, x = np.indices((n, n, n)) - n // 2
    return np.exp(-(x * x + 2 * y * y + 3 * (z - 1) ** 2) / (2 * (n / 8) ** 2))


@pytest.mark.parametrize("n, m", [(24, 36), (24, 16), (25, 16), (16, 25)])
def test_fourier_resize_map_numpy_and_torch_agree_and_keep_values(n, m):
    vol = _blob(n)
    a = fourier_resize_map(vol, m)
    b = fourier_resize_map(torch.from_numpy(vol), m)
    assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor) and a.shape == (m,) * 3
    np.testing.assert_allclose(b.numpy(), a, atol=1e-12)
    # a smooth map keeps its values: the centre voxel and the mean density per unit volume
    assert a[m // 2, m // 2, m // 2] == pytest.approx(vol[n // 2, n // 2, n // 2], rel=0.02)
    assert a.sum() * (n / m) ** 3 == pytest.approx(vol.sum(), rel=1e-6)
    assert fourier_resize_map(vol, n) is vol


def test_fit_box_keeps_the_centre_voxel():
    vol = np.zeros((9, 9, 9))
    vol[4, 4, 4] = 1.0
    for box in (6, 9, 12):
        out = fit_box(vol, box)
        assert out.shape == (box,) * 3 and out[box // 2, box // 2, box // 2] == 1.0 and out.sum() == 1.0
    t = fit_box(torch.from_numpy(vol), 12)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and float(t[6, 6, 6]) == 1.0
