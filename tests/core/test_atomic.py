"""Atomic outputs: all or nothing, and readable like a plain write (not private to the owner)."""
from __future__ import annotations

import os

import pytest

from cryolens.core.atomic import atomic_path, atomic_write_text


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.star", "x")
        assert (tmp_path / "a.star").stat().st_mode & 0o777 == 0o640
        os.chmod(tmp_path / "a.star", 0o664)
        atomic_write_text(tmp_path / "a.star", "y")
        assert (tmp_path / "a.star").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "b.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert (tmp_path / "b.txt").read_text() == "old" and os.listdir(tmp_path) == ["b.txt"]
