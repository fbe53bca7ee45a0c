"""Files a job takes as parameters (a map library, a model) and how each kind is loaded.

RELION cannot make such a file an input node and cryoSPARC cannot connect it, so they travel as
parameters; ``base.prepare_params`` loads them here before the job reads anything, and the job
receives the loaded object. Every loader checks the file's format and version and raises an
InputError naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError


@dataclass(frozen=True)
class FileKind:
    what: str  # for messages: "map library"
    load: Callable[[Path | None, Any], Any]  # (path or None for the shipped default, device) -> object


def _library(path: Path | None, device) -> Any:
    from ..identify.library import Library

    if path is None:  # no library is shipped: the job builds one from its maps, or says how to get one
        return None
    lib = Library.load(path)
    if not len(lib):
        raise InputError("the library has no entries (add maps with: cryolens library build)", path)
    return lib


def _identity_model(path: Path | None, device) -> Any:
    from ..identify.model import IdentityModel

    return IdentityModel.load(path, device=device)


def _rank_model(path: Path | None, device) -> Any:
    from ..rank.model import RankModel

    return RankModel.load(path)


FILE_KINDS: dict[str, FileKind] = {
    "library": FileKind("map library", _library),
    "identity_model": FileKind("identity model", _identity_model),
    "rank_model": FileKind("rank model", _rank_model),
}


def load_file(param, path: Path | None, device) -> Any:
    """The object in ``path`` for a file parameter (``path`` None: the shipped default, for an
    optional parameter); InputError naming the file when it is missing, unreadable or not one."""
    kind = FILE_KINDS[param.file_kind]
    if path is not None:
        if not path.exists():
            raise InputError(f"{kind.what} not found ({param.flag})", path)
        if not path.is_file():
            raise InputError(f"{kind.what} is not a file ({param.flag})", path)
        if not os.access(path, os.R_OK):
            raise InputError(f"{kind.what} is not readable ({param.flag})", path)
    try:
        return kind.load(path, device)
    except InputError as err:
        if "\n" not in err.message:
            raise
        # torch's unpickling errors run to a dozen lines: keep the error one line
        raise InputError(f"not a {kind.what} ({param.flag}): {err.message.splitlines()[0][:160]} ...", err.path) \
            from None
