"""Image encoders in plain torch (no torchvision/timm): a small ResNet-style CNN and a ViT.

Every encoder takes single-channel images of ANY box, (B, H, W) or (B, 1, H, W); they are
resampled to the model's ``in_size`` with ``fourier_resize`` and, by default, standardised per
image, then mapped to an L2-normalised embedding of ``embed_dim``.

Each encoder carries ``.config`` (a plain dict) so that it can be rebuilt from a checkpoint:
``build_encoder(**model.config)`` or ``encoder_from_config(model.config)``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..images import fourier_resize, normalize_in_mask

# --------------------------------------------------------------------------------------------- base


class EmbeddingHead(nn.Module):
    """Linear (or a 2-layer MLP when ``hidden``) projection followed by L2 normalisation."""

    def __init__(self, in_dim: int, embed_dim: int = 128, hidden: int | None = None):
        super().__init__()
        if hidden:
            self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        else:
            self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x).float(), dim=-1)


class Encoder(nn.Module):
    """Base: input preparation + ``features`` (subclass) + ``head``."""

    config: dict[str, Any]
    in_size: int
    standardize: bool

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, 1, H, W), any square box -> (B, 1, in_size, in_size) float."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"expected (B, H, W) or (B, 1, H, W) single-channel images, got {tuple(images.shape)}")
        x = images.float()
        if x.shape[-1] != self.in_size or x.shape[-2] != self.in_size:
            x = fourier_resize(x, self.in_size)
        if self.standardize:
            x = normalize_in_mask(x, None, eps=1e-6, ddof=1)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.prepare(images)))

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


# ------------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm (batch-independent: a library embedding never depends on
    what else was in its batch, and DDP ranks need no BN synchronisation)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.GroupNorm(_groups(cout), cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(_groups(cout), cout))

    def forward(self, x):
        y = F.relu(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNetEncoder(Encoder):
    def __init__(self, in_size: int = 64, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1),
                 embed_dim: int = 128, head_hidden: int | None = None, standardize: bool = True,
                 name: str = "resnet"):
        super().__init__()
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if len(widths) != len(blocks):
            raise ValueError("widths and blocks must have the same length")
        self.in_size, self.standardize = int(in_size), bool(standardize)
        self.config = dict(name=name, in_size=self.in_size, widths=widths, blocks=blocks,
                           embed_dim=int(embed_dim), head_hidden=head_hidden, standardize=self.standardize)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.GroupNorm(_groups(widths[0]), widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            for j in range(b):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin
        self.head = EmbeddingHead(cin, embed_dim, head_hidden)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x):
        return self.body(self.stem(x)).mean(dim=(-2, -1))


# ---------------------------------------------------------------------------------------------- ViT


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.attn_drop = heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        self.n1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.n2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class ViTEncoder(Encoder):
    """ViT (Dosovitskiy et al.) with a single-channel patch embedding, class token, learned
    position embeddings, pre-norm blocks; the class token feeds the embedding head."""

    def __init__(self, in_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
                 mlp_ratio: float = 4.0, drop: float = 0.0, embed_dim: int = 128, head_hidden: int | None = None,
                 standardize: bool = True, name: str = "vit"):
        super().__init__()
        if in_size % patch:
            raise ValueError(f"in_size {in_size} must be a multiple of the patch size {patch}")
        self.in_size, self.standardize = int(in_size), bool(standardize)
        self.config = dict(name=name, in_size=self.in_size, patch=int(patch), dim=int(dim), depth=int(depth),
                           heads=int(heads), mlp_ratio=float(mlp_ratio), drop=float(drop), embed_dim=int(embed_dim),
                           head_hidden=head_hidden, standardize=self.standardize)
        n = (in_size // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, drop) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.feature_dim = dim
        self.head = EmbeddingHead(dim, embed_dim, head_hidden)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def features(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        return self.norm(self.blocks(t))[:, 0]


# ------------------------------------------------------------------------------------------ factory

PRESETS: dict[str, tuple[Callable[..., Encoder], dict[str, Any]]] = {
    "resnet": (ResNetEncoder, dict(in_size=128, widths=(32, 64, 128, 256), blocks=(2, 2, 2, 2))),
    "resnet_small": (ResNetEncoder, dict(in_size=64, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1))),
    "resnet_tiny": (ResNetEncoder, dict(in_size=32, widths=(16, 32, 64), blocks=(1, 1, 1))),
    "vit": (ViTEncoder, dict()),
    "vit_tiny": (ViTEncoder, dict(dim=192, depth=12, heads=3)),
    "vit_small": (ViTEncoder, dict(dim=384, depth=12, heads=6)),
    "vit_base": (ViTEncoder, dict(dim=768, depth=12, heads=12)),  # ~85M parameters at 224 px
}


def build_encoder(name: str, **cfg) -> Encoder:
    """Build a preset (``resnet``, ``resnet_small``, ``resnet_tiny``, ``vit_tiny``, ``vit_small``,
    ``vit_base``, ``vit``) with any field overridden by ``cfg`` (e.g. ``in_size=64, embed_dim=64``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(sorted(PRESETS))}")
    cls, defaults = PRESETS[name]
    kw = {**defaults, **cfg, "name": name}
    return cls(**kw)


def encoder_from_config(config: dict[str, Any]) -> Encoder:
    """Rebuild an (untrained) encoder from the ``.config`` dict stored with a checkpoint."""
    cfg = dict(config)
    return build_encoder(cfg.pop("name"), **cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
