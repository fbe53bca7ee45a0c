"""core.nn: encoders, losses, augmentations."""
from __future__ import annotations

import math

import pytest
import torch

from cryolens.core.nn import (PixelDropout, RandomHistogramShift, RandomLowpass, RandomResizedCrop, RandomRotation,
                              RandomTranslation, SoftCircularMask, build_encoder, build_loss, class_average_augment,
                              count_parameters, encoder_from_config, mine_triplets, pairwise_distance)
from cryolens.core.nn.losses import LOSSES

torch.set_num_threads(2)


def _small(name):
    if name == "resnet_tiny":
        return build_encoder(name, in_size=32, embed_dim=24)
    return build_encoder("vit_tiny", in_size=32, depth=2, dim=64, heads=4, embed_dim=24)


# ------------------------------------------------------------------------------------ encoders

@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny"])
@pytest.mark.parametrize("box", [32, 64, 65, 128])
def test_encoder_shape_and_norm(name, box):
    torch.manual_seed(0)
    m = _small(name).eval()
    y = m(torch.randn(3, box, box))
    assert y.shape == (3, 24)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert m(torch.randn(2, 1, box, box)).shape == (2, 24)


def test_encoder_rejects_multichannel():
    with pytest.raises(ValueError, match="single-channel"):
        _small("resnet_tiny")(torch.randn(2, 3, 32, 32))


@pytest.mark.slow
def test_vit_base_parameter_count():
    m = build_encoder("vit_base")
    n = count_parameters(m)
    assert 84e6 < n < 87e6, n
    assert m.config["dim"] == 768 and m.config["depth"] == 12 and m.config["in_size"] == 224
    assert 5e6 < count_parameters(build_encoder("vit_tiny")) < 6.5e6
    assert 21e6 < count_parameters(build_encoder("vit_small")) < 23e6


