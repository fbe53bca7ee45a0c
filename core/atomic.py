"""Atomic file output: write to a temporary sibling, rename over the target on success; and a
run's outputs as a set: staged inside the destination, moved into place together, an earlier
run's cleared first.

A reader never sees a half-written file, and a failure leaves no partial output behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import CryolensError, os_error, user_error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the final extension (``suffix`` defaults to it) so libraries
    that dispatch on the extension (mrcfile, starfile) behave as for the final file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as err:
        raise _write_error(err, path) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would (a shared
        # project directory must stay readable by the group), or keep the mode of the file replaced
        os.chmod(tmp_path, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(err, Exception) and not isinstance(err, CryolensError):
            plain = _write_error(err, path)
            if plain is not None:
                raise plain from err
        raise


def _write_error(err: Exception, path: Path) -> CryolensError | None:
    """One line naming ``path`` (not the temporary name) for a write that failed on the file
    system: an OSError, or any error of a writer library on a full disk (they report it as
    'N requested and M written', or worse)."""
    full = False
    with contextlib.suppress(OSError):
        full = shutil.disk_usage(path.parent).free == 0
    if full:
        return CryolensError("no space left on the device", path)
    if isinstance(err, OSError):
        return os_error(OSError(err.errno, err.strerror or str(err)), path)
    return None


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# -- one run's outputs: staged, moved into place together, an earlier run's cleared -------------------
STAGING_PREFIX = ".cryolens-staging-"
MANIFEST = ".cryolens-outputs"  # what the last run into a folder put there (split sets have run-time names)


class Staging:
    """A hidden folder inside ``dest`` that a run writes its outputs into; ``commit`` moves them all
    into ``dest`` at the end, ``discard`` removes them (a failure or a signal declares nothing)."""

    def __init__(self, dest: str | os.PathLike):
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.dest))

    def final(self, staged: str | os.PathLike) -> Path:
        """Where a file written under ``self.dir`` ends up."""
        return self.dest / Path(staged).relative_to(self.dir)

    def _staged(self) -> list[Path]:
        return sorted(p.relative_to(self.dir) for p in self.dir.rglob("*") if p.is_symlink() or p.is_file())

    def commit(self) -> list[Path]:
        """Move every staged file into ``dest`` (all or none: a move that fails takes back the ones
        before it) and record them in the manifest; returns the final paths."""
        names = self._staged()
        for rel in names:  # refuse before moving anything
            target = self.dest / rel
            if target.is_dir() and not target.is_symlink():
                raise CryolensError("is a directory: cannot put the job's output there", target)
        moved: list[Path] = []
        try:
            for rel in names:
                (self.dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.dir / rel, self.dest / rel)
                moved.append(self.dest / rel)
            atomic_write_text(self.dest / MANIFEST, "".join(f"{rel.as_posix()}\n" for rel in names))
        except BaseException:
            for path in moved:
                path.unlink(missing_ok=True)
            raise
        finally:
            self.discard()
        return moved

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def staged(dest: str | os.PathLike) -> Iterator[Staging]:
    """``with staged(out) as stage``: write into ``stage.dir``, call ``stage.commit()`` when all is
    written; whatever ends the block otherwise (an error, a signal) removes the staged files."""
    stage = Staging(dest)
    try:
        yield stage
    except (CryolensError, OSError) as err:  # name the file where it was going, not its staged copy
        plain = user_error(err)
        if plain is not None and plain.path is not None and Path(plain.path).is_relative_to(stage.dir):
            raise type(plain)(plain.message, stage.final(plain.path)) from err
        raise
    finally:
        stage.discard()


def clear_outputs(dest: str | os.PathLike, names, inputs=()) -> list[Path]:
    """Before a run into ``dest``: remove the files it owns from an earlier run there, i.e. its
    declared output ``names`` and what the earlier run's manifest lists (never a folder, never a
    path outside ``dest``), and the staging folders of runs that were killed. An input among
    them, or a folder where an output goes, is refused (CryolensError) before anything is removed."""
    dest = Path(dest)
    if not dest.is_dir():
        return []
    declared = {Path(n) for n in names}
    owned = dict.fromkeys(declared)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        owned.update(dict.fromkeys(Path(line) for line in (dest / MANIFEST).read_text().splitlines() if line))
    owned = [rel for rel in owned if not rel.is_absolute() and ".." not in rel.parts]
    given = [Path(p).resolve() for p in inputs if p]
    present = []
    for rel in owned:
        path = dest / rel
        if path.is_symlink() or path.is_file():
            if path.resolve() in given:
                raise CryolensError("an input is in the output folder under the name of an output: "
                                    "write the results elsewhere", path)
            present.append(path)
        elif path.is_dir() and rel in declared:
            raise CryolensError("is a directory: cannot put the job's output there", path)
    for path in present:
        path.unlink(missing_ok=True)
    (dest / MANIFEST).unlink(missing_ok=True)
    for old in dest.glob(STAGING_PREFIX + "*"):
        pid = old.name[len(STAGING_PREFIX):].split("-")[0]
        if old.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return present


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True
