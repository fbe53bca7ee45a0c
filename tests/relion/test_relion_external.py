"""cryolens jobs as RELION External jobs, run by the real relion_pipeliner (RELION 3.1.3)."""
from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from conftest import REPO, shared_path
from relion_helpers import add_and_run_external, failed_without_outputs, pipeline_nodes, run
from cryolens.relion_ext.external import detect_version, main, write_output_nodes
from cryolens.relion_ext.star import read_blocks, read_particles

EXE = shutil.which("cryolens-relion-select") or str(Path(REPO / ".venv/bin/cryolens-relion-select"))


@pytest.mark.slow
@pytest.mark.relion
def test_select_runs_from_the_pipeliner_and_relion_continues(project):
    proj, data = project
    job_dir, status = add_and_run_external(proj, {
        "fn_exe": EXE, "in_part": str(data), "param1_label": "classes", "param1_value": "1-2",
        "param2_label": "rejected", "param2_value": "yes", "nr_threads": "1"})
    assert status == 2, (job_dir / "run.err").read_text()
    assert (job_dir / "RELION_JOB_EXIT_SUCCESS").exists()
    nodes = pipeline_nodes(proj)
    rel = job_dir.relative_to(proj)
    assert nodes[f"{rel}/particles.star"] == 3 and nodes[f"{rel}/rejected.star"] == 3
    assert nodes[f"{rel}/class_averages.star"] == 5
    sel = read_particles(job_dir / "particles.star")
    rej = read_particles(job_dir / "rejected.star")
    full = read_particles(proj / data)
    assert set(sel.table["class_id"]) <= {1, 2} and len(sel) + len(rej) == len(full)
    assert read_blocks(job_dir / "backup_selection.star")[""]["rlnSelected"].tolist() == [1, 1, 0, 0]
    assert "select: class in [1, 2]" in (job_dir / "run.out").read_text()
    # RELION consumes the output: a reconstruction from the selected particles and a star_handler pass
    run(["relion_reconstruct", "--i", f"{rel}/particles.star", "--o", "sel_rec.mrc", "--ctf"], proj)
    assert (proj / "sel_rec.mrc").stat().st_size > 64 ** 3 * 4
    run(["relion_star_handler", "--i", f"{rel}/particles.star", "--o", "check.star", "--select",
         "rlnClassNumber", "--minval", "1", "--maxval", "1"], proj)
    assert len(read_particles(proj / "check.star")) == int((sel.table["class_id"] == 1).sum())


@pytest.mark.slow
@pytest.mark.relion
def test_threshold_selection_declares_its_histogram_as_a_logfile_node(project):
    proj, data = project
    job_dir, status = add_and_run_external(proj, {
        "fn_exe": EXE, "in_part": str(data), "param1_label": "column",
        "param1_value": "rlnMaxValueProbDistribution", "param2_label": "min_quantile", "param2_value": "0.25"})
    assert status == 2, (job_dir / "run.err").read_text()
    rel = job_dir.relative_to(proj)
    nodes = pipeline_nodes(proj)
    assert nodes[f"{rel}/select_histogram.pdf"] == 13 and nodes[f"{rel}/particles.star"] == 3
    assert (job_dir / "select_histogram.pdf").read_bytes()[:4] == b"%PDF"
    full, sel = read_particles(proj / data), read_particles(job_dir / "particles.star")
    assert len(sel) == pytest.approx(0.75 * len(full), abs=3)


@pytest.mark.slow
@pytest.mark.relion
def test_bad_input_fails_with_a_clear_message_and_no_nodes(project):
    proj, data = project
    job_dir, status = add_and_run_external(proj, {
        "fn_exe": EXE, "in_part": str(data), "param1_label": "classes", "param1_value": "7"})
    assert "ERROR: class(es) [7] do not exist" in failed_without_outputs(proj, job_dir, status)


