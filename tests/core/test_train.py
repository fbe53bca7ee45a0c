"""core.train: learning, determinism, checkpoint/resume, abort, best-model keeping, torchrun DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cryolens.core.nn import build_encoder, build_loss, class_average_augment
from cryolens.core.train import TrainConfig, Validation, evaluate, load_checkpoint, load_encoder, train
from ddp_worker import ShapeSource, shape_images

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[2]


def _tiny(seed=0, vit=False):
    torch.manual_seed(seed)
    if vit:
        return build_encoder("vit_tiny", in_size=32, patch=8, dim=32, depth=1, heads=2, drop=0.1, embed_dim=16)
    return build_encoder("resnet_tiny", in_size=32, widths=(8, 16), blocks=(1, 1), embed_dim=16)


def _val(n=20, seed=123):
    g = torch.Generator().manual_seed(seed)
    lab = torch.arange(4).repeat_interleave(n)
    return Validation(shape_images(lab, g=g), lab)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_learns_to_separate_shapes(tmp_path):
    torch.manual_seed(0)
    model = build_encoder("resnet_tiny", in_size=32, embed_dim=32)
    val = _val(20)
    before = evaluate(model, val)
    logs = []
    res = train(model, build_loss("triplet"), ShapeSource(per_class=8),
                TrainConfig(steps=60, lr=3e-3, lr_min=1e-5, warmup_steps=5, seed=0, device="cpu", val_every=30,
                            checkpoint_dir=str(tmp_path)), validation=val, on_log=logs.append)
    assert before["knn"] < 0.6                                     # untrained: near chance (0.25)
    assert res.step == 60 and not res.stopped
    assert res.last_metrics["knn"] > 0.9 and res.last_metrics["top1"] > 0.9, (before, res.last_metrics)
    assert res.best_metric >= res.last_metrics["top1"]
    assert logs[0]["loss"] > 0 and "triplets" in logs[0] and "val_top1" in logs[-1]
    assert logs[0]["lr"] < 3e-3                                    # warm-up
    # the best model is kept and rebuilds from its file alone
    best = load_encoder(res.best_checkpoint)
    assert evaluate(best, val)["top1"] == pytest.approx(res.best_metric)
    assert load_checkpoint(res.last_checkpoint)["step"] == 60


@pytest.mark.parametrize("vit", [False, True], ids=["resnet", "vit_dropout"])
def test_same_seed_same_weights(vit):
    aug = class_average_augment()
    cfg = TrainConfig(steps=4, lr=1e-3, seed=1, device="cpu")
    a, b, c = _tiny(0, vit), _tiny(0, vit), _tiny(0, vit)
    train(a, build_loss("triplet"), ShapeSource(per_class=3), cfg, augment=aug)
    train(b, build_loss("triplet"), ShapeSource(per_class=3), cfg, augment=aug)
    assert _same(a, b)
    train(c, build_loss("triplet"), ShapeSource(per_class=3), TrainConfig(steps=4, lr=1e-3, seed=2, device="cpu"),
          augment=aug)
    assert not _same(a, c)


@pytest.mark.parametrize("vit", [False, True], ids=["resnet", "vit_dropout"])
def test_abort_then_resume_equals_uninterrupted(tmp_path, vit):
    aug = class_average_augment()
    loss = build_loss("triplet", margin=0.3)
    full = _tiny(0, vit)
    cfg = TrainConfig(steps=8, lr=1e-3, warmup_steps=2, seed=4, device="cpu")
    train(full, loss, ShapeSource(per_class=3), cfg, augment=aug)

    calls = {"n": 0}

    def stop_after_3():
        calls["n"] += 1
        return calls["n"] > 3

    ck = TrainConfig(steps=8, lr=1e-3, warmup_steps=2, seed=4, device="cpu", checkpoint_dir=str(tmp_path))
    part = _tiny(0, vit)
    r1 = train(part, loss, ShapeSource(per_class=3), ck, augment=aug, should_stop=stop_after_3)
    assert r1.stopped and r1.step == 3 and load_checkpoint(tmp_path / "last.pt")["step"] == 3
    torch.manual_seed(999)                       # disturb the global RNG: resume must restore it
    resumed = _tiny(7, vit)                      # different init: the checkpoint overrides it
    r2 = train(resumed, loss, ShapeSource(per_class=3), ck, augment=aug, resume=True)
    assert r2.step == 8 and not r2.stopped
    assert _same(resumed, full)


def test_iterable_source_and_resume(tmp_path):
    src = ShapeSource(per_class=3)
    items = [src(i, 0, 1) for i in range(6)]
    full = _tiny(0)
    train(full, build_loss("triplet"), items, TrainConfig(steps=6, lr=1e-3, device="cpu"))
    ck = TrainConfig(steps=6, lr=1e-3, device="cpu", checkpoint_dir=str(tmp_path), checkpoint_every=2)
    part = _tiny(0)
    r = train(part, build_loss("triplet"), iter(items), ck, should_stop=iter([False] * 4 + [True]).__next__)
    assert r.stopped and r.step == 4
    resumed = _tiny(3)
    train(resumed, build_loss("triplet"), iter(items), ck, resume=tmp_path / "last.pt")
    assert _same(resumed, full)
    # an exhausted iterable ends training early
    short = train(_tiny(0), build_loss("triplet"), items[:2], TrainConfig(steps=6, device="cpu"))
    assert short.step == 2 and not short.stopped


def test_checkpoint_version_refused(tmp_path):
    m = _tiny(0)
    r = train(m, build_loss("triplet"), ShapeSource(per_class=2), TrainConfig(steps=1, device="cpu",
                                                                               checkpoint_dir=str(tmp_path)))
    ck = torch.load(r.last_checkpoint, weights_only=True)
    assert ck["model_config"]["name"] == "resnet_tiny" and ck["version"] == 1
    ck["version"] = 42
    torch.save(ck, tmp_path / "future.pt")
    from cryolens.core.errors import InputError
    with pytest.raises(InputError, match="future.pt.*version 42"):
        load_checkpoint(tmp_path / "future.pt")


@pytest.mark.slow
@pytest.mark.slow
def test_torchrun_ddp_two_ranks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests" / "helpers"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "helpers" / "ddp_worker.py"), str(tmp_path), "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    i0, i1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert i0["world"] == 2 and i0["step"] == 4 == i1["step"]
    assert i0["ckpt"].endswith("last.pt") and i1["ckpt"] == "None"      # only rank 0 wrote
    ck = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert ck["step"] == 4 and ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert all(torch.equal(ck["model"][k], w0[k]) for k in w0)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.pt"]   # no stray temporaries
    # the ranks saw different shards: training on rank 0's data alone gives other weights
    torch.manual_seed(0)
    solo = build_encoder("resnet_tiny", in_size=32, widths=(8, 16), blocks=(1, 1), embed_dim=16)
    train(solo, build_loss("triplet"), ShapeSource(per_class=4), TrainConfig(steps=4, lr=1e-3, seed=3, device="cpu"))
    assert not all(torch.equal(solo.state_dict()[k], w0[k]) for k in w0)
