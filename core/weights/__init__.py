"""Default model weights shipped with cryolens (plain tensors, loaded with weights_only=True).

Each model has a ``.pt`` file and a model card under ``docs/models/`` with the exact command,
data, steps, hardware and benchmark figures that produced it.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent


def default_weights(name: str) -> Path:
    """Path of the shipped weights ``<name>.pt`` (e.g. ``identify``, ``rank``)."""
    return WEIGHTS_DIR / f"{name}.pt"