@pytest.mark.slow
@pytest.mark.relion
def test_abort_now_stops_the_job_with_status_aborted(project, tmp_path):
    proj, data = project
    # RELION deletes a stale abort file before launching; touch it once the job is running.
    slow = tmp_path / "slow_select.sh"
    slow.write_text(f"#!/bin/sh\nsleep 3\nexec {EXE} \"$@\"\n")
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)
    job_dir, status = add_and_run_external(
        proj, {"fn_exe": str(slow), "in_part": str(data), "param1_label": "classes", "param1_value": "1"},
        on_start=lambda d: (d / "RELION_JOB_ABORT_NOW").touch())
    assert status == 4
    assert (job_dir / "RELION_JOB_EXIT_ABORTED").exists() and not (job_dir / "RELION_JOB_ABORT_NOW").exists()
    assert not (job_dir / "particles.star").exists()


@pytest.mark.slow
@pytest.mark.relion
def test_relion_substring_adds_pipeline_control_and_unknown_flags_are_tolerated(project):
    proj, data = project
    job_dir, status = add_and_run_external(proj, {
        "fn_exe": EXE, "in_part": str(data), "param1_label": "classes", "param1_value": "1",
        "other_args": "--note relion_was_here"})
    assert status == 2
    note = (job_dir / "note.txt").read_text()
    assert "--pipeline_control" in note  # RELION added it because of the 'relion_' substring
    assert "ignoring unknown arguments --note relion_was_here" in (job_dir / "run.err").read_text()


@pytest.mark.slow
@pytest.mark.relion
def test_version_detection_from_a_real_31_job_star(project):
    proj, data = project
    job_dir, _ = add_and_run_external(proj, {"fn_exe": EXE, "in_part": str(data),
                                             "param1_label": "classes", "param1_value": "1"})
    assert detect_version(job_dir, proj) == "3.1"


# -- RELION 4.0 / 5.0 metadata (real RELION 5 files; 4.0 differs only in the version tag) -------
def _job_dir_with(tmp_path: Path, job_star_text: str) -> Path:
    d = tmp_path / "External" / "job001"
    d.mkdir(parents=True)
    (d / "job.star").write_text(job_star_text)
    return d


def test_version_from_real_relion5_job_star_and_its_40_form(tmp_path):
    text = shared_path("relion-projects", "relion5-job-stars", "jobs_spa", "Select", "job001", "job.star").read_text()
    assert detect_version(_job_dir_with(tmp_path / "a", text), tmp_path) == "5.0"
    assert detect_version(_job_dir_with(tmp_path / "b", text.replace("50001", "30001")), tmp_path) == "4.0"


@pytest.mark.parametrize("rel,version", [
    ("relion5-job-stars/default_pipelines/full.star", "5.0"),
    ("relion5-tomo-project/pipelines/default_pipeline.star", "5.0"),
    ("relion31-tutorial/default_pipeline.star", "3.1"),
])
def test_version_fallback_to_default_pipeline(tmp_path, rel, version):
    src = shared_path("relion-projects", *rel.split("/"))
    (tmp_path / "default_pipeline.star").write_text(src.read_text())
    job = tmp_path / "External" / "job009"
    job.mkdir(parents=True)
    assert detect_version(job, tmp_path) == version


def test_version_fallback_for_a_40_pipeline(tmp_path):
    text = shared_path("relion-projects", "relion5-job-stars", "default_pipelines", "full.star").read_text()
    text = text.replace("# version 50001", "# version 30001").replace("_rlnPipeLineNodeTypeLabelDepth #3\n", "")
    text = "\n".join(line.rsplit(None, 1)[0] if line.endswith("            1") else line for line in text.splitlines())
    (tmp_path / "default_pipeline.star").write_text(text)
    job = tmp_path / "External" / "job009"
    job.mkdir(parents=True)
    assert detect_version(job, tmp_path) == "4.0"


