"""``cryolens simulate``: deterministic RELION projects with ground truth, checked with RELION."""
from __future__ import annotations

import hashlib

import mrcfile
import numpy as np
import pandas as pd
import pytest

from conftest import need_relion
from cryolens.cli import main
from cryolens.relion_ext import programs
from cryolens.relion_ext.star import read_particles


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_same_seed_same_bytes_and_truth_is_complete(tmp_path):
    args = ["--n", "120", "--species", "2", "--box", "48", "--pixel-size", "4", "--classes", "4", "--seed", "5"]
    assert main(["simulate", str(tmp_path / "a"), *args]) == 0
    assert main(["simulate", str(tmp_path / "b"), *args]) == 0
    for rel in ("Simulated/particles.mrcs", "Simulated/particles_truth.csv", "Simulated/classes_fast.mrcs"):
        assert digest(tmp_path / "a" / rel) == digest(tmp_path / "b" / rel), rel
    ps = read_particles(tmp_path / "a" / "Simulated" / "particles.star")
    truth = pd.read_csv(tmp_path / "a" / "Simulated" / "particles_truth.csv")
    assert len(ps) == len(truth) == 120 and ps.image_source().box == 48
    for col in ("species", "conformation", "rot", "tilt", "psi", "shift_x", "defocus_u", "snr", "is_junk", "junk_type"):
        assert col in truth.columns, col
    assert (tmp_path / "a" / "gallery.png").stat().st_size > 10_000
    assert main(["simulate", str(tmp_path / "c"), *args[:-1], "6"]) == 0
    assert digest(tmp_path / "a" / "Simulated/particles.mrcs") != digest(tmp_path / "c" / "Simulated/particles.mrcs")


@pytest.mark.slow
@pytest.mark.relion
def test_relion_reconstruct_of_a_species_matches_its_map(tmp_path):
    """Ground truth consistency: RELION reconstructs each species' map from its particles."""
    need_relion("relion_reconstruct")
    out = tmp_path / "p"
    assert main(["simulate", str(out), "--n", "500", "--species", "1", "--box", "48", "--pixel-size", "4",
                 "--snr", "1.0", "--junk", "0", "--class-route", "none", "--seed", "2"]) == 0
    ps = read_particles(out / "Simulated" / "particles.star")
    programs.reconstruct(out, "Simulated/particles.star", "rec.mrc")
    with mrcfile.open(out / "rec.mrc") as m:
        rec = m.data.astype(np.float64)
    maps = sorted((out / "Simulated").glob("map_*.mrc"))
    with mrcfile.open(maps[0]) as m:
        truth = m.data.astype(np.float64)
    a, b = rec - rec.mean(), truth - truth.mean()
    assert (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()) > 0.8
    assert len(ps) == 500


@pytest.mark.slow
@pytest.mark.relion
def test_relion_class2d_route_end_to_end(tmp_path):
    need_relion("relion_refine")
    out = tmp_path / "c"
    assert main(["simulate", str(out), "--n", "300", "--species", "2", "--box", "48", "--pixel-size", "4",
                 "--snr", "0.3", "--classes", "4", "--class-route", "relion", "--relion-iters", "2", "--seed", "3"]) == 0
    truth = pd.read_csv(out / "Class2D" / "job002" / "classes_truth.csv")
    assert len(truth) == 4 and truth["n_particles"].sum() == 300
    assert truth["truth_purity"].between(0, 1).all()
    assert (out / "Class2D" / "job002" / "run_it002_model.star").exists()
