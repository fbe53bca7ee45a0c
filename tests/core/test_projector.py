"""cryolens.core.projector: Fourier-slice projection and back-projection (RELION's own images are
compared in tests/relion/test_conventions_relion.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core import geometry as g
from cryolens.core.ctf import ctf_2d
from cryolens.core.projector import BackProjector, Projector


def blobs(box: int, seed: int = 0, n: int = 6, spread: float = 0.2) -> np.ndarray:
    """Smooth asymmetric test volume, zero near the box edge."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    vol = np.zeros((box,) * 3)
    for _ in range(n):
        p = rng.uniform(-spread, spread, 3) * box
        s = rng.uniform(0.05, 0.09) * box
        vol += rng.uniform(0.5, 1.5) * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return vol


def ncc(a, b) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(axis=(-2, -1), keepdims=True) if a.ndim > 1 else a - a.mean()
    b = b - b.mean(axis=(-2, -1), keepdims=True) if b.ndim > 1 else b - b.mean()
    ax = (-2, -1) if a.ndim == 3 else None
    return (a * b).sum(ax) / np.sqrt((a * a).sum(ax) * (b * b).sum(ax))


@pytest.mark.parametrize("box", [48, 49])
def test_gaussian_projects_to_rotated_position(box):
    # a 3-D Gaussian at p projects to a 2-D Gaussian at (A p)_xy - origin around index box//2
    c, s = box // 2, 2.5
    p = np.array([8.0, -5.0, 3.0])
    z, y, x = np.mgrid[:box, :box, :box] - c
    vol = np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    A = g.random_rotations(6, 3)
    origin = np.random.default_rng(1).uniform(-4, 4, (6, 2))
    im = Projector(vol, dtype=torch.float64).project(A, origin).numpy()
    yy, xx = np.mgrid[:box, :box] - c
    q = np.einsum("nij,j->ni", A, p)[:, :2] - origin
    ref = np.sqrt(2 * np.pi) * s * np.exp(-((xx - q[:, :1, None]) ** 2 + (yy - q[:, 1:, None]) ** 2) / (2 * s * s))
    assert np.abs(im - ref).max() < 0.02 * ref.max()  # trilinear + gridding error, ~1%
    # the transposed matrix (scipy's) puts the blob elsewhere
    wrong = Projector(vol, dtype=torch.float64).project(A.transpose(0, 2, 1), origin).numpy()
    assert ncc(wrong, ref).mean() < 0.5


@pytest.mark.parametrize("box", [32, 33])
def test_equivariance_rotated_volume(box):
    # V_R(r) = V(R^T r) projects at A exactly as V at A R (R a signed permutation: exact on the grid)
    vol = blobs(box, 1)
    vol[0], vol[:, 0], vol[:, :, 0] = 0, 0, 0  # even box: index 0 has no mirror image about box//2
    R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c = box // 2
    idx = np.stack(np.meshgrid(*[np.arange(box)] * 3, indexing="ij"), -1) - c  # (z, y, x)
    src = (idx[..., ::-1] @ R.astype(int))[..., ::-1] + c  # R^T (x, y, z), back to (z, y, x) indices
    rot = vol[tuple(np.mod(src, box).transpose(3, 0, 1, 2))]
    A = g.random_rotations(5, 2)
    a = Projector(rot, dtype=torch.float64).project(A).numpy()
    b = Projector(vol, dtype=torch.float64).project(A @ R).numpy()
    np.testing.assert_allclose(a, b, atol=1e-9 * np.abs(b).max())


@pytest.mark.parametrize("box", [32, 33])
def test_shift_equals_shifted_projection(box):
    proj = Projector(blobs(box, 2), dtype=torch.float64)
    A = g.random_rotations(4, 5)
    base = proj.project(A).numpy()
    origin = np.array([[3, -2], [-5, 0], [0, 7], [1, 1]], float)
    shifted = proj.project(A, origin).numpy()
    for k, (ox, oy) in enumerate(origin.astype(int)):  # RELION origin o moves the image by -o
        np.testing.assert_allclose(shifted[k], np.roll(base[k], (-oy, -ox), (0, 1)), atol=1e-12)
    frac = proj.project(A, origin + 0.5).numpy()
    ky = np.fft.fftfreq(box)[:, None]
    kx = np.fft.rfftfreq(box)[None, :]
    ref = np.fft.irfft2(np.fft.rfft2(shifted) * np.exp(2j * np.pi * 0.5 * (kx + ky)), s=(box, box))
    if box % 2 == 0:  # the Nyquist row/column of a half-pixel shift is ambiguous: compare inside
        assert ncc(frac, ref).min() > 0.9999
    else:
        np.testing.assert_allclose(frac, ref, atol=1e-10 * np.abs(ref).max())