@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny"])
def test_gradients_flow_to_every_parameter(name):
    torch.manual_seed(0)
    m = _small(name)
    y = m(torch.randn(6, 40, 40))
    loss = build_loss("triplet", margin=0.5)(y, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert loss > 0
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny"])
def test_encoder_deterministic_and_rebuildable(name):
    x = torch.randn(4, 48, 48)
    torch.manual_seed(5)
    a = _small(name).eval()
    torch.manual_seed(5)
    b = _small(name).eval()
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    c = encoder_from_config(a.config).eval()
    c.load_state_dict(a.state_dict())
    assert c.config == a.config
    torch.testing.assert_close(c(x), a(x), atol=0, rtol=0)


def test_unknown_encoder():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vit_huge")


# -------------------------------------------------------------------------------------- losses

def _two_clusters(sep: float):
    # class 0 around (1, 0), class 1 around (cos sep, sin sep) on the unit circle
    e = torch.tensor([[1.0, 0.0], [math.cos(0.05), math.sin(0.05)],
                      [math.cos(sep), math.sin(sep)], [math.cos(sep + 0.05), math.sin(sep + 0.05)]])
    return e, torch.tensor([0, 0, 1, 1])


def test_triplet_zero_when_separated_positive_otherwise():
    loss = build_loss("triplet", margin=0.2)
    e, lab = _two_clusters(math.pi / 2)          # within-class distance 0.05, between ~1.4
    assert loss(e, lab).item() == 0.0 and loss.last_stats["triplets"] == 0
    e, lab = _two_clusters(0.1)                  # classes overlap within the margin
    v = loss(e.requires_grad_(), lab)
    assert v.item() > 0 and loss.last_stats["triplets"] > 0
    v.backward()
    assert e.grad.abs().sum() > 0


def test_triplet_all_mining_counts_hand_example():
    # 1-D points: labels A A B; d(a,p)=1 between the A's.
    x = torch.tensor([[0.0], [1.0], [1.5]])
    lab = torch.tensor([0, 0, 1])
    d = pairwise_distance(x, "euclidean")
    # candidates (a,p,n): (0,1,2): d_ap=1, d_an=1.5 ; (1,0,2): d_ap=1, d_an=0.5
    a, p, n = mine_triplets(lab, d, margin=0.1, mode="all")
    assert sorted(zip(a.tolist(), p.tolist(), n.tolist())) == [(1, 0, 2)]
    a, p, n = mine_triplets(lab, d, margin=0.6, mode="all")
    assert sorted(zip(a.tolist(), p.tolist(), n.tolist())) == [(0, 1, 2), (1, 0, 2)]
    # 2 classes x 2 points, all violating with a huge margin: 4 anchors x 1 positive x 2 negatives
    lab4 = torch.tensor([0, 0, 1, 1])
    d4 = pairwise_distance(torch.randn(4, 3), "euclidean")
    assert mine_triplets(lab4, d4, margin=100.0, mode="all")[0].numel() == 8
    # batch-hard: one triplet per anchor
    assert mine_triplets(lab4, d4, margin=100.0, mode="batch_hard")[0].numel() == 4
    # the loss averages over violating triplets: (1 - 0.5 + 0.1) over the one triplet
    tl = build_loss("triplet", margin=0.1, distance="euclidean")
    assert tl(x, lab).item() == pytest.approx(0.6, abs=1e-5)


def test_loss_registry():
    assert "triplet" in LOSSES
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("nope")


# ------------------------------------------------------------------------------------- augment

OPS = [RandomResizedCrop(), RandomRotation(180), RandomTranslation(0.1), RandomHistogramShift(), PixelDropout(0.2),
       RandomLowpass(), SoftCircularMask(0.8), RandomRotation(90, p=0.5), class_average_augment()]


@pytest.mark.parametrize("op", OPS, ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("shape", [(5, 32, 32), (4, 1, 33, 33)])
def test_augment_keeps_shape_dtype_and_is_seeded(op, shape):
    x = torch.randn(shape, dtype=torch.float32)
    y1 = op(x, torch.Generator().manual_seed(7))
    y2 = op(x, torch.Generator().manual_seed(7))
    y3 = op(x, torch.Generator().manual_seed(8))
    assert y1.shape == x.shape and y1.dtype == x.dtype and y1.device == x.device
    assert torch.isfinite(y1).all()
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    if not isinstance(op, SoftCircularMask):
        assert not torch.equal(y1, y3)


def test_augment_float64():
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    assert class_average_augment()(x, torch.Generator().manual_seed(0)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_augment_cuda_matches_cpu():
    x = torch.randn(4, 32, 32)
    a = class_average_augment()(x, torch.Generator().manual_seed(1))
    b = class_average_augment()(x.cuda(), torch.Generator().manual_seed(1))
    assert b.is_cuda
    torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)


def test_rotation_180_of_point_symmetric_and_asymmetric_patterns():
    box = 32
    c = box // 2
    img = torch.zeros(1, box, box)
    img[0, c - 3, c + 5] = 1.0            # one point off centre...
    sym = img + img.flip(-1).flip(-2).roll((1, 1), (-2, -1))   # ...plus its mirror through (c, c)
    assert sym[0, c + 3, c - 5] == 1.0
    op = RandomRotation(180)
    # the generator draws the angle; force exactly 180 degrees with degrees=180 and a tiny range
    from cryolens.core.nn.augment import _rotation, affine_resample
    R = _rotation(torch.tensor([math.pi], dtype=torch.float64)).float()
    out_sym = affine_resample(sym, R, torch.zeros(1, 2))
    torch.testing.assert_close(out_sym, sym, atol=1e-5, rtol=0)
    out = affine_resample(img, R, torch.zeros(1, 2))
    assert out[0, c + 3, c - 5] == pytest.approx(1.0, abs=1e-5) and out[0, c - 3, c + 5] == pytest.approx(0, abs=1e-5)
    # and the op itself with a rotation range keeps a centred disc (a rotation-invariant pattern)
    yy, xx = torch.meshgrid(torch.arange(box) - c, torch.arange(box) - c, indexing="ij")
    disc = ((yy ** 2 + xx ** 2) < 64).float()[None].repeat(3, 1, 1)
    out = op(disc, torch.Generator().manual_seed(0))
    assert (out - disc).abs().mean() < 0.03


def test_lowpass_removes_high_frequencies():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 64)
    y = RandomLowpass(cutoff=(0.3, 0.3))(x, torch.Generator().manual_seed(0))
    from cryolens.core.images import radial_frequency_grid
    f = radial_frequency_grid(64)
    pw = torch.fft.rfft2(y).abs() ** 2
    assert pw[:, f > 0.3 * 0.5].max() < 1e-8             # nothing beyond the cutoff
    assert pw[:, f < 0.25 * 0.5].mean() > 0.5 * (torch.fft.rfft2(x).abs() ** 2)[:, f < 0.25 * 0.5].mean()
    # the full range: cutoffs differ per image and every image keeps its mean
    z = RandomLowpass()(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(z.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5, rtol=0)


def test_dropout_fraction():
    x = torch.ones(16, 64, 64)
    y = PixelDropout(0.2)(x, torch.Generator().manual_seed(0))
    frac = (y == 0).float().mean().item()
    assert abs(frac - 0.2) < 0.01
    half = PixelDropout(0.2, p=0.5)(x, torch.Generator().manual_seed(0))
    untouched = (half == 1).flatten(1).all(1).sum().item()
    assert 2 <= untouched <= 14


def test_translation_and_mask():
    box = 40
    img = torch.zeros(200, box, box)
    img[:, box // 2, box // 2] = 1.0
    out = RandomTranslation(0.1)(img, torch.Generator().manual_seed(0))
    ys, xs = torch.meshgrid(torch.arange(box, dtype=torch.float32), torch.arange(box, dtype=torch.float32), indexing="ij")
    cy = (out * ys).sum((-2, -1)) / out.sum((-2, -1)) - box // 2
    assert cy.abs().max() <= 0.1 * box + 1e-4 and cy.abs().max() > 0.07 * box
    m = SoftCircularMask(0.5, width_px=3)(torch.ones(2, box, box))
    assert m[0, box // 2, box // 2] == 1 and m[0, 0, 0] == 0


def test_run_batched_batches_restores_the_mode_and_stops():
    from cryolens.core.errors import JobAborted
    from cryolens.core.nn import run_batched

    m = torch.nn.Linear(4, 2)
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    y = run_batched(m, x, batch_size=3)
    torch.testing.assert_close(y, m(x).detach())
    assert m.training and not y.requires_grad
    logit, emb = run_batched(m, x, lambda b: (m(b)[:, 0], m(b)), batch_size=4, prepare=lambda b: b * 2)
    assert logit.shape == (10,) and emb.shape == (10, 2)
    torch.testing.assert_close(emb, m(2 * x).detach())
    with pytest.raises(JobAborted):
        run_batched(m, x, should_stop=lambda: True)
    assert m.training
