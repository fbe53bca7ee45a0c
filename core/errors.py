"""User-facing errors: one readable line that names the file and the problem."""
from __future__ import annotations

import os
from enum import IntEnum


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


class ExitCode(IntEnum):
    """The process exit status of every cryolens entry point: ``cryolens``, ``cryolens-relion-<job>``
    and ``cryolens-cryosparc``. RELION itself reads only the RELION_JOB_EXIT_* files; cryoSPARC
    (online) records a failed job as failed, and its entry then exits with FAILED."""

    SUCCESS = 0
    FAILED = 1  # the job failed: a bug (internal error), or CryoSPARC marked the job failed
    BAD_INPUT = 2  # bad input or usage: the message names the file or the option (argparse uses 2 too)
    ABORTED = 3  # the user asked the job to stop (RELION_JOB_ABORT_NOW)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


def exit_code(err: BaseException) -> ExitCode:
    """The exit status for an exception that ended a run."""
    if isinstance(err, CryolensError):
        return ExitCode.BAD_INPUT
    if isinstance(err, JobAborted):
        return ExitCode.ABORTED
    if isinstance(err, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED
