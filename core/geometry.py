"""The one rotation convention of cryolens: RELION's.

Canonical pose
--------------
* Euler angles ``(rot, tilt, psi)`` in degrees, ZYZ, exactly RELION's ``rlnAngleRot/Tilt/Psi``.
* ``A = euler_to_matrix(rot, tilt, psi)`` is RELION's ``Euler_angles2matrix``. It maps volume
  coordinates to the projection frame: the projection is the line integral along z of the volume
  rotated by A, ``P(x, y) = integral V(A^T (x, y, z)) dz``; in Fourier space the central slice
  samples the volume's transform at ``A^T (kx, ky, 0)`` (RELION ``Projector::project``).
* Relation to scipy: ``A = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T``
  (scipy's intrinsic ZYZ matrix ``Rz(rot) Ry(tilt) Rz(psi)`` is A transposed). Tested in
  tests/test_geometry.py; proved against relion_project's own images in
  tests/test_conventions_relion.py: projecting with A reproduces all 26 ribosome images (NCC
  >= 0.99998) and 49 point-mass images (NCC >= 0.9998); with A transposed the NCC drops below 0.4.
* Coordinates: arrays are indexed ``[z, y, x]`` (MRC order); x is the column, y the row; the
  centre of a box of size D is index ``D // 2`` for even and odd D (RELION/FFTW).

Quaternions (for learning): ``(w, x, y, z)``, w first, unit norm, sign-canonical ``w >= 0``;
``quaternion_to_matrix(q)`` returns the RELION matrix A (standard Hamilton active formula).

cryoSPARC ``alignments3D/pose`` is a rotation vector r with ``Rotation.from_rotvec(r).as_matrix()
== A.T``, i.e. ``A = exp([r]_x)^T`` and ``from_rotvec(r).as_euler("ZYZ")`` gives RELION's
(rot, tilt, psi) in radians. This equals cryoDRGN's golden ``pose.cs.pkl`` (rot = expmap(pose)^T)
for all 2019 particles of a real refinement (pyem ``csparc2star`` uses the same formula).
cryoSPARC ``alignments2D/pose`` (radians) -> ``rlnAnglePsi = degrees(pose)`` (pyem's conversion;
no paired RELION/cryoSPARC 2D data was available to check the sign independently).

Shifts: RELION ``rlnOriginX/Y`` (pixels; ``rlnOriginX/YAngst`` in 3.1+ divided by the pixel
size) is the translation that centres the particle: relion_project puts the projection centre at
``box // 2 - origin`` (shown on the ``rln_proj_*_shifted`` images: they are the centred images
rolled by ``-origin``). ``Projector.project(..., shifts_px=origin)`` follows this.

All functions accept numpy arrays (computed in float64, returned as numpy) or torch tensors
(computed in the tensor's dtype/device, differentiable) with arbitrary leading batch dims.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

__all__ = [
    "euler_to_matrix", "matrix_to_euler", "quaternion_to_matrix", "matrix_to_quaternion",
    "euler_to_quaternion", "quaternion_to_euler", "rotvec_to_matrix", "matrix_to_rotvec",
    "rotvec_to_euler", "euler_to_rotvec", "pose2d_to_psi", "psi_to_pose2d",
    "angular_distance_deg", "uniform_orientations", "gaussian_quaternions", "random_rotations", "random_euler",
    "random_quaternions",
    "px_to_angstrom", "angstrom_to_px", "canonical_quaternion",
]


def _t(x):
    """Torch view of the input, and whether to hand back numpy (numpy in -> float64 numpy out)."""
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.as_tensor(np.asarray(x, dtype=np.float64)), True


def _out(t: torch.Tensor, to_numpy: bool):
    return t.detach().cpu().numpy() if to_numpy else t


def euler_to_matrix(angles_deg):
    """RELION ``Euler_angles2matrix``: (..., 3) degrees (rot, tilt, psi) -> (..., 3, 3) matrix A."""
    e, np_out = _t(angles_deg)
    a, b, g = torch.deg2rad(e).unbind(-1)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    A = torch.stack([
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ], -2)
    return _out(A, np_out)


def matrix_to_euler(A, eps: float | None = None):
    """RELION ``Euler_matrix2angles``: (..., 3, 3) -> (..., 3) degrees, tilt in [0, 180].

    At gimbal lock (|sin tilt| <= eps) rot is set to 0 and psi carries the in-plane angle, as
    RELION. The default eps, sqrt(machine epsilon), balances the two errors (about 1e-8 in float64).
    """
    M, np_out = _t(A)
    if eps is None:
        eps = float(torch.finfo(M.dtype).eps) ** 0.5
    abs_sb = torch.sqrt(M[..., 0, 2] ** 2 + M[..., 1, 2] ** 2)
    regular = abs_sb > eps
    psi = torch.atan2(M[..., 1, 2], -M[..., 0, 2])
    rot = torch.atan2(M[..., 2, 1], M[..., 2, 0])
    tilt = torch.atan2(abs_sb, M[..., 2, 2])
    up = M[..., 2, 2] > 0  # gimbal lock: tilt 0 (A = Rz(psi')^T) or tilt 180
    psi_lock = torch.where(up, torch.atan2(-M[..., 1, 0], M[..., 0, 0]),
                           torch.atan2(M[..., 1, 0], -M[..., 0, 0]))
    zero = torch.zeros_like(rot)
    rot = torch.where(regular, rot, zero)
    tilt = torch.where(regular, tilt, torch.where(up, zero, torch.full_like(tilt, torch.pi)))
    psi = torch.where(regular, psi, psi_lock)
    return _out(torch.rad2deg(torch.stack([rot, tilt, psi], -1)), np_out)


def canonical_quaternion(q):
    """Unit quaternion with w >= 0 (q and -q are the same rotation)."""
    t, np_out = _t(q)
    t = t / t.norm(dim=-1, keepdim=True)
    return _out(torch.where(t[..., :1] < 0, -t, t), np_out)


def quaternion_to_matrix(q):
    """(..., 4) quaternion (w, x, y, z), normalised here -> (..., 3, 3) RELION matrix A."""
    t, np_out = _t(q)
    w, x, y, z = (t / t.norm(dim=-1, keepdim=True)).unbind(-1)
    R = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    return _out(R, np_out)


def matrix_to_quaternion(A):
    """(..., 3, 3) rotation -> (..., 4) unit quaternion (w, x, y, z), w >= 0.

    Shepperd's method: use the largest of the four |q_i| as pivot, so it is stable everywhere
    (including 180-degree rotations where w = 0).
    """
    M, np_out = _t(A)
    m00, m11, m22 = M[..., 0, 0], M[..., 1, 1], M[..., 2, 2]
    d = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                     1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)  # 4 q_i^2
    a21, a12 = M[..., 2, 1], M[..., 1, 2]
    a02, a20 = M[..., 0, 2], M[..., 2, 0]
    a10, a01 = M[..., 1, 0], M[..., 0, 1]
    # row i: 4 q_i * (w, x, y, z)
    cand = torch.stack([
        torch.stack([d[..., 0], a21 - a12, a02 - a20, a10 - a01], -1),
        torch.stack([a21 - a12, d[..., 1], a10 + a01, a02 + a20], -1),
        torch.stack([a02 - a20, a10 + a01, d[..., 2], a21 + a12], -1),
        torch.stack([a10 - a01, a02 + a20, a21 + a12, d[..., 3]], -1),
    ], -2)
    best = d.argmax(-1)
    idx = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(cand, -2, idx).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return _out(torch.where(q[..., :1] < 0, -q, q), np_out)


def euler_to_quaternion(angles_deg):
    return matrix_to_quaternion(euler_to_matrix(angles_deg))


def quaternion_to_euler(q):
    return matrix_to_euler(quaternion_to_matrix(q))


def rotvec_to_matrix(rotvec):
    """cryoSPARC ``alignments3D/pose`` (..., 3) radians -> RELION A = Rodrigues(rotvec)^T."""
    r, np_out = _t(rotvec)
    theta = r.norm(dim=-1, keepdim=True)[..., None]  # (..., 1, 1)
    zero = torch.zeros_like(r[..., 0])
    K = torch.stack([  # skew matrix [r]_x
        torch.stack([zero, -r[..., 2], r[..., 1]], -1),
        torch.stack([r[..., 2], zero, -r[..., 0]], -1),
        torch.stack([-r[..., 1], r[..., 0], zero], -1),
    ], -2)
    small = theta < 1e-4  # Taylor series avoids 0/0 at the identity
    t2 = theta * theta
    s = torch.where(small, 1 - t2 / 6, torch.sin(theta) / torch.where(small, 1, theta))
    c = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(theta)) / torch.where(small, 1, t2))
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(K)
    R = eye + s * K + c * (K @ K)
    return _out(R.transpose(-1, -2), np_out)


def matrix_to_rotvec(A):
    """RELION A -> cryoSPARC rotation vector (radians, norm <= pi): log(A^T)."""
    q, np_out = _t(matrix_to_quaternion(A))
    w, v = q[..., :1], -q[..., 1:]  # quaternion of A^T is the conjugate
    n = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(n, w)
    scale = torch.where(n > 1e-12, angle / torch.where(n > 1e-12, n, 1), 2 / w.clamp_min(1e-12))
    return _out(v * scale, np_out)


def rotvec_to_euler(rotvec):
    """cryoSPARC 3D pose (radians) -> RELION (rot, tilt, psi) degrees."""
    return matrix_to_euler(rotvec_to_matrix(rotvec))


def euler_to_rotvec(angles_deg):
    return matrix_to_rotvec(euler_to_matrix(angles_deg))


def pose2d_to_psi(pose_rad):
    """cryoSPARC ``alignments2D/pose`` (radians) -> rlnAnglePsi (degrees, in (-180, 180])."""
    p = np.rad2deg(np.asarray(pose_rad, dtype=np.float64))
    return 180.0 - np.mod(180.0 - p, 360.0)


def psi_to_pose2d(psi_deg):
    """rlnAnglePsi (degrees) -> cryoSPARC ``alignments2D/pose`` (radians, in [0, 2 pi))."""
    return np.mod(np.deg2rad(np.asarray(psi_deg, dtype=np.float64)), 2 * np.pi)


def angular_distance_deg(A, B):
    """Geodesic angle (degrees) between rotation matrices (..., 3, 3), accurate near 0."""
    a, np_out = _t(A)
    b, _ = _t(B)
    b = b.to(a)
    # ||A - B||_F = 2 sqrt(2) sin(theta / 2)
    x = ((a - b).flatten(-2).norm(dim=-1) / (2 * np.sqrt(2))).clamp(max=1.0)
    return _out(torch.rad2deg(2 * torch.asin(x)), np_out)


def gaussian_quaternions(n: int, rng) -> np.ndarray | torch.Tensor:
    """(n, 4) independent standard-normal 4-vectors: normalised, they are uniform on S^3, so as
    quaternions they are Haar-uniform rotations (Muller 1959, Commun. ACM 2:19; Shoemake 1992,
    "Uniform random rotations", Graphics Gems III). ``rng`` a numpy Generator or RandomState
    (float64 numpy) or a torch Generator (float64 tensor). Left unnormalised: every consumer
    (``quaternion_to_matrix``, ``canonical_quaternion``, scipy's ``Rotation``) normalises once."""
    if isinstance(rng, torch.Generator):
        return torch.randn(n, 4, generator=rng, dtype=torch.float64)
    return rng.standard_normal((n, 4))


def uniform_orientations(n: int, rng, *, draw: str = "quaternion", psi: bool = True) -> np.ndarray:
    """The one uniform orientation sampler: (n, 3) RELION (rot, tilt, psi) degrees from ``rng``
    (a numpy Generator).

    ``draw="quaternion"``: Haar-uniform rotations from ``gaussian_quaternions`` (4 normals each).
    ``draw="euler"``: rot and psi uniform in [-180, 180), cos(tilt) uniform in [-1, 1): the Haar
    measure in ZYZ Euler angles, whose density is sin(tilt) (Miles 1965, Biometrika 52:636); 3
    uniforms each, drawn as n rot, then n cos(tilt), then n psi. ``psi=False`` (euler only):
    psi = 0 and not drawn, a uniform view direction (2D classes fix the in-plane angle).
    Both are uniform; they use the stream differently, so a caller's draw fixes its bytes.
    """
    if draw == "quaternion":
        if not psi:
            raise ValueError("psi=False needs draw='euler' (a quaternion fixes all three angles)")
        return matrix_to_euler(quaternion_to_matrix(gaussian_quaternions(n, rng)))
    if draw != "euler":
        raise ValueError(f"draw must be 'quaternion' or 'euler', not {draw!r}")
    rot = rng.uniform(-180, 180, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1, 1, n)))
    return np.stack([rot, tilt, rng.uniform(-180, 180, n) if psi else np.zeros(n)], -1)


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    """n uniform (Haar) random RELION matrices, float64 (n, 3, 3), reproducible from the seed."""
    # scipy reads the draw scalar-last (x, y, z, w) and makes the matrix: the bytes the tests
    # and benchmarks were written against (Rotation.random(n, random_state=seed) exactly)
    return Rotation.from_quat(gaussian_quaternions(n, np.random.RandomState(seed))).as_matrix()


def random_euler(n: int, seed: int = 0) -> np.ndarray:
    """n uniform random poses as RELION (rot, tilt, psi) degrees."""
    return matrix_to_euler(random_rotations(n, seed))


def random_quaternions(n: int, seed: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """n uniform random unit quaternions (w >= 0) as a torch tensor."""
    q = gaussian_quaternions(n, torch.Generator().manual_seed(seed))
    return canonical_quaternion(q).to(device=device, dtype=dtype)


def px_to_angstrom(shift_px, pixel_size: float):
    """Pixels -> Angstrom (e.g. rlnOriginX -> rlnOriginXAngst)."""
    return shift_px * pixel_size


def angstrom_to_px(shift_A, pixel_size: float):
    """Angstrom -> pixels (e.g. rlnOriginXAngst -> the projector's shifts_px)."""
    return shift_A / pixel_size
