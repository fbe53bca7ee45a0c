"""core.images: lazy stack access and batching (correctness, bounded memory, abort) and image ops."""
from __future__ import annotations

import math
import os
import pickle
import threading

import mrcfile
import numpy as np
import pytest
import torch

from cryolens.core import images, mrc
from cryolens.core.errors import InputError, JobAborted


# -- ImageSource -----------------------------------------------------------------------------
def _project(tmp_path, sizes=(7, 3, 11), box=12):
    """Stacks under a RELION-like project dir; returns (relative names, list of arrays)."""
    rng = np.random.default_rng(1)
    names, arrays = [], []
    for k, n in enumerate(sizes):
        a = rng.standard_normal((n, box, box)).astype(np.float32)
        name = f"Extract/job007/mic{k}.mrcs"
        mrc.write_stack(tmp_path / name, a, 1.5)
        names.append(name)
        arrays.append(a)
    return names, arrays


def _all_rows(arrays, seed=2):
    sid = np.concatenate([np.full(len(a), k) for k, a in enumerate(arrays)])
    idx = np.concatenate([np.arange(len(a)) for a in arrays])
    perm = np.random.default_rng(seed).permutation(len(sid))
    return sid[perm], idx[perm]


def test_read_shuffled_rows_matches_mrcfile(tmp_path):
    names, arrays = _project(tmp_path)
    sid, idx = _all_rows(arrays)
    src = images.ImageSource(names, sid, idx, root=tmp_path).validate()
    assert len(src) == 21 and src.box == 12
    rows = np.r_[np.random.default_rng(3).permutation(len(src)), 4, 4, 0]  # repeats are fine
    got = src.read(rows)
    assert got.dtype == np.float32 and got.shape == (len(rows), 12, 12)
    for j, r in enumerate(rows):
        expected = mrcfile.read(tmp_path / names[sid[r]])[idx[r]]
        np.testing.assert_array_equal(got[j], expected)
    assert src.read([]).shape == (0, 12, 12)
    with pytest.raises(IndexError):
        src.read([len(src)])


def test_iter_batches_covers_every_row_once(tmp_path):
    names, arrays = _project(tmp_path)
    src = images.ImageSource(names, *_all_rows(arrays), root=tmp_path)
    order = np.random.default_rng(4).permutation(len(src))
    seen = []
    for prefetch in (True, False):
        calls, got_rows, got = [], [], []
        for rows, batch in src.iter_batches(batch_size=4, rows=order, progress=lambda d, t: calls.append((d, t)),
                                            prefetch=prefetch):
            assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32 and batch.shape[1:] == (12, 12)
            assert len(rows) == len(batch) <= 4
            got_rows.append(rows)
            got.append(batch.numpy().copy())
        assert [len(r) for r in got_rows] == [4, 4, 4, 4, 4, 1]
        np.testing.assert_array_equal(np.concatenate(got_rows), order)
        np.testing.assert_array_equal(np.concatenate(got), src.read(order))
        assert calls == [(4, 21), (8, 21), (12, 21), (16, 21), (20, 21), (21, 21)]
        seen.append(np.concatenate(got))
    np.testing.assert_array_equal(*seen)
    # default rows: all, in order; dtype conversion on the way out
    rows, batch = next(src.iter_batches(batch_size=100, dtype=torch.float64))
    np.testing.assert_array_equal(rows, np.arange(21))
    assert batch.dtype == torch.float64


def test_should_stop_aborts_between_batches(tmp_path):
    names, arrays = _project(tmp_path)
    src = images.ImageSource(names, *_all_rows(arrays), root=tmp_path)
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > 2

    n = 0
    with pytest.raises(JobAborted, match="after 8 of 21"):
        for _, batch in src.iter_batches(batch_size=4, should_stop=stop):
            n += 1
    assert n == 2


def test_leaving_the_loop_early_ends_the_prefetch_thread(tmp_path):
    names, arrays = _project(tmp_path)
    src = images.ImageSource(names, *_all_rows(arrays), root=tmp_path)
    gen = src.iter_batches(batch_size=2)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("cryolens-prefetch")]


def test_descriptor_lru_is_bounded(tmp_path):
    names, arrays = _project(tmp_path)
    sid, idx = _all_rows(arrays)
    src = images.ImageSource(names, sid, idx, root=tmp_path, max_open=2)
    ref = images.ImageSource(names, sid, idx, root=tmp_path)
    np.testing.assert_array_equal(src.read(np.arange(len(src))), ref.read(np.arange(len(src))))
    assert len(src._fds) == 2
    src.close()
    assert len(src._fds) == 0
    np.testing.assert_array_equal(src.read([5]), ref.read([5]))  # reopens after close