@pytest.mark.parametrize("version,particles,classes", [
    ("3.1", "ParticlesData.star.relion", "ImagesData.star.relion.classaverages"),
    ("4.0", "ParticlesData.star.relion", "ImagesData.star.relion.classaverages"),
    ("5.0", "ParticleGroupMetadata.star.relion", "Image2DGroupMetadata.star.relion.classaverages"),
])
def test_output_nodes_carry_the_columns_each_version_reads(tmp_path, version, particles, classes):
    write_output_nodes(tmp_path, [("External/job001/particles.star", "particles"),
                                  ("External/job001/class_averages.star", "classes")], version)
    t = read_blocks(tmp_path / "RELION_OUTPUT_NODES.star")["output_nodes"]
    assert t["rlnPipeLineNodeType"].tolist() == [3, 5]
    if version == "3.1":  # 3.1 reads the integer and warns about a label it does not know
        assert "rlnPipeLineNodeTypeLabel" not in t
    else:
        assert t["rlnPipeLineNodeTypeLabel"].tolist() == [particles, classes]
    assert ("# version 50001" in (tmp_path / "RELION_OUTPUT_NODES.star").read_text()) == (version == "5.0")


def test_an_empty_yes_no_means_the_default_and_an_old_name_still_runs(tmp_path, monkeypatch, capsys):
    """RELION passes an empty value as a bare flag: the default (no), said in the log; the old name
    write_rejected is read as rejected with a note; rejected yes writes rejected.star."""
    star = shared_path("relion-projects", "relion-class2d-betagal", "ap_s_c2d.star")
    monkeypatch.chdir(tmp_path)
    rc = main(["--job", "select", "--o", "External/job003/", "--in_parts", str(star), "--classes", "51",
               "--write_rejected", "--j", "1"])
    assert rc == 0
    job = tmp_path / "External" / "job003"
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists() and not (job / "rejected.star").exists()
    assert len(read_particles(job / "particles.star")) == 508
    out = capsys.readouterr().out
    assert "rejected     = no (empty value: the default) [yes|no]" in out
    assert "write_rejected is the old name of rejected" in out
    assert main(["--job", "select", "--o", "External/job004/", "--in_parts", str(star), "--classes", "51",
                 "--rejected", "yes"]) == 0
    assert (tmp_path / "External" / "job004" / "rejected.star").exists()


def test_a_failed_run_removes_stale_success_and_declares_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "External" / "job004"
    job.mkdir(parents=True)
    (job / "RELION_JOB_EXIT_SUCCESS").touch()
    (job / "RELION_OUTPUT_NODES.star").write_text("stale")
    rc = main(["--job", "select", "--o", "External/job004/", "--in_parts", "missing.star", "--classes", "1"])
    assert rc == 2  # bad input (ExitCode table); RELION itself reads RELION_JOB_EXIT_FAILURE
    assert sorted(p.name for p in job.iterdir()) == ["RELION_JOB_EXIT_FAILURE"]


def test_installed_templates_match_the_registry(tmp_path):
    from cryolens.relion_ext.templates import write_templates

    fresh = write_templates(tmp_path)
    assert fresh, "no jobs registered"
    for path in fresh:
        committed = REPO / "install" / "relion" / path.name
        assert committed.exists(), f"run: python -m cryolens.relion_ext.templates install/relion ({path.name})"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: regenerate it"


def test_every_job_has_its_relion_executable():
    import tomllib

    from cryolens.core.jobs import load_all

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in load_all():
        assert scripts.get(f"cryolens-relion-{name}") == "cryolens.relion_ext.external:main", name


@pytest.mark.slow
@pytest.mark.relion
def test_template_loads_into_the_pipeliner_and_runs(project, monkeypatch):
    proj, data = project
    monkeypatch.setenv("PATH", f"{Path(EXE).parent}:{__import__('os').environ['PATH']}")
    (proj / "default_pipeline.star").write_text("\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n\n")
    template = REPO / "install" / "relion" / "cryolens_select_job.star"
    run(["relion_pipeliner", "--addJobFromStar", str(template), "--addJobOptions",
         f"in_part == {data};param1_value == 4"], proj)
    run(["relion_pipeliner", "--RunJobs", "External/job001/", "--sec_wait_after", "1"], proj, timeout=300)
    job = proj / "External" / "job001"
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists(), (job / "run.err").read_text()
    assert set(read_particles(job / "particles.star").table["class_id"]) == {4}
    assert not (job / "rejected.star").exists()  # rejected "no" from the template
