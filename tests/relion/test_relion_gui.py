"""The RELION GUI as a user meets it (issue 19), driven headless with the real RELION 3.1.3
binaries: templates loaded the way each version loads them, a `cryolens simulate` project the
pipeliner works in with no manual step, parameter names that fit, empty yes/no values, parameters
that do not apply, identify's library from the form, and the outputs a user needs as nodes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from relion_helpers import pipeline_nodes, run
from cryolens.core.jobs import get_job, load_all, prepare_params
from cryolens.relion_ext.star import read_blocks

BIN = Path(shutil.which("cryolens-relion-select") or REPO / ".venv/bin/cryolens-relion-select").parent
BOOTSTRAP = "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n\n"
need_pipeliner = pytest.mark.skipif(shutil.which("relion_pipeliner") is None, reason="needs RELION")


def _options(job_star: Path) -> dict[str, str]:
    t = read_blocks(job_star)["joboptions_values"]
    return dict(zip(t["rlnJobOptionVariable"], t["rlnJobOptionValue"].astype(str)))


def test_parameter_names_fit_relion_31s_label_box_and_old_names_are_aliases():
    from cryolens.relion_ext.templates import LABEL_WIDTH, MAX_PARAMS

    for name, spec in load_all().items():
        assert len(spec.params) <= MAX_PARAMS, name
        for prm in spec.params:
            assert len(prm.name) <= LABEL_WIDTH, f"{name}: {prm.name} is clipped in RELION 3.1's label box"
    assert get_job("rank").param("min_prob").aliases == ("min_probability",)
    assert get_job("identify").param("min_conf").aliases == ("min_confidence",)
    assert get_job("select").param("rejected").aliases == ("write_rejected",)


def test_templates_write_all_ten_rows_and_the_help_the_form_cannot_show():
    for path in sorted((REPO / "install" / "relion").glob("cryolens_*_job.star")):
        opts = _options(path)
        for k in range(1, 11):
            assert f"param{k}_label" in opts and f"param{k}_value" in opts, (path.name, k)
        for field in ("in_mov", "in_mic", "in_part", "in_coords", "in_3dref", "in_mask"):
            assert field in opts
        n = len(get_job(path.name.split("_")[1]).params)
        assert all(opts[f"param{k}_label"] not in ("", '""') for k in range(1, n + 1)), path.name
        assert all(opts[f"param{k}_label"] in ("", '""') for k in range(n + 1, 11)), path.name  # rows left empty
    rank = (REPO / "install" / "relion" / "cryolens_rank_job.star").read_text()
    assert "#   param2 select: auto|threshold|fraction; default: auto" in rank
    assert ".gui_externaljob.star" in rank and "Load job.star" in rank


def test_empty_yes_no_is_the_default_and_inapplicable_parameters_are_logged():
    rank = get_job("rank")
    p = prepare_params(rank, {"select": "auto", "threshold": "0.6", "gallery": None, "write_rejected": ""})
    assert p["gallery"] is True and p["rejected"] is False  # each its own default, not yes
    report = "\n".join(p.report)
    assert "threshold  = 0.6 [number in [0, 1]]: IGNORED: applies only with select threshold (select is auto)" in report
    assert "gallery    = yes (empty value: the default)" in report
    assert "write_rejected is the old name of rejected" in report
    assert sum("IGNORED" in line for line in p.report) == 1  # fraction was not given: 'not used', quietly
    p = prepare_params(rank, {"select": "threshold", "threshold": "0.6"})
    assert not any("threshold  = 0.6" in line and "IGNORED" in line for line in p.report)


def test_identify_without_a_library_says_exactly_what_to_do(tmp_path, monkeypatch, capsys):
    import numpy as np

    from cryolens.core.mrc import write_stack
    from cryolens.relion_ext.external import main

    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path / "avg.mrcs", np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32), 4.0)
    assert main(["--job", "identify", "--o", "External/job001/", "--in_parts", "avg.mrcs"]) != 0
    assert (tmp_path / "External" / "job001" / "RELION_JOB_EXIT_FAILURE").exists()
    err = capsys.readouterr().err
    assert "set the parameter maps to a folder of your maps" in err and "cryolens library build" in err


@need_pipeliner
def test_the_31_route_loads_each_template_from_gui_externaljob_star(tmp_path):
    """RELION 3.1's Jobs > Load job settings reads .gui_externaljob.star with the reader the
    pipeliner's --addJobFromStar uses: load identify (ten rows), then select (nine) over it."""
    (tmp_path / "default_pipeline.star").write_text(BOOTSTRAP)
    for job in ("identify", "select"):
        shutil.copy(REPO / "install" / "relion" / f"cryolens_{job}_job.star", tmp_path / ".gui_externaljob.star")
        run(["relion_pipeliner", "--addJobFromStar", ".gui_externaljob.star"], tmp_path)
    first = _options(tmp_path / "External" / "job001" / "job.star")
    assert first["fn_exe"] == "cryolens-relion-identify"
    assert first["param10_label"] == "gallery" and first["param10_value"] == "yes"
    opts = _options(tmp_path / "External" / "job002" / "job.star")
    assert opts["fn_exe"] == "cryolens-relion-select"
    assert opts["param9_label"] == "rejected" and opts["param1_label"] == "classes"  # select's rows, not identify's
    assert opts["param10_label"] in ("", '""')  # identify's tenth row is not carried over


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    if shutil.which("relion_refine") is None or shutil.which("relion_pipeliner") is None:
        pytest.skip("needs RELION")
    from cryolens.cli import main

    out = tmp_path_factory.mktemp("gui") / "proj"
    assert main(["simulate", str(out), "--n", "200", "--species", "2", "--box", "32", "--pixel-size", "5",
                 "--classes", "3", "--class-route", "relion", "--relion-iters", "2", "--seed", "4"]) == 0
    return out


