"""Shared test fixtures: where the real data lives, and skips with a stated reason."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Path to a real file under ../shared/data, or skip the test saying why."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not available: {p} (../shared/data is absent on a user's clone)")
    return p


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def need_relion(*programs: str) -> None:
    for prog in programs or ("relion_refine",):
        if shutil.which(prog) is None:
            pytest.skip(f"{prog} not on PATH (install it with install/relion-debian.sh)")


@pytest.fixture(scope="session")
def relion_class2d(tmp_path_factory):
    """A real RELION project: relion_project particles (CTF + noise) and a short relion_refine Class2D.

    Returns (project_dir, path of the last run_itNNN_data.star). Built once per test session (~15 s).
    """
    need_relion("relion_project", "relion_refine")
    from relion_helpers import project_particles, run_class2d

    proj = tmp_path_factory.mktemp("relion_class2d")
    project_particles(proj, "protA", 300, seed=1)
    data = run_class2d(proj, "Synthetic/protA_particles.star", K=4, iters=3)
    return proj, data


@pytest.fixture
def project(relion_class2d, tmp_path):
    """A private copy of the Class2D project (so each test owns its pipeline): (dir, data star relative to it)."""
    import shutil

    src, data = relion_class2d
    dst = tmp_path / "proj"
    shutil.copytree(src, dst)
    return dst, data.relative_to(src)
