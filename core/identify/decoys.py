"""Decoy proteins: a fixed set of phantoms (fixed seed, never part of any library) rendered at a
library's sampling. A class's scores against them give the null distribution that makes the
confidence independent of how many entries a library has (``score.confidence_features``).

The decoys are rendered once per library and stored in it with their embeddings
(``prepare_library``), so scoring never runs the simulator; this module is the one place of the
identify capability that imports it.
"""
from __future__ import annotations

import os
from typing import Callable

from .library import Decoys, Library
from .model import IdentityModel, embed_decoys, embed_library

N_DECOYS, DECOY_SEED, DECOY_VIEWS = 16, 90_210_417, 48


def build_decoys(library: Library, should_stop: Callable[[], bool] | None = None) -> Decoys:
    """The fixed decoy proteins rendered like ``library``'s references (its box, pixel size and
    resolution; ``DECOY_VIEWS`` views each, on the CPU); ``should_stop`` is asked per protein."""
    from ..errors import JobAborted
    from ..simulate.proteins import iter_phantoms

    lib = Library(library.box, library.pixel_size, library.resolution_A, DECOY_VIEWS)
    for ph in iter_phantoms(N_DECOYS, seed=DECOY_SEED, box=library.box, pixel_size=library.pixel_size):
        if should_stop is not None and should_stop():
            raise JobAborted()
        lib.add_volume(ph.density, ph.name, source="decoy")
    return Decoys(lib.references, DECOY_VIEWS, lib.entries["name"].astype(str).tolist())


def prepare_library(library: Library, model: IdentityModel | None, path: str | os.PathLike | None = None,
                    log: Callable[[str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> bool:
    """Give ``library`` what scoring reads: its decoys and, under ``model`` (None: the correlation
    mode, which needs no embeddings), the embeddings of its references and decoys. Only what is
    missing is made. When something was added and ``path`` is given, the library is saved back
    there (atomically), so the next job finds it ready; a library that cannot be written (a
    read-only place) is used as it is. Returns whether anything was added."""
    changed = False
    if library.decoys is None:
        if log:
            log(f"rendering the {N_DECOYS} decoy proteins at the library's sampling (once per library)")
        library.decoys = build_decoys(library, should_stop)
        changed = True
    if model is not None and library.references is not None:
        before = (library.embedding_model, _count(library.embeddings), library.decoys.embedding_model)
        embed_library(library, model, log, should_stop)
        embed_decoys(library.decoys, model, log, should_stop)
        changed |= before != (library.embedding_model, _count(library.embeddings), library.decoys.embedding_model)
    if changed and path is not None:
        try:
            library.save(path)
        except OSError as err:
            if log:
                log(f"{path}: could not save the prepared library ({err.strerror or err}); "
                    f"it will be prepared again next time")
    return changed


def _count(a) -> int:
    return 0 if a is None else len(a)
