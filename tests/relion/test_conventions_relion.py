"""Conventions proved against RELION's and cryoSPARC's own output (../shared/data).

relion_project images of a real map and of a point mass with real CTFs are reproduced by
cryolens' geometry + projector + CTF; cryoSPARC poses agree with cryoDRGN's golden matrices.
The comparison code lives in bench/conventions.py (which prints the same figures as JSON).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from conftest import shared_path

_spec = importlib.util.spec_from_file_location(
    "cryolens_bench_conventions", Path(__file__).resolve().parents[2] / "bench" / "conventions.py")
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)

pytestmark = pytest.mark.shared


@pytest.fixture(autouse=True)
def _need_data():
    shared_path("relion-conventions", "clean70SRibosome_vol_65p.mrc")


@pytest.mark.parametrize("name", conv.RIBOSOME_FILES)
def test_relion_project_reproduced(name):
    v = conv.ribosome_projection_ncc(name)
    assert v.min() > 0.9999, v  # measured: 0.99999 (rln_proj_64), 1.00000 for the others
    # the check can fail: scipy's matrix (A transposed) does not reproduce RELION
    assert conv.ribosome_projection_ncc(name, transpose=True).mean() < 0.5


@pytest.mark.parametrize("name", ["rln_proj_65", "rln_proj_65_shifted"])
def test_relion_project_odd_box_is_one_pixel_off(name):
    # relion_project's odd-box images are centred at box//2 + 1; without that offset they miss
    assert conv.ribosome_projection_ncc(name, odd_offset=False).mean() < 0.9


def test_rln_proj_64_map_was_resampled_half_voxel_off():
    # the 5-image rln_proj_64 file needs the 64^3 map translated by -0.5 voxel (see bench docstring)
    assert conv.ribosome_projection_ncc("rln_proj_64", half_voxel=False).mean() < 0.99


@pytest.mark.parametrize("box", [64, 65])
def test_shifted_files_are_centred_files_rolled_by_minus_origin(box):
    # data fact behind the shift convention: relion_project moves the image by -rlnOriginX/Y
    d = conv.CONV
    centred = mrcfile.read(d / f"rln_proj_{box}_centered.mrcs")
    shifted = mrcfile.read(d / f"rln_proj_{box}_shifted.mrcs")
    parts, _ = conv.read_star(d / f"rln_proj_{box}_shifted.star")
    for k, (ox, oy) in enumerate(parts[["rlnOriginX", "rlnOriginY"]].to_numpy(int)):
        np.testing.assert_array_equal(shifted[k], np.roll(centred[k], (-oy, -ox), (0, 1)))


@pytest.mark.parametrize("name", list(conv.POINT_FILES))
def test_relion_ctf_reproduced(name):
    v = conv.point_mass_ncc(name)
    assert v.min() > 0.9998, v  # measured: min 0.99984, mean 0.99997
    assert conv.point_mass_ncc(name, ctf_sign=-1.0).max() < -0.999  # RELION's CTF sign


def test_ctf_astigmatism_angle_matters():
    # a mirrored astigmatism angle measurably breaks the agreement (0.992 min), so the test can fail
    import torch

    real = conv.ctf_2d
    try:
        conv.ctf_2d = lambda box, apix, du, dv, ang, *a, **k: real(box, apix, du, dv, -np.asarray(ang), *a, **k)
        wrong = conv.point_mass_ncc("relion_proj_batch")
    finally:
        conv.ctf_2d = real
    assert wrong.min() < 0.995 and isinstance(real(8, 1.0, 1e4, 1e4, 0, 300, 2.7, 0.1), torch.Tensor)


def test_point_mass_position_from_peaks():
    p = conv.point_mass_fit()
    np.testing.assert_allclose(p, conv.POINT_MASS_XYZ, atol=0.2)  # measured (17.09, -0.00, -0.10)


def test_cryosparc_rotvec_matches_cryodrgn_golden():
    shared_path("cryosparc", "pose.cs.pkl")
    assert conv.cryosparc_angle_diff() < 1e-3  # measured 2.7e-5 degrees (float32 input)
    assert conv.cryosparc_angle_diff(transpose_baseline=True) > 90
