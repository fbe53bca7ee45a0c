"""The one rule for pixel and voxel values entering cryolens: they must be finite.

A single NaN or inf spreads through every normalisation, Fourier transform, projection and score
without a word (one NaN voxel made a library of 100% NaN references), so every reader of
images and maps refuses them here, naming the file; ``info --stats`` counts them instead.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import InputError

_CHUNK = 1 << 22  # values per chunk: a memory-mapped stack is checked in bounded memory


def count_nonfinite(data) -> int:
    """How many values of ``data`` (an array, memory map or tensor) are NaN or infinite."""
    if hasattr(data, "detach"):  # a torch tensor
        import torch

        return int((~torch.isfinite(data)).sum())
    flat = np.asarray(data).reshape(-1)
    if flat.dtype.kind not in "fc":
        return 0  # integer modes cannot hold NaN
    return sum(int(flat.size - np.count_nonzero(np.isfinite(flat[i:i + _CHUNK])))
               for i in range(0, flat.size, _CHUNK))


def require_finite(data, what: str, path: str | os.PathLike | None = None) -> None:
    """InputError naming ``path`` when ``data`` holds NaN or infinite values (``what``: 'the map')."""
    bad = count_nonfinite(data)
    if bad:
        total = int(np.prod(getattr(data, "shape", ()) or (1,)))
        raise InputError(f"{what} holds {bad} NaN or infinite value(s) of {total}; cryolens needs finite "
                         "pixel values (fix or re-export the file)", path)
