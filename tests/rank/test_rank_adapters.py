"""The rank job through the adapters: RELION's pipeliner on a real relion_refine Class2D run (RELION
continues with the selected particles), the cryoSPARC API stand-in and offline .cs on the real J2
2D classification."""
from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from conftest import REPO, shared_path
from relion_helpers import add_and_run_external, pipeline_nodes, run
from cryolens.relion_ext.star import read_blocks, read_particles

EXE = shutil.which("cryolens-relion-rank") or str(Path(REPO / ".venv/bin/cryolens-relion-rank"))
J2 = ("cryosparc", "cryosparc_J2_particles_exported.cs")
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


@pytest.mark.slow
@pytest.mark.relion
def test_rank_from_the_pipeliner_and_relion_continues_with_the_selection(project):
    proj, data = project
    job_dir, status = add_and_run_external(proj, {
        "fn_exe": EXE, "in_part": str(data).replace("_data.star", "_optimiser.star"),
        "param1_label": "select", "param1_value": "fraction", "param2_label": "fraction", "param2_value": "0.5",
        "param3_label": "rejected", "param3_value": "yes", "nr_threads": "1"})
    assert status == 2, (job_dir / "run.err").read_text()
    rel = job_dir.relative_to(proj)
    nodes = pipeline_nodes(proj)
    assert nodes[f"{rel}/particles.star"] == 3 and nodes[f"{rel}/class_averages.star"] == 5
    # RELION 3.1 knows no score label: rank_model.star (every class, rlnClassScore) is written, not a node;
    # class_averages.star is as 3.1's Select writes it
    assert f"{rel}/rank_model.star" not in nodes and nodes[f"{rel}/rank_gallery.pdf"] == 13
    ranked = read_blocks(job_dir / "rank_model.star")["model_classes"]
    assert len(ranked) == 4 and ranked["rlnClassScore"].between(0, 1).all()
    assert "rlnPredictedClassScore" not in read_blocks(job_dir / "class_averages.star")[""]
    sel = read_blocks(job_dir / "backup_selection.star")[""]["rlnSelected"].to_numpy()
    assert sel.sum() == 2 and sel.tolist() == (ranked["rlnClassScore"].rank(ascending=False) <= 2).astype(int).tolist()
    kept_ids = np.flatnonzero(sel) + 1
    parts = read_particles(job_dir / "particles.star")
    rej = read_particles(job_dir / "rejected.star")
    full = read_particles(proj / data)
    assert set(parts.table["class_id"]) == set(kept_ids) and len(parts) + len(rej) == len(full)
    out = (job_dir / "run.out").read_text()
    assert "rank: top 50% of the classes (2)" in out and "classes scored from class statistics + images" in out
    # RELION continues: star_handler and a reconstruction from the selected particles
    run(["relion_star_handler", "--i", f"{rel}/particles.star", "--o", "check.star", "--select",
         "rlnClassNumber", "--minval", str(kept_ids[0]), "--maxval", str(kept_ids[0])], proj)
    assert len(read_particles(proj / "check.star")) == int((parts.table["class_id"] == kept_ids[0]).sum())
    run(["relion_reconstruct", "--i", f"{rel}/particles.star", "--o", "rank_rec.mrc", "--ctf"], proj)
    assert (proj / "rank_rec.mrc").stat().st_size > 64 ** 3 * 4


@pytest.mark.relion
def test_an_emptied_class_with_inf_and_999_statistics_is_scored_zero(project, monkeypatch):
    """Real RELION writes inf resolution and 999 accuracies for a class that lost its particles."""
    from cryolens.relion_ext.external import main
    from cryolens.relion_ext.star import write_blocks

    proj, data = project
    model = proj / str(data).replace("_data.star", "_model.star")
    blocks = read_blocks(model)
    cls = blocks["model_classes"].copy()
    cls.loc[1, "rlnClassDistribution"] = 0.0
    cls.loc[1, "rlnEstimatedResolution"] = np.inf  # written as 'inf', as RELION writes it
    cls.loc[1, "rlnAccuracyRotations"] = 999.0
    cls.loc[1, "rlnAccuracyTranslationsAngst"] = 999.0
    blocks["model_classes"] = cls
    write_blocks(model, blocks)
    assert "inf" in model.read_text() and "999" in model.read_text()
    star = read_blocks(proj / data)
    pt = star["particles"].copy()
    pt.loc[pt["rlnClassNumber"] == 2, "rlnClassNumber"] = 1  # its particles went to class 1
    star["particles"] = pt
    write_blocks(proj / data, star)
    monkeypatch.chdir(proj)
    assert main(["--job", "rank", "--o", "External/job009/", "--in_parts", str(data), "--select", "threshold",
                 "--threshold", "0.0001"]) == 0
    job = proj / "External" / "job009"
    scores = read_blocks(job / "rank_scores.star")["rank_scores"]
    assert scores.loc[1, "score"] == 0 and scores.loc[1, "selected"] == 0 and scores.loc[1, "n_particles"] == 0
    assert np.isinf(float(scores.loc[1, "resolution"]))
    assert read_blocks(job / "backup_selection.star")[""]["rlnSelected"].iloc[1] == 0