def test_pickles_for_dataloader_workers(tmp_path):
    names, arrays = _project(tmp_path)
    src = images.ImageSource(names, *_all_rows(arrays), root=tmp_path)
    expected = src.read([3, 1])  # opens descriptors, which must not travel
    clone = pickle.loads(pickle.dumps(src))
    assert clone._fds == {} and len(src._fds) > 0
    np.testing.assert_array_equal(clone.read([3, 1]), expected)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16, ">f4"])
def test_other_dtypes_read_as_float32(tmp_path, dtype):
    vals = np.random.default_rng(5).integers(0, 100, (4, 8, 8))
    with mrcfile.new(tmp_path / "s.mrcs") as m:
        m.set_data(vals.astype(dtype))
    src = images.ImageSource(["s.mrcs"], np.zeros(4), np.array([3, 0, 1, 2]), root=tmp_path)
    np.testing.assert_array_equal(src.read([0, 1, 2, 3]), vals[[3, 0, 1, 2]].astype(np.float32))


def test_validate_reports_the_file_and_the_problem(tmp_path):
    names, arrays = _project(tmp_path, sizes=(100, 5))
    with pytest.raises(InputError, match=r"mic0.mrcs: rows refer to image 120 .* stack has 100 images"):
        images.ImageSource(names, [0, 0, 1], [3, 119, 2], root=tmp_path).validate()
    with pytest.raises(InputError, match="missing.mrcs: file not found"):
        images.ImageSource(names + ["missing.mrcs"], [0, 2], [0, 0], root=tmp_path).validate()
    mrc.write_stack(tmp_path / "big.mrcs", np.zeros((2, 16, 16), np.float32), 1.0)
    with pytest.raises(InputError, match=r"big.mrcs: box 16 px differs from 12 px in .*mic0.mrcs"):
        images.ImageSource(names + ["big.mrcs"], [0, 2], [0, 0], root=tmp_path).validate()
    mrc.write_stack(tmp_path / "rect.mrcs", np.zeros((2, 16, 20), np.float32), 1.0)
    with pytest.raises(InputError, match="rect.mrcs: images are 16 x 20"):
        images.ImageSource(["rect.mrcs"], [0], [1], root=tmp_path).validate()
    with pytest.raises(InputError, match="negative image index"):
        images.ImageSource(names, [0], [-1], root=tmp_path).validate()
    # only stacks that rows use are opened; absolute paths ignore root
    src = images.ImageSource([tmp_path / names[1], "nowhere.mrcs"], [0], [4], root="/elsewhere").validate()
    assert src.box == 12


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc to read the RSS")
def test_a_million_rows_stream_in_bounded_memory(tmp_path):
    """1,000,000 rows over one 1000-image stack: 1 GB of images streamed, RSS must stay flat."""
    stack = np.random.default_rng(6).standard_normal((1000, 16, 16)).astype(np.float32)
    mrc.write_stack(tmp_path / "s.mrcs", stack, 1.0)
    n = 1_000_000
    src = images.ImageSource(["s.mrcs"], np.zeros(n, np.int64), np.arange(n) % 1000, root=tmp_path)
    src.validate()
    rss0, peak, count, total = _rss_bytes(), 0, 0, 0.0
    for rows, batch in src.iter_batches(batch_size=4096):
        count += len(rows)
        total += float(batch[:, 8, 8].sum(dtype=torch.float64))
        peak = max(peak, _rss_bytes() - rss0)
    assert count == n
    assert total == pytest.approx(1000 * float(stack[:, 8, 8].astype(np.float64).sum()), rel=1e-9, abs=1e-6)
    assert peak < 64 * 2**20, f"RSS grew by {peak / 2**20:.0f} MiB while streaming (all images: 977 MiB)"


# -- image operations ------------------------------------------------------------------------
def test_grids():
    r = images.radial_frequency_grid(8)
    assert r.shape == (8, 5) and r[0, 0] == 0 and r[0, 4] == pytest.approx(0.5) and r[4, 0] == pytest.approx(0.5)
    assert images.radial_frequency_grid(9, rfft=False, pixel_size=2.0).shape == (9, 9)
    assert images.radial_frequency_grid(8, pixel_size=2.0)[0, 4] == pytest.approx(0.25)
    rg = images.radius_grid(7)
    assert rg[3, 3] == 0 and rg[3, 6] == 3 and rg[0, 0] == pytest.approx(math.sqrt(18))
    assert images.default_background_radius(64) == 24 and images.default_background_radius(100) == 38


