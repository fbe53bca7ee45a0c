"""Shared test fixtures: where the real data lives, and skips with a stated reason."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# stand-ins and helpers the tests share (tests/helpers): importable by name from every test folder
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))


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


CRYOSPARC_J2 = ("cryosparc", "cryosparc_J2_particles_exported.cs")


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """The loopback cryoSPARC stand-in (tests/helpers/cryosparc_standin.py) serving project P1 with J1,
    a completed 2D classification: the REAL particles of cryosparc_J2_particles_exported.cs (22
    particles, 5 classes) and 5 class averages of noise. Yields (state, url)."""
    import mrcfile
    import numpy as np
    from cryosparc.dataset import Dataset

    import cryosparc_standin as sd

    state = sd.StandIn(tmp_path / "P1")
    state.add_job("class_2D_new", "2D Classification", status="completed")
    parts = Dataset.load(shared_path(*CRYOSPARC_J2))
    state.add_result("J1", "particles", "particle", parts, {s: s for s in ("blob", "ctf", "alignments2D")})
    with mrcfile.new(tmp_path / "P1" / "J1" / "J1_020_class_averages.mrc") as m:
        m.set_data(np.random.default_rng(0).standard_normal((5, 16, 16)).astype(np.float32))
        m.voxel_size = 1.345
    t = Dataset.allocate(5, [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                             ("blob/psize_A", "<f4"), ("blob/res_A", "<f4")])
    t["blob/path"] = np.array(["J1/J1_020_class_averages.mrc"] * 5, dtype=object)
    t["blob/idx"] = np.arange(5)
    t["blob/shape"] = 16
    t["blob/psize_A"] = 1.345
    t["blob/res_A"] = [8, 12, 25, 9, 30]
    state.add_result("J1", "class_averages", "template", t, {"blob": "blob"})
    monkeypatch.setenv("CRYOSPARC_PASSWORD", sd.PASSWORD)
    with sd.serve(state) as url:
        yield state, url