# -- cryoSPARC ----------------------------------------------------------------------------------------------
def _class_averages(root: Path, k: int = 5, box: int = 32) -> Dataset:
    """Class averages for the real J2 particles: disc-like 'proteins' for classes 1, 2, 4, noise for 3, 5."""
    from cryolens.core.images import radius_grid

    rng = np.random.default_rng(0)
    r = radius_grid(box).numpy()
    imgs = rng.standard_normal((k, box, box)).astype(np.float32) * 0.3
    for i in (0, 1, 3):
        imgs[i] += np.exp(-r ** 2 / (2 * (4 + i) ** 2)) * 3
    (root / "J1").mkdir(parents=True, exist_ok=True)
    with mrcfile.new(root / "J1" / "J1_020_class_averages.mrc", overwrite=True) as m:
        m.set_data(imgs)
        m.voxel_size = 1.345
    t = Dataset.allocate(k, [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                             ("blob/psize_A", "<f4"), ("blob/res_A", "<f4")])
    t["blob/path"] = np.array(["J1/J1_020_class_averages.mrc"] * k, dtype=object)
    t["blob/idx"] = np.arange(k)
    t["blob/shape"] = box
    t["blob/psize_A"] = 1.345
    t["blob/res_A"] = [8, 12, 25, 9, 30]
    return t


def test_rank_offline_on_the_real_j2_classification(tmp_path):
    from cryolens.cryosparc_ext import external

    proj = tmp_path / "P1"
    t = _class_averages(proj)
    t.save(proj / "J1" / "J1_020_class_averages.cs")
    out = tmp_path / "out"
    assert external.main(["rank", "--offline", "--particles", str(shared_path(*J2)), "--classes-in",
                          str(proj / "J1" / "J1_020_class_averages.cs"), "--project-dir", str(proj),
                          "--out", str(out), "--select", "fraction", "--fraction", "0.4", "--write_rejected"]) == 0
    side = pd.read_csv(out / "cryolens_classes_templates_selected.csv")
    assert side["class_id"].tolist() == [1, 2, 3, 4, 5] and side["selected"].sum() == 2
    kept = side.loc[side["selected"] == 1, "class_id"].to_numpy() - 1  # cryoSPARC classes are 0-based
    src = Dataset.load(shared_path(*J2))
    sel = Dataset.load(out / "particles_selected.cs")
    exc = Dataset.load(out / "particles_excluded.cs")
    assert set(np.asarray(sel["alignments2D/class"]).tolist()) <= set(kept.tolist())
    assert len(sel) + len(exc) == len(src) and set(sel["uid"]).isdisjoint(set(exc["uid"]))
    # every particle carries its class's score in pick_stats/ncc_score
    score = dict(zip(side["class_id"] - 1, side["rlnClassScore"].astype(np.float32)))
    np.testing.assert_array_equal(sel["pick_stats/ncc_score"],
                                  np.array([score[int(c)] for c in sel["alignments2D/class"]], np.float32))
    templ = Dataset.load(out / "templates_selected.cs")
    assert sorted(np.asarray(templ["blob/idx"]).tolist()) == sorted(kept.tolist())
    assert (out / "templates_selected.csg").exists() and (out / "cryolens_rank_gallery.pdf").exists()


def test_rank_through_the_cryosparc_api_standin(tmp_path, monkeypatch):
    import cryosparc_standin as sd
    from cryosparc.tools import CryoSPARC

    from cryolens.cryosparc_ext import external

    state = sd.StandIn(tmp_path / "P1")
    state.add_job("class_2D_new", "2D Classification", status="completed")
    parts = Dataset.load(shared_path(*J2))
    state.add_result("J1", "particles", "particle", parts, {s: s for s in ("blob", "ctf", "alignments2D")})
    state.add_result("J1", "class_averages", "template", _class_averages(tmp_path / "P1"), {"blob": "blob"})
    monkeypatch.setenv("CRYOSPARC_PASSWORD", sd.PASSWORD)
    with sd.serve(state) as url:
        rc = external.main(["rank", "--url", url, "--email", sd.EMAIL, "--project", "P1", "--workspace", "W1",
                            "--particles", "J1.particles", "--classes-in", "J1.class_averages",
                            "--select", "threshold", "--threshold", "0.0", "--write_rejected"])
        assert rc == 0
        job = state.jobs["J2"]
        assert job.status == "completed" and job.title.startswith("cryolens rank")
        assert {"particles_selected", "templates_selected", "rank_model"} <= set(job.spec.outputs.root)
        cli = CryoSPARC(url, host=None, base_port=None, email=sd.EMAIL, password=sd.PASSWORD)
        back = cli.find_job("P1", "J2").load_output("particles_selected")
        assert len(back) == len(parts)  # threshold 0 keeps every class: passthrough of all particles
        assert "alignments2D/class_posterior" in back.fields()
    side = pd.read_csv(state.project_dir / "J2" / "cryolens_classes_templates_selected.csv")
    assert side["rlnClassScore"].between(0, 1).all() and side["selected"].tolist() == [1] * 5