def _particles(box=64, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(box, dtype=torch.float64) - box // 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    blob = 40.0 * torch.exp(-r2 / (2 * 8.0 ** 2))  # the particle: large, inside the background circle
    return 5.0 + 3.0 * torch.randn(n, box, box, generator=g, dtype=torch.float64) + blob, r2


def test_normalize_background_uses_only_the_background():
    x, r2 = _particles()
    y = images.normalize_background(x)  # radius 24 for a 64 px box
    bg = r2 > 24 ** 2
    assert torch.allclose(y[:, bg].mean(-1), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y[:, bg].std(-1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert float(y[:, ~bg].mean()) > 1.0  # the particle is still there, above the background
    # a smaller background circle uses more pixels: different numbers
    assert not torch.allclose(images.normalize_background(x, radius_px=10), y)
    # float32 with a large offset (raw counts): no cancellation in the variance
    z = images.normalize_background((x + 1e4).float())
    assert torch.allclose(z[:, bg].std(-1, correction=0), torch.ones(3), atol=1e-4)


def test_normalize_background_ramp():
    x, r2 = _particles(seed=1)
    c = torch.arange(64, dtype=torch.float64) - 32
    plane = 0.3 * c[None, :] - 0.2 * c[:, None]
    y0 = images.normalize_background(x, ramp=True)
    y1 = images.normalize_background(x + plane, ramp=True)
    assert torch.allclose(y0, y1, atol=1e-8)  # the ramp is removed exactly
    bg = r2 > 24 ** 2
    assert torch.allclose(y1[:, bg].std(-1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert not torch.allclose(images.normalize_background(x + plane), y1, atol=1e-3)


def test_soft_mask():
    m = images.soft_circular_mask(64, 20, 6)
    r = images.radius_grid(64)
    assert torch.all(m[r <= 20] == 1) and torch.all(m[r >= 26] == 0)
    ring = (r > 20) & (r < 26)
    assert torch.all((m[ring] > 0) & (m[ring] < 1))
    assert float(images.soft_circular_mask(65, 20, 6)[32, 32 + 23]) == pytest.approx(0.5)
    x = torch.full((2, 64, 64), 7.0)
    assert torch.allclose(images.apply_soft_mask(x, 20, 6, fill="background"), x)
    z = images.apply_soft_mask(x, 20, 6)
    assert torch.all(z[:, r >= 26] == 0) and torch.all(z[:, r <= 20] == 7)


def _spectrum_index(n):
    return torch.fft.fftfreq(n) * n  # integer frequency of each torch.fft index


@pytest.mark.parametrize("n,m", [(32, 48), (33, 48), (32, 47), (33, 47), (16, 17)])
def test_fourier_crop_inverts_pad(n, m):
    x = torch.randn(2, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n + m))
    up = images.fourier_pad(x, m)
    assert up.shape == (2, m, m)
    assert torch.allclose(images.fourier_crop(up, n), x, atol=1e-10)


@pytest.mark.parametrize("n,m", [(64, 32), (64, 33), (65, 32), (65, 33)])
def test_crop_then_pad_is_a_lowpass(n, m):
    x = torch.randn(3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n * m))
    y = images.fourier_pad(images.fourier_crop(x, m), n)
    fx, fy = torch.fft.fft2(x), torch.fft.fft2(y)
    k = _spectrum_index(n).abs()
    kmax = torch.maximum(k[:, None], k[None, :])
    kept = kmax < m / 2  # strictly inside the new band: untouched
    gone = kmax > m / 2  # beyond it: removed
    assert torch.allclose(fy[:, kept], fx[:, kept], atol=1e-9)
    assert fy[:, gone].abs().max() < 1e-9
    assert torch.allclose(images.fourier_pad(images.fourier_crop(y, m), n), y, atol=1e-10)  # idempotent


@pytest.mark.parametrize("n,m", [(64, 32), (64, 33), (65, 32), (65, 33), (40, 64), (41, 64), (40, 63)])
def test_resize_keeps_the_centre_and_values(n, m):
    c = torch.arange(n, dtype=torch.float64) - n // 2
    freq = 3  # a band-limited cosine about the centre, resampled exactly at any size > 6
    x = torch.cos(2 * math.pi * freq * c / n)[None, :] * torch.cos(2 * math.pi * 2 * c / n)[:, None] + 0.5
    y = images.fourier_resize(x[None], m)[0]
    cm = torch.arange(m, dtype=torch.float64) - m // 2
    expected = torch.cos(2 * math.pi * freq * cm / m)[None, :] * torch.cos(2 * math.pi * 2 * cm / m)[:, None] + 0.5
    assert torch.allclose(y, expected, atol=1e-10)
    assert float(y[m // 2, m // 2]) == pytest.approx(1.5)  # the centre pixel stays the centre


def test_lowpass_removes_beyond_cutoff():
    x = torch.randn(2, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    pix, res = 2.0, 10.0
    y = images.lowpass(x, pix, res)
    f = images.radial_frequency_grid(64, pixel_size=pix, dtype=torch.float64)
    fx, fy = torch.fft.rfft2(x), torch.fft.rfft2(y)
    assert fy[:, f >= 1 / res].abs().max() < 1e-10
    passband = f <= 1 / res - 2 / (64 * pix)
    assert torch.allclose(fy[:, passband], fx[:, passband], atol=1e-10)
    edge = (f > 1 / res - 2 / (64 * pix)) & (f < 1 / res)
    ratio = (fy[:, edge].abs() / fx[:, edge].abs())
    assert torch.all((ratio > 0) & (ratio < 1))
    y2 = images.lowpass(x, pix, res, width_A=5.0)  # passes everything coarser than 15 A
    keep = f <= 1 / 15
    assert torch.allclose(torch.fft.rfft2(y2)[:, keep], fx[:, keep], atol=1e-10)


def test_phase_flip():
    x = torch.randn(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    pos = torch.rand(3, 32, 17, dtype=torch.float64) + 0.1
    assert torch.allclose(images.phase_flip(x, pos), x, atol=1e-12)
    assert torch.allclose(images.phase_flip(x, -pos), -x, atol=1e-12)
    ctf = torch.cos(40 * images.radial_frequency_grid(32, dtype=torch.float64)).expand(3, 32, 17)
    y = images.phase_flip(x, ctf)
    expected = torch.fft.rfft2(x) * torch.where(ctf < 0, -1.0, 1.0)
    assert torch.allclose(torch.fft.rfft2(y), expected, atol=1e-10)
    with pytest.raises(ValueError):
        images.phase_flip(x, pos[..., :16])


def test_ops_are_differentiable():
    x = torch.randn(2, 32, 32, requires_grad=True)
    out = (images.normalize_background(x, ramp=True).sum() + images.fourier_crop(x, 20).pow(2).sum()
           + images.lowpass(x, 1.0, 4.0).sum() + images.apply_soft_mask(x, 10, 3, fill="background").sum())
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_normalize_in_mask_gives_zero_mean_unit_variance_inside_and_zero_outside():
    from cryolens.core.images import normalize_in_mask, soft_circular_mask

    x = torch.randn(3, 32, 32) * 5 + 7
    m = soft_circular_mask(32, 12, 3)
    y = normalize_in_mask(x, m)
    inside = m > 0.5
    z = normalize_in_mask(x, (m > 0.5).float())  # a hard mask: exactly standardised inside
    assert torch.allclose(z[:, inside].mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z[:, inside].std(1, unbiased=False), torch.ones(3), atol=1e-5)
    assert (y[:, m == 0] == 0).all()
    per_image = normalize_in_mask(x, m.expand(3, -1, -1))  # one mask per image
    assert torch.allclose(per_image, y)


def test_normalize_in_mask_variants_of_its_callers():
    from cryolens.core.images import normalize_in_mask, soft_circular_mask

    x = torch.randn(3, 32, 32) * 5 + 7
    m = soft_circular_mask(32, 12, 3)
    inside = m > 0.5
    # unit norm (correlate): a dot product is an NCC, so an image scores 1 with itself
    u = normalize_in_mask(x * m, m, scale="norm")
    assert torch.allclose(u.flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose((u / m.clamp_min(1e-12))[:, inside].mean(1), torch.zeros(3), atol=1e-5)
    # statistics from the mask, nothing zeroed (the ranker)
    k = normalize_in_mask(x, inside.float(), zero_outside=False)
    assert torch.allclose(k[:, inside].std(1, unbiased=False), torch.ones(3), atol=1e-5)
    assert (k[:, ~inside] != 0).all()
    # the sample sd over the whole image (the encoders) and inside one mask (synthetic classes)
    w = normalize_in_mask(x, None, ddof=1)
    assert torch.allclose(w.flatten(1).std(1), torch.ones(3), atol=1e-5)
    c = normalize_in_mask(x[0], m, ddof=1)
    assert torch.equal(c, (x[0] - x[0][inside].mean()) / x[0][inside].std() * m)
