"""The files cryolens writes for itself, in one versioned, atomic format.

Two containers, one convention:

- ``.npz`` (``save_npz``/``load_npz``; read without pickles): a JSON ``header`` (format name,
  version, the file's scalars) beside named arrays. Text (tables, JSON) is stored as UTF-8 bytes
  (``text_array``), a quarter of numpy's fixed-width unicode for large tables.
- ``.pt`` (``save_torch``/``load_torch``): a dict of plain tensors and containers whose first
  keys are ``format`` and ``version``, read with ``torch.load(weights_only=True)`` so that no
  pickled code runs.

Every format is declared once below with the names earlier versions wrote (read as aliases, so
old files and the shipped weights load unchanged). Both writers go through ``core.atomic``: a
reader never sees a half-written file. Every refusal is an ``InputError`` naming the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .errors import InputError


@dataclass(frozen=True)
class Format:
    """A file format: the ``name`` and ``version`` written into every file, what the file is (for
    messages), what to do with a file of another version, and the names older cryolens wrote."""

    name: str
    version: int
    what: str
    remedy: str
    aliases: tuple[str, ...] = ()

    def check(self, header: Any, path: str | os.PathLike) -> None:
        """Refuse a file that is not this format, or another version of it."""
        found = header.get("format") if isinstance(header, dict) else None
        if found != self.name and found not in self.aliases:
            raise InputError(f"not a cryolens {self.what} (format {found!r})", path)
        v = header.get("version")
        if v != self.version:
            raise InputError(f"{self.what} format version {v!r} is not supported (the file is {found} v{v}; "
                             f"this cryolens reads {self.name} v{self.version}): {self.remedy}", path)


LIBRARY = Format("cryolens.library", 2, "library", "rebuild it with this cryolens (cryolens library build)",
                 aliases=("cryolens-library",))
INDEX = Format("cryolens.index", 1, "embedding index", "rebuild the index or use a matching cryolens",
               aliases=("cryolens.embedding_index",))
RANK_MODEL = Format("cryolens.rank", 1, "rank model", "train it again or use a matching cryolens")
CHECKPOINT = Format("cryolens.checkpoint", 1, "checkpoint", "train it again or use a matching cryolens")


# -------------------------------------------------------------------------------------------- text


def text_array(text: str) -> np.ndarray:
    """A string as a uint8 array (UTF-8) for an ``.npz``."""
    return np.frombuffer(text.encode(), np.uint8)


def array_text(a: np.ndarray) -> str:
    """The string of ``text_array`` (or of a numpy unicode array, which older files hold)."""
    return bytes(a).decode() if a.dtype == np.uint8 else str(a)


# --------------------------------------------------------------------------------------------- npz


def save_npz(path: str | os.PathLike, fmt: Format, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` and a header ``{format, version, **header}`` atomically to ``path``."""
    path = Path(path)
    head = {"format": fmt.name, "version": fmt.version, **header}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: numpy would append .npz to a name
        np.savez(fh, header=text_array(json.dumps(head)), **arrays)
    return path


def load_npz(path: str | os.PathLike, fmt: Format) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a ``save_npz`` file, format and version checked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{fmt.what} file not found", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(array_text(arrays.pop("header")))
    except Exception as err:  # not a zip, damaged, no header, not JSON
        raise InputError(f"not a cryolens {fmt.what} ({type(err).__name__}: {err})", path) from None
    fmt.check(header, path)
    return header, arrays


# ---------------------------------------------------------------------------------------------- pt


def save_torch(path: str | os.PathLike, fmt: Format, payload: dict[str, Any]) -> Path:
    """``torch.save`` of ``{format, version, **payload}``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": fmt.name, "version": fmt.version, **payload}, tmp)
    return path


def load_torch(path: str | os.PathLike, fmt: Format, map_location="cpu") -> dict[str, Any]:
    """A ``save_torch`` file (weights_only: no pickled code runs), format and version checked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{fmt.what} file not found", path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise InputError(f"not a cryolens {fmt.what} ({type(err).__name__}: {err})", path) from None
    fmt.check(ck, path)
    return ck
