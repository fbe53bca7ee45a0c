"""RELION Class2D output -> ClassSet, on a real relion_refine run and real model.star files."""
from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from conftest import shared_path
from cryolens.core.errors import InputError
from cryolens.relion_ext.class2d import class_table, find_class2d_files, read_class2d
from cryolens.relion_ext.star import read_blocks

pytestmark = pytest.mark.relion


def test_any_sibling_or_the_job_dir_finds_the_same_iteration(relion_class2d, monkeypatch):
    proj, data = relion_class2d
    monkeypatch.chdir(proj)
    rel = data.relative_to(proj)
    names = [rel, str(rel).replace("_data", "_model"), str(rel).replace("_data", "_optimiser"), rel.parent]
    found = [find_class2d_files(n) for n in names]
    assert {f.model.name for f in found} == {"run_it003_model.star"}
    assert all(f.data is not None and f.data.name == "run_it003_data.star" for f in found)


def test_classes_images_and_membership_match_relion(relion_class2d, tmp_path, monkeypatch):
    proj, data = relion_class2d
    monkeypatch.chdir(tmp_path)  # not the project dir: the root is found from the file's location
    cs = read_class2d(data)
    assert len(cs) == 4 and cs.pixel_size == pytest.approx(3.0)
    with mrcfile.open(data.parent / "run_it003_classes.mrcs") as m:
        np.testing.assert_array_equal(cs.images, m.data)
    raw = read_blocks(data)["particles"]
    counts = raw["rlnClassNumber"].value_counts()
    assert cs.table["n_particles"].tolist() == [int(counts.get(k, 0)) for k in range(1, 5)]
    assert cs.counts().sum() == len(cs.particles) == 300
    dist = cs.table["distribution"].to_numpy()
    assert np.allclose(dist, cs.table["n_particles"] / 300, atol=0.1)  # RELION's soft distribution
    k = int(cs.table["class_id"][cs.table["n_particles"].idxmax()])
    members = cs.members(k)
    assert (members.table["class_id"] == k).all() and len(members) == counts[k]
    post = cs.table["posterior"]
    assert post[cs.table["n_particles"] > 0].between(0, 1).all() and post[cs.table["n_particles"] == 0].isna().all()


def test_empty_classes_with_999_inf_and_nan_statistics(tmp_path):
    model = shared_path("relion-projects", "relion5-tomo-project", "skeleton_project", "Class3D", "job017",
                        "run_it025_model.star")
    classes = read_blocks(model)["model_classes"]
    t = class_table(classes, 2.7, model)
    assert t["acc_rot"].isna().tolist() == [False] * 5 + [True, True, False, False]  # 999 = unknown
    assert t["distribution"].iloc[5] == pytest.approx(0.006420)
    text = ("data_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n"
            "_rlnAccuracyRotations #3\n_rlnAccuracyTranslationsAngst #4\n_rlnEstimatedResolution #5\n"
            "_rlnOverallFourierCompleteness #6\n"
            "000001@c.mrcs 0.30 2.98 0.81 21.33 1.0\n"
            "000002@c.mrcs 3.877039e-08 999.000000 999.000000 inf -nan\n")
    (tmp_path / "m.star").write_text(text)
    t = class_table(read_blocks(tmp_path / "m.star")["model_classes"], 3.0, tmp_path / "m.star")
    assert t["class_id"].tolist() == [1, 2] and t["image_index"].tolist() == [0, 1]
    assert np.isinf(t["resolution"].iloc[1]) and np.isnan(t["completeness"].iloc[1])
    assert np.isnan(t["acc_rot"].iloc[1]) and t["acc_trans"].iloc[0] == pytest.approx(0.81)


def test_not_a_class2d_file_is_a_clear_error(tmp_path):
    p = tmp_path / "particles.star"
    p.write_text("data_\n")
    with pytest.raises(InputError, match="particles.star: not a Class2D output"):
        find_class2d_files(p)
    q = tmp_path / "run_it002_data.star"
    q.write_text("data_\n")
    with pytest.raises(InputError, match="model star of this iteration is missing"):
        find_class2d_files(q)


def test_a_3d_model_is_refused(tmp_path):
    src = shared_path("relion-projects", "relion5-tomo-project", "skeleton_project", "Class3D", "job017",
                      "run_it025_model.star")
    dst = tmp_path / "run_it025_model.star"
    dst.write_text(src.read_text())
    with pytest.raises(InputError, match="3D model"):
        read_class2d(dst)


@pytest.mark.slow
def test_empty_classes_of_a_real_run_parse_as_numbers(relion_class2d, tmp_path):
    """Many classes for few particles: RELION leaves some empty (inf resolution, 999 accuracies)."""
    from relion_helpers import run_class2d

    proj, _ = relion_class2d
    data = run_class2d(proj, "Synthetic/protA_particles.star", job="Class2D/many", K=12, iters=2)
    cs = read_class2d(data)
    empty = cs.table[cs.table["n_particles"] == 0]
    assert len(empty) >= 1, "12 classes for 300 noisy particles leave some empty in RELION 3.1.3"
    # RELION writes inf / -nan / 999 or a coarse finite value for them: all must parse as numbers
    for col in ("distribution", "resolution", "acc_rot", "acc_trans", "completeness"):
        assert cs.table[col].dtype.kind == "f", col
    assert (empty["distribution"] < 0.01).all()
    assert (np.isinf(empty["resolution"]) | (empty["resolution"] > 0)).all()
    assert cs.table["n_particles"].sum() == 300
