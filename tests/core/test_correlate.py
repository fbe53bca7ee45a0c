"""Brute-force NCC with rotation and shift search (the identity-retrieval baseline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core.correlate import ncc_search, rotate_images
from cryolens.core.geometry import random_rotations
from cryolens.core.projector import Projector
from cryolens.core.simulate.proteins import random_phantom

B = 48


@pytest.fixture(scope="module")
def refs() -> torch.Tensor:
    vol = random_phantom(4, box=B, pixel_size=4.0, kind="complex").density  # structured, asymmetric
    return Projector(vol).project(torch.as_tensor(random_rotations(12, seed=1), dtype=torch.float32))


def test_rotation_about_the_centre_pixel():
    img = torch.zeros(1, B, B)
    img[0, B // 2, B // 2 + 8] = 1.0  # a point 8 px right of the centre
    rot = rotate_images(img, torch.tensor([0.0, 90.0, 180.0]))[0]
    assert torch.allclose(rot[0], img[0], atol=1e-6)
    assert rot[2, B // 2, B // 2 - 8] == pytest.approx(1.0, abs=1e-5)  # 180: to the left
    y, x = np.unravel_index(int(rot[1].argmax()), (B, B))
    assert (abs(x - B // 2), abs(y - B // 2)) == (0, 8)  # 90: onto the vertical axis


def test_finds_the_reference_and_its_angle(refs):
    q = rotate_images(refs[5:6], torch.tensor([40.0]))[:, 0]
    q = q + 0.05 * q.std() * torch.randn(q.shape, generator=torch.Generator().manual_seed(0))
    m = ncc_search(q, refs, n_psi=36, max_shift_px=4)
    assert int(m.score[0].argmax()) == 5 and m.score[0, 5] > 0.95
    assert m.psi[0, 5] == pytest.approx(320.0)  # rotating the query by 320 undoes its 40
    np.testing.assert_array_equal(m.shift[0, 5], [0, 0])
    assert np.delete(m.score[0], 5).max() < m.score[0, 5] - 0.02


def test_finds_the_shift(refs):
    q = torch.roll(refs[3:4], shifts=(2, -3), dims=(-2, -1))  # down 2, left 3
    m = ncc_search(q, refs, n_psi=36, max_shift_px=4)
    assert int(m.score[0].argmax()) == 3 and m.score[0, 3] > 0.97 and m.psi[0, 3] == 0
    np.testing.assert_array_equal(m.shift[0, 3], [3, -2])  # (x, y) that moves it back


def test_chunking_does_not_change_the_answer(refs):
    q = refs[[1, 7]] + 0.3 * torch.randn((2, B, B), generator=torch.Generator().manual_seed(1))
    a = ncc_search(q, refs, n_psi=12, max_shift_px=2, ref_chunk=5)
    b = ncc_search(q, refs, n_psi=12, max_shift_px=2, ref_chunk=100)
    np.testing.assert_allclose(a.score, b.score, atol=1e-5)
    assert [int(i) for i in a.score.argmax(1)] == [1, 7]


def test_box_mismatch_is_refused(refs):
    with pytest.raises(ValueError, match="resample"):
        ncc_search(torch.zeros(1, 32, 32), refs)


def test_need_searches_only_the_wanted_pairs(refs):
    """The combined mode's batched shortlist search: wanted pairs score exactly as in the full
    search, the rest -inf; a chunk no query wants is skipped."""
    q = refs[[2, 9, 4]] + 0.3 * torch.randn((3, B, B), generator=torch.Generator().manual_seed(2))
    full = ncc_search(q, refs, n_psi=12, max_shift_px=2, ref_chunk=4)
    need = torch.zeros(3, len(refs), dtype=torch.bool)
    need[0, [2, 3, 10]] = True
    need[1, 9] = True  # the chunk of references 4-7 is wanted by query 2 only; 8-11 by 0 and 1
    need[2, 4:8] = True
    part = ncc_search(q, refs, n_psi=12, max_shift_px=2, ref_chunk=4, need=need)
    n = need.numpy()
    np.testing.assert_allclose(part.score[n], full.score[n], atol=1e-5)
    np.testing.assert_array_equal(part.psi[n], full.psi[n])
    assert np.isneginf(part.score[~n]).all()
    with pytest.raises(ValueError, match="need"):
        ncc_search(q, refs, need=need[:2])
