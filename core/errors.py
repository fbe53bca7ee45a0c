"""User-facing errors: one readable line that names the file and the problem."""
from __future__ import annotations

import os


class CryolensError(Exception):
    """A problem with the user's input or environment (not a bug in cryolens).

    The command line prints ``str(err)`` as one line, without a traceback unless --debug.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(CryolensError):
    """An input file is missing, malformed or inconsistent."""


class JobAborted(Exception):
    """Raised inside a job when the user asked it to stop (RELION_JOB_ABORT_NOW, cryoSPARC kill)."""
