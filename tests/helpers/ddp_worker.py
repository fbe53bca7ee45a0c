"""Synthetic shape classes for the training tests, and the worker that tests/core/test_train.py runs
under ``python -m torch.distributed.run --nproc_per_node 2 tests/helpers/ddp_worker.py OUT_DIR STEPS``.

Each rank trains on its own shard of the batch source; at the end every rank writes its final
weights to OUT_DIR/rank{r}.pt (for the test to compare) and rank 0 alone writes checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import sys

import torch

CLASSES = ("disc", "ring", "bar", "cross")


def shape_images(labels: torch.Tensor, box: int = 32, noise: float = 0.4, g: torch.Generator | None = None) -> torch.Tensor:
    """One noisy image per label: 0 disc, 1 ring, 2 bar (random angle), 3 cross (random angle)."""
    n = labels.shape[0]
    ys, xs = torch.meshgrid(torch.arange(box, dtype=torch.float32) - box // 2,
                            torch.arange(box, dtype=torch.float32) - box // 2, indexing="ij")
    u = torch.rand(n, 4, generator=g)
    cx, cy = (u[:, 0] - 0.5) * 4, (u[:, 1] - 0.5) * 4
    r = 0.2 * box + u[:, 2] * 0.1 * box
    ang = u[:, 3] * math.pi
    X, Y = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    R = torch.sqrt(X ** 2 + Y ** 2)
    c, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
    a, b = X * c + Y * s, -X * s + Y * c
    rr = r[:, None, None]
    disc = (R < rr).float()
    ring = ((R < rr) & (R > rr - 3)).float()
    bar = ((a.abs() < rr) & (b.abs() < 2.5)).float()
    cross = (((a.abs() < rr) & (b.abs() < 1.5)) | ((b.abs() < rr) & (a.abs() < 1.5))).float()
    img = torch.stack([disc, ring, bar, cross], 1)[torch.arange(n), labels.long()]
    return img + noise * torch.randn(img.shape, generator=g)


class ShapeSource:
    """Batch source: a pure function of (step, rank, world)."""

    def __init__(self, per_class: int = 12, box: int = 32, seed: int = 0):
        self.per_class, self.box, self.seed = per_class, box, seed

    def __call__(self, step: int, rank: int, world: int):
        g = torch.Generator().manual_seed(self.seed * 100_003 + step * 31 + rank * 7 + 1)
        labels = torch.arange(len(CLASSES)).repeat_interleave(self.per_class)
        return shape_images(labels, self.box, g=g), labels


def main(out_dir: str, steps: int) -> None:
    from cryolens.core.nn import build_encoder, build_loss
    from cryolens.core.train import TrainConfig, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_encoder("resnet_tiny", in_size=32, widths=(8, 16), blocks=(1, 1), embed_dim=16)
    cfg = TrainConfig(steps=steps, lr=1e-3, seed=3, device="cpu", checkpoint_dir=os.path.join(out_dir, "ckpt"),
                      checkpoint_every=2, log_every=1)
    logs = []
    res = train(model, build_loss("triplet"), ShapeSource(per_class=4), cfg, on_log=logs.append)
    rank = int(os.environ["RANK"])
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"step": res.step, "world": logs[-1]["world"], "ckpt": str(res.last_checkpoint)}, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
