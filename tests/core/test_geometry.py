"""cryolens.core.geometry: RELION's Euler convention, quaternions, rotation vectors, shifts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryolens.core import geometry as g


def _eulers(n: int = 500, seed: int = 1) -> np.ndarray:
    e = g.random_euler(n, seed)
    # gimbal lock (tilt 0 and 180) and other edge cases
    edge = np.array([[30.0, 0.0, 50.0], [0.0, 0.0, -20.0], [30.0, 180.0, 50.0], [-170.0, 180.0, 170.0],
                     [0.0, 90.0, 0.0], [180.0, 90.0, -180.0], [0.0, 0.0, 0.0], [359.0, 1e-7, 1.0]])
    return np.concatenate([e, edge])


def test_relion_matrix_literal():
    # RELION Euler_angles2matrix(rot=90, 0, 0) = Rz(90)^T: x of the projection is the volume's y
    A = g.euler_to_matrix([90.0, 0.0, 0.0])
    np.testing.assert_allclose(A, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-15)
    # tilt 90 about y: the projection direction z becomes the volume's x axis
    A = g.euler_to_matrix([0.0, 90.0, 0.0])
    np.testing.assert_allclose(A, [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15)


def test_matrix_is_scipy_transposed():
    e = _eulers()
    A = g.euler_to_matrix(e)
    S = Rotation.from_euler("ZYZ", e, degrees=True).as_matrix()
    np.testing.assert_allclose(A, S.transpose(0, 2, 1), atol=1e-14)
    assert np.abs(A - S).max() > 0.5  # the convention matters


def test_euler_round_trip_including_gimbal_lock():
    e = _eulers()
    A = g.euler_to_matrix(e)
    e2 = g.matrix_to_euler(A)
    assert (e2[:, 1] >= 0).all() and (e2[:, 1] <= 180).all()
    np.testing.assert_allclose(g.euler_to_matrix(e2), A, atol=2e-8)  # gimbal threshold sqrt(eps)
    lock = np.isin(e[:, 1], [0.0, 180.0])
    assert (e2[lock, 0] == 0).all()  # RELION puts the in-plane angle into psi at gimbal lock
    regular = (e[:, 1] > 1) & (e[:, 1] < 179)
    d = (e2[regular] - e[regular] + 180) % 360 - 180
    np.testing.assert_allclose(d, 0, atol=1e-9)


def test_quaternion_round_trip_and_canonical_sign():
    A = g.euler_to_matrix(_eulers())
    q = g.matrix_to_quaternion(A)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-14)
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(g.quaternion_to_matrix(q), A, atol=1e-13)
    np.testing.assert_allclose(g.quaternion_to_matrix(-q), A, atol=1e-13)
    np.testing.assert_allclose(g.quaternion_to_matrix(3 * q), A, atol=1e-13)  # normalised inside
    e = g.random_euler(50, 3)
    np.testing.assert_allclose(g.euler_to_matrix(g.quaternion_to_euler(g.euler_to_quaternion(e))),
                               g.euler_to_matrix(e), atol=1e-12)
    # 180-degree rotations (w = 0) are stable
    half_turns = g.euler_to_matrix(np.array([[0.0, 180.0, 0.0], [90.0, 180.0, 90.0], [180.0, 0.0, 0.0]]))
    np.testing.assert_allclose(g.quaternion_to_matrix(g.matrix_to_quaternion(half_turns)), half_turns, atol=1e-13)


def test_quaternion_is_hamilton_w_first():
    # 90 degrees about +z: q = (cos 45, 0, 0, sin 45) rotates x to y actively
    q = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(g.quaternion_to_matrix(q) @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    S = Rotation.from_quat(q[[1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last
    np.testing.assert_allclose(g.quaternion_to_matrix(q), S, atol=1e-15)


def test_rotvec_is_cryosparc_convention():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(300, 3)) * 1.5  # norms up to ~5 rad: cryoSPARC does not wrap to pi
    r = np.concatenate([r, [[0, 0, 0], [1e-9, 0, 0], [np.pi, 0, 0], [0, 0, -np.pi]]])
    A = g.rotvec_to_matrix(r)
    np.testing.assert_allclose(A, Rotation.from_rotvec(r).as_matrix().transpose(0, 2, 1), atol=1e-13)
    # research claim: from_rotvec(pose).as_euler("ZYZ") is RELION (rot, tilt, psi) in radians
    e_scipy = np.rad2deg(Rotation.from_rotvec(r[:300]).as_euler("ZYZ"))
    np.testing.assert_allclose(g.euler_to_matrix(e_scipy), A[:300], atol=1e-12)
    np.testing.assert_allclose(g.euler_to_matrix(g.rotvec_to_euler(r)), A, atol=2e-8)
    back = g.euler_to_rotvec(g.rotvec_to_euler(r))
    assert (np.linalg.norm(back, axis=1) <= np.pi + 1e-12).all()
    np.testing.assert_allclose(g.rotvec_to_matrix(back), A, atol=2e-8)
    angle = g.angular_distance_deg(g.rotvec_to_matrix(np.array([0, 0, 0.3])), np.eye(3))
    assert angle == pytest.approx(np.rad2deg(0.3))


def test_pose2d_psi():
    pose = np.array([0.0, 0.26, np.pi, 5.9, 2 * np.pi - 1e-9])
    psi = g.pose2d_to_psi(pose)
    assert ((psi > -180) & (psi <= 180)).all()
    np.testing.assert_allclose(np.mod(psi, 360), np.mod(np.rad2deg(pose), 360), atol=1e-9)
    np.testing.assert_allclose(np.cos(g.psi_to_pose2d(psi) - pose), 1, atol=1e-12)


def test_angular_distance():
    A = g.random_rotations(20, 5)
    assert np.abs(g.angular_distance_deg(A, A)).max() < 1e-6
    e = g.matrix_to_euler(A) + np.array([0, 0, 1e-4])
    np.testing.assert_allclose(g.angular_distance_deg(g.euler_to_matrix(e), A), 1e-4, rtol=1e-4)
    R = g.euler_to_matrix([0.0, 0.0, 137.0])
    assert g.angular_distance_deg(R, np.eye(3)) == pytest.approx(137.0)


def test_random_rotations_seeded_and_uniform():
    a, b = g.random_rotations(4000, 7), g.random_rotations(4000, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, g.random_rotations(4000, 8))
    assert np.abs(a.mean(0)).max() < 0.05  # Haar measure: E[R] = 0
    np.testing.assert_allclose(a @ a.transpose(0, 2, 1), np.broadcast_to(np.eye(3), a.shape), atol=1e-12)
    q = g.random_quaternions(4000, 7, dtype=torch.float64)
    assert (q[:, 0] >= 0).all() and torch.allclose(q.norm(dim=1), torch.ones(4000, dtype=torch.float64))
    assert abs(float(g.quaternion_to_matrix(q).mean(0).abs().max())) < 0.05


def test_one_orientation_sampler_both_draws_uniform_and_seeded():
    # random_rotations is scipy's Rotation.random on the shared Gaussian draw, to the byte
    np.testing.assert_array_equal(g.random_rotations(300, 4), Rotation.random(300, random_state=4).as_matrix())
    for draw in ("quaternion", "euler"):
        e = g.uniform_orientations(20000, np.random.default_rng(3), draw=draw)
        np.testing.assert_array_equal(e, g.uniform_orientations(20000, np.random.default_rng(3), draw=draw))
        assert np.abs(g.euler_to_matrix(e).mean(0)).max() < 0.03, draw  # Haar measure: E[R] = 0
        assert abs(np.cos(np.deg2rad(e[:, 1])).mean()) < 0.02 and abs(e[:, 2].mean()) < 3.0, draw
    # the quaternion draw consumes 4 normals a rotation, the euler draw n rot, n cos(tilt), n psi
    rng = np.random.default_rng(5)
    q = rng.standard_normal((7, 4))
    np.testing.assert_array_equal(g.uniform_orientations(7, np.random.default_rng(5)),
                                  g.matrix_to_euler(g.quaternion_to_matrix(q)))
    rng = np.random.default_rng(5)
    rot, c = rng.uniform(-180, 180, 7), rng.uniform(-1, 1, 7)
    views = g.uniform_orientations(7, np.random.default_rng(5), draw="euler", psi=False)
    np.testing.assert_array_equal(views, np.stack([rot, np.rad2deg(np.arccos(c)), np.zeros(7)], -1))
    with pytest.raises(ValueError):
        g.uniform_orientations(3, rng, psi=False)


def test_numpy_torch_agree_float32_and_float64():
    e = _eulers(200, 4)
    A = g.euler_to_matrix(e)
    for dt, tol, gimbal in ((torch.float64, 1e-12, 2e-8), (torch.float32, 2e-6, 4e-4)):
        At = g.euler_to_matrix(torch.tensor(e, dtype=dt))
        assert isinstance(At, torch.Tensor) and At.dtype == dt
        np.testing.assert_allclose(At.double().numpy(), A, atol=tol)
        qt = g.matrix_to_quaternion(torch.tensor(A, dtype=dt))
        np.testing.assert_allclose(g.quaternion_to_matrix(qt).double().numpy(), A, atol=10 * tol)
        et = g.matrix_to_euler(torch.tensor(A, dtype=dt))
        np.testing.assert_allclose(g.euler_to_matrix(et).double().numpy(), A, atol=max(100 * tol, gimbal))
        rt = g.rotvec_to_matrix(torch.tensor(g.matrix_to_rotvec(A), dtype=dt))
        np.testing.assert_allclose(rt.double().numpy(), A, atol=10 * tol)


def test_quaternion_gradients_are_finite():
    q = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(g.random_rotations(16, 2))
    loss = (g.quaternion_to_matrix(q) - target).pow(2).sum()
    loss.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_shift_units():
    assert g.px_to_angstrom(np.array([2.0, -3.0]), 1.5).tolist() == [3.0, -4.5]
    assert g.angstrom_to_px(-11.6962, 3.54) == pytest.approx(-3.30401, abs=1e-5)  # a real star row