def test_project_ft_ctf_and_dtypes():
    box = 40
    vol = blobs(box, 3)
    A = g.random_rotations(6, 9)
    origin = np.random.default_rng(0).uniform(-3, 3, (6, 2))
    ctf = ctf_2d(box, 2.0, np.linspace(8000, 20000, 6), np.linspace(8500, 21000, 6), 30.0, 300, 2.7, 0.1,
                 dtype=torch.float64)
    p64 = Projector(vol, dtype=torch.float64)
    im = p64.project(A, origin)
    torch.testing.assert_close(p64.project_ft(A, origin), torch.fft.rfft2(im))
    with_ctf = p64.project(A, origin, ctf)
    torch.testing.assert_close(with_ctf, torch.fft.irfft2(torch.fft.rfft2(im) * ctf, s=(box, box)))
    p32 = Projector(vol)  # float32 default
    im32 = p32.project(torch.tensor(A, dtype=torch.float32), origin, ctf.float())
    assert im32.dtype == torch.float32 and im32.shape == (6, box, box)
    assert (im32.double() - with_ctf).abs().max() < 1e-5 * with_ctf.abs().max()


def test_scale_is_line_integral():
    box = 32
    vol = blobs(box, 4, spread=0.05)
    im = Projector(vol, dtype=torch.float64, gridding=False).project(g.random_rotations(3, 1)).numpy()
    np.testing.assert_allclose(im.sum((1, 2)), vol.sum(), rtol=1e-9)  # DC term is exact


def test_rotation_gradient():
    proj = Projector(blobs(24, 5))
    q = g.random_quaternions(3, 1).requires_grad_(True)
    target = proj.project(g.quaternion_to_matrix(g.random_quaternions(3, 2))).detach()
    loss = (proj.project(g.quaternion_to_matrix(q)) - target).pow(2).mean()
    loss.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


@pytest.mark.parametrize("box,ctf_grid", [(24, None), (25, "padded"), (24, "box")])
def test_backprojector_reconstructs(box, ctf_grid):
    vol = blobs(box, 6)
    n = 400
    rng = np.random.default_rng(0)
    A = g.random_rotations(n, 11)
    origin = rng.uniform(-3, 3, (n, 2))
    bp = BackProjector(box)
    ctf = ctf_ins = None
    if ctf_grid:
        du, ang = rng.uniform(8000, 20000, n), rng.uniform(0, 180, n)
        ctf = ctf_2d(box, 3.0, du, du + 300, ang, 300, 2.7, 0.1)
        # exact weights: the same CTF evaluated on the padded slice grid
        ctf_ins = ctf if ctf_grid == "box" else ctf_2d(bp.padded_box, 3.0, du, du + 300, ang, 300, 2.7, 0.1)
    images = Projector(vol).project(torch.tensor(A, dtype=torch.float32), origin, ctf)
    for s in range(0, n, 200):  # accumulates over batches
        bp.insert(images[s:s + 200], A[s:s + 200], origin[s:s + 200], None if ctf is None else ctf_ins[s:s + 200])
    rec = bp.reconstruct().numpy()
    assert rec.shape == (box,) * 3
    assert ncc(rec.ravel(), vol.ravel()) > 0.99
    if ctf_grid != "box":  # a box-grid CTF is interpolated bilinearly: low frequencies come out ~15% low
        assert rec.sum() == pytest.approx(vol.sum(), rel=0.05)


def test_rejects_non_cubic_volume():
    with pytest.raises(ValueError):
        Projector(np.zeros((8, 8, 9)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    vol = blobs(64, 7)
    A = torch.tensor(g.random_rotations(64, 3), dtype=torch.float32)
    origin = torch.randn(64, 2)
    cpu = Projector(vol).project(A, origin)
    gpu = Projector(torch.tensor(vol), device="cuda").project(A.cuda(), origin.cuda())
    assert gpu.is_cuda
    assert (gpu.cpu() - cpu).abs().max() < 1e-4 * cpu.abs().max()
    bp = BackProjector(64, device="cuda")
    bp.insert(gpu, A.cuda(), origin.cuda())
    assert bp.reconstruct().is_cuda
