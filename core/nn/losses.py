"""Metric-learning losses behind a registry (later: VICReg, NT-Xent, Bingham/QCQP).

A loss is a callable ``loss(embeddings, labels) -> scalar tensor``; after each call it may leave
diagnostics in ``loss.last_stats`` (a dict of floats) which the training loop logs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    def deco(cls):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = cls
        return cls
    return deco


def build_loss(name: str, **kw) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kw)


def pairwise_distance(x: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """(N, D) -> (N, N). ``euclidean`` (on L2-normalised embeddings as in pytorch-metric-learning's
    default) or ``cosine`` (1 - cosine similarity)."""
    x = x.float()
    if distance == "cosine":
        xn = F.normalize(x, dim=-1)
        return 1.0 - xn @ xn.T
    if distance == "euclidean":
        sq = (x * x).sum(-1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
        # sqrt has an infinite gradient at 0 (the diagonal); keep it finite
        return torch.sqrt(d2 + 1e-12) * (d2 > 0)
    raise ValueError(f"distance must be 'euclidean' or 'cosine', not {distance!r}")


def mine_triplets(labels: torch.Tensor, dist: torch.Tensor, margin: float, mode: str = "all"):
    """Indices (a, p, n) of the mined triplets.

    ``all``: every triplet with label[a] == label[p], a != p, label[n] != label[a] that violates the
    margin, d(a,p) - d(a,n) + margin > 0 (the choice of Kuczbanski et al., "Learning image
    representation for limited cryo-EM data").
    ``batch_hard``: per anchor the farthest positive and the nearest negative (if it violates).
    """
    labels = labels.reshape(-1)
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    d = dist.detach()
    if mode == "all":
        viol = (d[:, :, None] - d[:, None, :] + margin) > 0          # [a, p, n]
        valid = pos[:, :, None] & neg[:, None, :] & viol
        a, p, q = valid.nonzero(as_tuple=True)
        return a, p, q
    if mode == "batch_hard":
        has = pos.any(1) & neg.any(1)
        dp = d.masked_fill(~pos, float("-inf"))
        dn = d.masked_fill(~neg, float("inf"))
        p = dp.argmax(1)
        q = dn.argmin(1)
        a = torch.arange(n, device=labels.device)
        keep = has & ((d[a, p] - d[a, q] + margin) > 0)
        return a[keep], p[keep], q[keep]
    raise ValueError(f"mining must be 'all' or 'batch_hard', not {mode!r}")


@register_loss("triplet")
class TripletMarginLoss(nn.Module):
    """Triplet margin loss over mined triplets, averaged over the triplets with a non-zero loss
    (zero, with a gradient path, when none violates the margin)."""

    def __init__(self, margin: float = 0.2, mining: str = "all", distance: str = "euclidean"):
        super().__init__()
        self.margin, self.mining, self.distance = float(margin), mining, distance
        self.last_stats: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d = pairwise_distance(embeddings, self.distance)
        a, p, n = mine_triplets(labels.to(embeddings.device), d, self.margin, self.mining)
        if a.numel() == 0:
            self.last_stats = {"triplets": 0.0}
            return embeddings.sum() * 0.0
        losses = F.relu(d[a, p] - d[a, n] + self.margin)
        nz = losses > 0
        self.last_stats = {"triplets": float(nz.sum())}
        return losses[nz].mean() if nz.any() else losses.sum() * 0.0
