"""User-facing errors: one readable line that names the file and the problem."""
from __future__ import annotations

import errno
import os
import signal
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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM ended the run (``core.signals``). A KeyboardInterrupt, so that no
    ``except Exception`` on the way out swallows it."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


class ExitCode(IntEnum):
    """The process exit status of every cryolens entry point: ``cryolens``, ``cryolens-relion-<job>``
    and ``cryolens-cryosparc``. RELION itself reads only the RELION_JOB_EXIT_* files; cryoSPARC
    (online) records a failed job as failed, and its entry then exits with FAILED."""

    SUCCESS = 0
    FAILED = 1  # the job failed: a bug (internal error), or CryoSPARC marked the job failed
    BAD_INPUT = 2  # bad input or usage: the message names the file or the option (argparse uses 2 too)
    ABORTED = 3  # the user asked the job to stop (RELION_JOB_ABORT_NOW)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
    TERMINATED = 143  # SIGTERM: scancel, a queue's time limit (128 + SIGTERM)


# the file-system errors a user can act on, as one line each
_OS_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system", errno.EISDIR: "is a directory",
               errno.ENOTDIR: "a part of the path is not a directory", errno.ENOENT: "no such file or directory",
               errno.EEXIST: "exists and is not a folder", errno.ENAMETOOLONG: "file name too long",
               errno.EIO: "input/output error"}


def os_error(err: OSError, path: str | os.PathLike | None = None) -> CryolensError | None:
    """An OSError as a one-line CryolensError naming the file (``err.filename``, else ``path``);
    None when neither names one (then it is not one we can explain)."""
    name = err.filename if err.filename is not None else path
    if name is None:
        return None
    reason = _OS_REASONS.get(err.errno) or err.strerror or str(err)
    where = f" (with {err.filename2})" if err.filename2 is not None else ""
    return CryolensError(reason + where, name)


def user_error(err: BaseException) -> CryolensError | None:
    """The one-line form of an exception the user can act on, or None for a bug."""
    if isinstance(err, CryolensError):
        return err
    if isinstance(err, OSError):
        return os_error(err)
    return None


def exit_code(err: BaseException) -> ExitCode:
    """The exit status for an exception that ended a run."""
    if user_error(err) is not None:
        return ExitCode.BAD_INPUT
    if isinstance(err, JobAborted):
        return ExitCode.ABORTED
    if isinstance(err, Interrupted) and err.signum == signal.SIGTERM:
        return ExitCode.TERMINATED
    if isinstance(err, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED
