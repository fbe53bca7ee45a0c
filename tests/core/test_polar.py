"""Polar-Fourier rotational correlation: the fast first pass of identify's search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core.correlate import _prepare, ncc_search, rotate_images
from cryolens.core.errors import JobAborted
from cryolens.core.geometry import random_rotations
from cryolens.core.images import lowpass, soft_circular_mask
from cryolens.core.polar import polar_coefficients, polar_correlation, polar_layout
from cryolens.core.projector import Projector
from cryolens.core.simulate.proteins import random_phantom

B, PX, RES = 48, 4.0, 12.0
MAX_FREQ = PX / RES


@pytest.fixture(scope="module")
def refs() -> torch.Tensor:
    vol = random_phantom(7, box=B, pixel_size=PX, kind="complex").density
    p = Projector(vol).project(torch.as_tensor(random_rotations(24, seed=2), dtype=torch.float32))
    return lowpass(p, PX, RES)  # band-limited, as library references are


def test_layout_follows_the_band_limit():
    r, m, rad = polar_layout(64, 0.2)
    assert rad == pytest.approx(28.8) and r == 12 and m == 38  # rings 2.4 px apart, harmonics to 2 pi r f
    assert polar_layout(64, 0.4)[:2] == (24, 74)


def test_unrotated_pairs_give_the_masked_normalised_correlation(refs):
    p = polar_coefficients(refs, MAX_FREQ)
    mask = soft_circular_mask(B, 0.45 * B, max(2.0, 0.05 * B))
    flat = _prepare(refs, mask).reshape(len(refs), -1)
    cart = flat @ flat.T
    polar = polar_correlation(p, p, n_angles=1)  # angle 0 only: a plain dot product
    assert torch.allclose(polar.diagonal(), torch.ones(len(refs)), atol=1e-5)
    assert (polar - cart).abs().max() < 0.03


def test_a_rotated_copy_is_found_at_any_angle(refs):
    q = rotate_images(refs[[3, 11]], torch.tensor([0.0, 37.0, 200.0]))  # (2, 3, b, b)
    pq = polar_coefficients(q.reshape(-1, B, B), MAX_FREQ)
    c = polar_correlation(pq, polar_coefficients(refs, MAX_FREQ), n_angles=72)
    assert [int(i) for i in c.argmax(1)] == [3, 3, 3, 11, 11, 11]
    assert (c.amax(1) > 0.97).all()


def test_ranks_references_as_exhaustive_ncc_does(refs):
    gen = torch.Generator().manual_seed(0)
    q = rotate_images(refs[[0, 5, 9, 17]], torch.tensor([55.0]))[:, 0]
    q = q + 0.5 * q.std() * torch.randn(q.shape, generator=gen)
    ncc = ncc_search(q, refs, n_psi=36, max_shift_px=2, max_freq=MAX_FREQ).score
    polar = polar_correlation(polar_coefficients(q, MAX_FREQ), polar_coefficients(refs, MAX_FREQ)).numpy()
    assert (polar.argmax(1) == ncc.argmax(1)).all()
    assert np.corrcoef(polar.ravel(), ncc.ravel())[0, 1] > 0.9
    assert (polar <= ncc + 0.03).all()  # no shift search and coarser angles: never far above NCC


def test_chunks_and_aborts(refs):
    p = polar_coefficients(refs, MAX_FREQ)
    np.testing.assert_allclose(polar_coefficients(refs, MAX_FREQ, chunk=5), p, atol=1e-6)
    np.testing.assert_allclose(polar_correlation(p[:3], p, chunk=7), polar_correlation(p[:3], p), atol=1e-6)
    with pytest.raises(JobAborted):
        polar_correlation(p[:3], p, should_stop=lambda: True)
    with pytest.raises(JobAborted):
        polar_coefficients(refs, MAX_FREQ, should_stop=lambda: True)