def _add_and_run(project: Path, options: str) -> Path:
    procs = read_blocks(project / "default_pipeline.star")["pipeline_processes"]["rlnPipeLineProcessName"]
    run(["relion_pipeliner", "--addJob", "External", "--addJobOptions", options], project)
    job = next(p for p in read_blocks(project / "default_pipeline.star")["pipeline_processes"]["rlnPipeLineProcessName"]
               if p not in set(procs))
    run(["relion_pipeliner", "--RunJobs", job, "--sec_wait_after", "1"], project, timeout=300)
    return project / job


@pytest.mark.slow
@pytest.mark.relion
def test_a_simulated_project_is_a_relion_project_the_pipeliner_works_in(simulated):
    proj = simulated
    assert (proj / ".gui_projectdir").exists()
    nodes = pipeline_nodes(proj)
    assert nodes["Import/job001/particles.star"] == 3 and nodes["Class2D/job002/run_it002_data.star"] == 3
    for job in ("Import/job001", "Class2D/job002"):
        assert {"job.star", "run.out", "note.txt", "RELION_JOB_EXIT_SUCCESS"} <= {p.name for p in (proj / job).iterdir()}
    job = _add_and_run(proj, f"fn_exe == {BIN}/cryolens-relion-select;in_part == Class2D/job002/run_it002_data.star;"
                             "param1_label == classes;param1_value == 1,2;param2_label == max_splits;"
                             "param2_value == 5;param3_label == write_rejected;nr_threads == 1")
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists(), (job / "run.err").read_text()
    assert not (proj / ".relion_lock").exists()
    procs = read_blocks(proj / "default_pipeline.star")["pipeline_processes"]
    assert procs["rlnPipeLineProcessStatus"].astype(int).tolist() == [2, 2, 2]
    rel = job.relative_to(proj)
    assert pipeline_nodes(proj)[f"{rel}/particles.star"] == 3
    out = (job / "run.out").read_text().splitlines()
    assert out[1] == "cryolens select: parameters (name = value [allowed]: what it does)"
    assert any(line.startswith("  max_splits") and "IGNORED: applies only when split_by is set" in line for line in out)
    assert any(line.startswith("  rejected") and "no (empty value: the default)" in line for line in out)
    assert not (job / "rejected.star").exists()
    assert "unknown label" not in (job / "run.err").read_text()


@pytest.mark.slow
@pytest.mark.relion
def test_identify_builds_its_library_from_a_folder_of_maps_given_in_the_form(simulated):
    proj = simulated
    job = _add_and_run(proj, f"fn_exe == {BIN}/cryolens-relion-identify;in_part == Class2D/job002/run_it002_data.star;"
                             "param1_label == maps;param1_value == Simulated;param2_label == mode;"
                             "param2_value == correlation;nr_threads == 2")
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists(), (job / "run.err").read_text()
    assert (job / "library.npz").exists()
    rel = job.relative_to(proj)
    nodes = pipeline_nodes(proj)
    assert nodes[f"{rel}/identities.star"] == 5 and nodes[f"{rel}/identify_gallery.pdf"] == 13
    ids = read_blocks(job / "identities.star")["identities"]
    assert ids["rlnClassNumber"].tolist() == [1, 2, 3]
    assert ids["rlnReferenceImage"].str.endswith("@Class2D/job002/run_it002_classes.mrcs").all()
    # the library it built runs the next job directly
    job2 = _add_and_run(proj, f"fn_exe == {BIN}/cryolens-relion-identify;in_part == Class2D/job002/run_it002_data.star;"
                              f"param1_label == library;param1_value == {rel}/library.npz;param2_label == mode;"
                              "param2_value == correlation;nr_threads == 2")
    assert (job2 / "RELION_JOB_EXIT_SUCCESS").exists(), (job2 / "run.err").read_text()
