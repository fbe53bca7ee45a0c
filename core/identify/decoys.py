"""Decoy proteins: a fixed set of phantoms (fixed seed, never part of any library) rendered at a
library's sampling. A class's scores against them give the null distribution that makes the
confidence independent of how many entries a library has (``score.confidence_features``)."""
from __future__ import annotations

import numpy as np
import torch

from .library import Library
from .model import IdentityModel, embed_images

N_DECOYS, DECOY_SEED, DECOY_VIEWS = 16, 90_210_417, 48

_DECOYS: dict[tuple, Library] = {}


def decoy_library(box: int, pixel_size: float, resolution_A: float) -> Library:
    """The fixed decoy proteins at a library's sampling (cached per process)."""
    key = (box, round(pixel_size, 4), round(resolution_A, 3))
    if key not in _DECOYS:
        from ..simulate.proteins import phantom_library

        lib = Library(box, pixel_size, resolution_A, DECOY_VIEWS)
        for ph in phantom_library(N_DECOYS, seed=DECOY_SEED, box=box, pixel_size=pixel_size):
            lib.add_volume(ph.density, ph.name, source="decoy")
        _DECOYS[key] = lib
    return _DECOYS[key]


_DECOY_EMB: dict[tuple, torch.Tensor] = {}


def _decoy_embeddings(decoys: Library, model: IdentityModel) -> torch.Tensor:
    key = (id(decoys), model.fingerprint())
    if key not in _DECOY_EMB:
        _DECOY_EMB[key] = embed_images(model.encoder, torch.from_numpy(decoys.references.astype(np.float32)))
    return _DECOY_EMB[key]

