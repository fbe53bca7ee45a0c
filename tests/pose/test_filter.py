"""The ``filter`` job on real RELION and cryoSPARC files: every mode, the direction of each metric,
every input column kept, the cryoSPARC offline and stand-in routes, the RELION External job under
the real relion_pipeliner, and the one-line errors for bad input."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from conftest import REPO, shared_path
from cryolens.cli import main as cryolens
from cryolens.core.pose import POSE_UNCERTAINTY_DEG, two_modes
from cryolens.cryosparc_ext import external as cryosparc
from cryolens.relion_ext.star import read_blocks, read_particles, write_particles

R31 = ("real-particles", "relion31.star")  # 5 particles
S17 = ("relion-conventions", "sample_particles_relion31.star")  # 17 particles, 2 optics groups
OG6 = ("real-particles", "relion31.6opticsgroups.star")  # 139 particles
BETAGAL = ("relion-conventions", "betagal_tutorial_particles.star")  # 4501 refined particles
ONE = ("relion-conventions", "sample_relion_one_image.star")  # 1 particle
J24 = ("cryosparc", "cryosparc_P12_J24_001_particles.cs")  # homogeneous refinement, 2019 rows, alignments3D
J2 = ("cryosparc", "cryosparc_J2_particles_exported.cs")  # 2D classification, 22 rows, no alignments3D
P, N = "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples"
EXE = shutil.which("cryolens-relion-filter") or str(REPO / ".venv/bin/cryolens-relion-filter")
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_filter(src: Path, out: Path, *args: str) -> int:
    """``cryolens run filter`` on ``src``; the input must come out unchanged."""
    before = digest(src)
    rc = cryolens(["run", "filter", "--particles", str(src), "--out", str(out), *args])
    assert digest(src) == before, f"{src} was modified"
    return rc


def particle_rows(path: Path) -> pd.DataFrame:
    """The particle block as the file holds it (every label, in order)."""
    return read_blocks(path)["particles"]


def with_column(src: Path, dst: Path, **columns) -> Path:
    """A copy of a real particle STAR with columns set (added or replaced)."""
    ps = read_particles(src)
    for name, values in columns.items():
        ps.table[name] = values
    write_particles(ps, dst)
    return dst


def assert_rows_of(out: Path, src: Path, mask: np.ndarray) -> None:
    """``out`` holds exactly the rows of ``src`` where ``mask``, every column as it was."""
    got, full = particle_rows(out), particle_rows(src)
    assert list(got.columns) == list(full.columns)
    pd.testing.assert_frame_equal(got, full[mask].reset_index(drop=True), check_dtype=False)  # 3277.000000 -> 3277


# -- each mode on a real STAR ------------------------------------------------------------------------------
def test_quantile_keeps_the_most_certain_share_with_every_column(tmp_path, capsys):
    src = shared_path(*R31)
    p = particle_rows(src)[P].to_numpy(float)  # 0.051 0.067 0.144 0.048 0.167
    assert run_filter(src, tmp_path, "--rejected", "yes") == 0  # defaults: auto metric, quantile 0.75
    keep = p >= np.quantile(p, 0.25)
    assert keep.sum() == 4 and not keep[3]  # the least probable pose (0.048) goes
    assert_rows_of(tmp_path / "particles.star", src, keep)
    assert_rows_of(tmp_path / "rejected.star", src, ~keep)
    out = capsys.readouterr().out
    assert f"metric {P}: auto, the first known metric present" in out
    assert "higher values are more certain" in out
    table = pd.read_csv(tmp_path / "filter_summary.csv")
    assert table.set_index("output")["particles"].to_dict() == {"particles": 4, "rejected": 1}
    assert (table["metric"] == P).all() and (table["mode"] == "quantile").all()
    assert table["cut"].iloc[0] == pytest.approx(0.051189)
    assert (tmp_path / "filter_histogram.pdf").read_bytes()[:4] == b"%PDF"


def test_quantile_on_a_count_keeps_the_fewest_significant_samples(tmp_path):
    src = shared_path(*S17)
    n = particle_rows(src)[N].to_numpy(float)
    assert run_filter(src, tmp_path, "--metric", N, "--keep", "0.5", "--rejected", "yes") == 0
    keep = n <= np.quantile(n, 0.5)
    assert_rows_of(tmp_path / "particles.star", src, keep)
    kept = particle_rows(tmp_path / "particles.star")[N].astype(float)
    gone = particle_rows(tmp_path / "rejected.star")[N].astype(float)
    assert len(kept) == 9 and kept.max() < gone.min()  # lower = more certain


def test_equal_counts_at_the_cut_are_kept_together_and_said(tmp_path, capsys):
    src = shared_path(*OG6)
    n = particle_rows(src)[N].to_numpy(float)
    assert run_filter(src, tmp_path, "--metric", N) == 0
    q = np.quantile(n, 0.75)  # lower = more certain: the lowest 75%
    assert_rows_of(tmp_path / "particles.star", src, n <= q)
    kept = int((n <= q).sum())
    assert kept == 106 > 0.75 * 139  # 22 significant samples at the cut, several times
    assert f"equal values at the cut are kept together: {kept} particles, 76.3%" in capsys.readouterr().out


def test_threshold_keeps_particles_at_least_as_certain_as_the_bound(tmp_path, capsys):
    src = shared_path(*S17)
    p = particle_rows(src)[P].to_numpy(float)
    assert run_filter(src, tmp_path, "--mode", "threshold", "--bound", "0.04") == 0
    assert_rows_of(tmp_path / "particles.star", src, p >= 0.04)
    assert (p >= 0.04).sum() == 8 and not (tmp_path / "rejected.star").exists()  # rejected: not asked for
    assert f"{P} >= 0.04 (given)" in capsys.readouterr().out


@pytest.mark.slow
def test_auto_keeps_every_particle_of_a_real_refinement_and_says_why(tmp_path, capsys):
    """RELION's tutorial beta-gal refinement: both RELION metrics have one mode."""
    src = shared_path(*BETAGAL)
    for metric in (P, N):
        out = tmp_path / metric
        assert run_filter(src, out, "--mode", "auto", "--metric", metric) == 0
        assert len(particle_rows(out / "particles.star")) == 4501
        assert "no second mode in" in capsys.readouterr().out


def test_auto_does_not_keep_a_certain_minority(tmp_path, capsys):
    """A small group far more certain than the rest (as junk with strong features is in RELION's
    Class2D runs of bench/bench_filter_corpus.py): two modes, but nothing is cut."""
    src = shared_path(*OG6)
    deg, good = _uncertainty("bimodal", 139)
    star = with_column(src, tmp_path / "minority.star", **{POSE_UNCERTAINTY_DEG: np.where(good, deg * 15, deg / 15)})
    assert run_filter(star, tmp_path / "out", "--mode", "auto") == 0
    assert len(particle_rows(tmp_path / "out" / "particles.star")) == 139
    out = capsys.readouterr().out
    assert "two modes in log(" in out and "holds only 25% of the particles" in out and "nothing is cut" in out


def test_auto_on_too_few_particles_keeps_them_all(tmp_path, capsys):
    src = shared_path(*R31)
    assert run_filter(src, tmp_path, "--mode", "auto") == 0
    assert_rows_of(tmp_path / "particles.star", src, np.ones(5, bool))
    assert "5 values are too few to show two modes" in capsys.readouterr().out


def _uncertainty(kind: str, n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(degrees, True where the particle is in the well-aligned group): two groups, or one."""
    rng = np.random.default_rng(seed)
    good = np.arange(n) % 4 != 0  # every fourth particle is badly aligned
    if kind == "bimodal":
        deg = np.where(good, rng.lognormal(np.log(2.0), 0.25, n), rng.lognormal(np.log(30.0), 0.3, n))
    else:
        deg = rng.lognormal(np.log(5.0), 0.5, n)
    return deg, good


def test_auto_cuts_between_two_modes_and_keeps_a_unimodal_metric_whole(tmp_path, capsys):
    src = shared_path(*OG6)
    deg, good = _uncertainty("bimodal", 139)
    star = with_column(src, tmp_path / "bimodal.star", **{POSE_UNCERTAINTY_DEG: deg})
    assert run_filter(star, tmp_path / "bi", "--mode", "auto") == 0
    out = capsys.readouterr().out
    assert f"metric {POSE_UNCERTAINTY_DEG}: auto" in out and "two modes in log(" in out and "Ashman's D" in out
    assert_rows_of(tmp_path / "bi" / "particles.star", star, good)  # exactly the well-aligned group
    cut = pd.read_csv(tmp_path / "bi" / "filter_summary.csv")["cut"].iloc[0]
    assert deg[good].max() < cut < deg[~good].min()

    deg, _ = _uncertainty("unimodal", 139)
    star = with_column(src, tmp_path / "unimodal.star", **{POSE_UNCERTAINTY_DEG: deg})
    assert run_filter(star, tmp_path / "uni", "--mode", "auto") == 0
    assert len(particle_rows(tmp_path / "uni" / "particles.star")) == 139
    assert "no second mode in log(" in capsys.readouterr().out


def test_bins_of_an_angular_uncertainty_give_each_set_its_sigma_ang(tmp_path, capsys):
    src = shared_path(*OG6)
    deg, _ = _uncertainty("unimodal", 139)
    star = with_column(src, tmp_path / "deg.star", **{POSE_UNCERTAINTY_DEG: deg})
    assert run_filter(star, tmp_path / "out", "--mode", "bins", "--bins", "4") == 0
    sets = [particle_rows(tmp_path / "out" / f"particles_bin{k}.star") for k in range(1, 5)]
    assert [len(s) for s in sets] == [35, 35, 35, 34]
    values = [s[POSE_UNCERTAINTY_DEG].astype(float) for s in sets]
    for a, b in zip(values, values[1:]):
        assert a.max() <= b.min()  # bin 1 the most certain (lowest uncertainty)
    names = pd.concat(sets)["rlnImageName"]
    assert sorted(names) == sorted(particle_rows(star)["rlnImageName"])  # every particle in one set
    table = pd.read_csv(tmp_path / "out" / "filter_summary.csv").set_index("output")
    out = capsys.readouterr().out
    for k, v in enumerate(values, start=1):
        sigma = table.loc[f"particles_bin{k}", "sigma_ang"]
        assert sigma == pytest.approx(np.median(v))
        assert f"particles_bin{k}: {len(v)} of 139 particles" in out and f"--sigma_ang {sigma:.2f}" in out
    assert not (tmp_path / "out" / "particles.star").exists()


def test_bins_of_a_probability_say_no_sigma_ang_applies(tmp_path, capsys):
    src = shared_path(*R31)
    assert run_filter(src, tmp_path, "--mode", "bins", "--bins", "2") == 0
    first, second = (particle_rows(tmp_path / f"particles_bin{k}.star")[P].astype(float) for k in (1, 2))
    assert len(first) == 3 and len(second) == 2 and first.min() > second.max()  # higher = more certain first
    assert f"no --sigma_ang applies: {P} is not an angular uncertainty" in capsys.readouterr().out
    assert "sigma_ang" not in pd.read_csv(tmp_path / "filter_summary.csv").columns


def test_particles_without_a_value_are_rejected_and_counted(tmp_path, capsys):
    src = shared_path(*R31)
    p = particle_rows(src)[P].to_numpy(float, copy=True)
    p[2] = np.nan  # the most certain but one, now without a value
    star = with_column(src, tmp_path / "nan.star", **{P: p})
    assert run_filter(star, tmp_path / "out", "--keep", "0.5", "--rejected", "yes") == 0
    keep = p >= np.nanquantile(p, 0.5)
    assert keep.sum() == 2 and not keep[2]
    assert_rows_of(tmp_path / "out" / "particles.star", star, keep)
    assert_rows_of(tmp_path / "out" / "rejected.star", star, ~keep)
    assert f"1 particle(s) have no value of {P} (empty or NaN): rejected" in capsys.readouterr().out


def test_a_metric_that_holds_no_number_is_skipped_by_auto(tmp_path, capsys):
    src = shared_path(*R31)
    star = with_column(src, tmp_path / "empty.star", **{P: np.full(5, np.nan)})
    assert run_filter(star, tmp_path / "out", "--keep", "0.6") == 0
    out = capsys.readouterr().out
    assert f"{P} is present but holds no number: skipped" in out and f"metric {N}: auto" in out
    n = particle_rows(src)[N].to_numpy(float)
    assert_rows_of(tmp_path / "out" / "particles.star", star, n <= np.quantile(n, 0.6))


def test_a_flat_metric_has_no_second_mode():
    """Two Gaussians fit a flat sample with two separated peaks (Ashman's D near 3): the data
    themselves do not dip, so it stays one mode."""
    found = two_modes(np.linspace(0.0, 1.0, 4001))
    assert found.separation > 2 and found.cut is None and "the data do not dip" in found.why


# -- cryoSPARC ------------------------------------------------------------------------------------------
def test_offline_cs_keeps_uids_and_every_field(tmp_path, capsys):
    src_path = shared_path(*J24)
    before = digest(src_path)
    assert cryosparc.main(["filter", "--offline", "--particles", str(src_path), "--out", str(tmp_path),
                           "--keep", "0.5", "--rejected", "yes"]) == 0
    assert digest(src_path) == before
    src = Dataset.load(src_path)
    err = np.asarray(src["alignments3D/error"])
    keep = err <= np.quantile(err.astype(np.float64), 0.5)
    kept, gone = Dataset.load(tmp_path / "particles_selected.cs"), Dataset.load(tmp_path / "particles_excluded.cs")
    assert len(kept) == keep.sum() == 1010 and len(gone) == 1009
    for part, mask in ((kept, keep), (gone, ~keep)):
        assert part.descr() == src.descr()  # every field, dtype and order of the input
        assert np.array_equal(part["uid"], np.asarray(src["uid"])[mask])
        for f in src.fields():
            assert np.array_equal(np.asarray(part[f]), np.asarray(src[f])[mask]), f
    assert np.asarray(kept["alignments3D/error"]).max() < np.asarray(gone["alignments3D/error"]).min()
    assert "metric alignments3D/error: auto" in capsys.readouterr().out
    assert (tmp_path / "particles_selected.csg").exists() and (tmp_path / "cryolens_filter_summary.csv").exists()


def test_a_metric_carried_through_cryolens_convert_is_found(tmp_path):
    src = shared_path(*R31)
    assert cryolens(["convert", str(src), str(tmp_path / "r31.cs")]) == 0
    assert cryosparc.main(["filter", "--offline", "--particles", str(tmp_path / "r31.cs"), "--out",
                           str(tmp_path / "out")]) == 0
    kept = Dataset.load(tmp_path / "out" / "particles_selected.cs")
    assert sorted(np.asarray(kept[f"rln/{P}"]).tolist()) == [0.051189, 0.066879, 0.144184, 0.166997]


def test_the_cryosparc_external_job_returns_the_lower_error_half(standin):
    from cryosparc_standin import client, run

    state, url = standin
    assert run(url, "filter", "--particles", "J1.particles", "--metric", "alignments2D/error", "--direction",
               "lower", "--keep", "0.5") == 0
    job = state.jobs["J2"]
    assert job.status == "completed" and job.title.startswith("cryolens filter")
    src = Dataset.load(shared_path(*J2))
    back = client(url).find_job("P1", "J2").load_output("particles_selected")
    err = np.asarray(src["alignments2D/error"])
    keep = err <= np.quantile(err.astype(np.float64), 0.5)
    assert set(np.asarray(back["uid"]).tolist()) == set(np.asarray(src["uid"])[keep].tolist())
    assert sorted(back.fields()) == sorted(src.fields())


# -- RELION External job under the real pipeliner ------------------------------------------------------
def run_external(project, data, **params) -> tuple[Path, int]:
    """``cryolens-relion-filter`` as an External job, added and run by the real relion_pipeliner."""
    from relion_helpers import add_and_run_external, form_params

    return add_and_run_external(project, {"fn_exe": EXE, "in_part": str(data), **form_params(**params),
                                          "nr_threads": "1"})


@pytest.mark.slow
@pytest.mark.relion
def test_bins_run_from_the_pipeliner_and_declare_each_set(project):
    from relion_helpers import pipeline_nodes

    proj, data = project
    job_dir, status = run_external(proj, data, mode="bins", bins=3, metric=N)
    assert status == 2, (job_dir / "run.err").read_text()
    rel = job_dir.relative_to(proj)
    nodes = pipeline_nodes(proj)
    assert all(nodes[f"{rel}/particles_bin{k}.star"] == 3 for k in (1, 2, 3))
    assert nodes[f"{rel}/filter_histogram.pdf"] == 13
    full = particle_rows(proj / data)
    sets = [particle_rows(job_dir / f"particles_bin{k}.star") for k in (1, 2, 3)]
    assert [len(s) for s in sets] == [100, 100, 100] and len(full) == 300
    assert all(list(s.columns) == list(full.columns) for s in sets)
    assert sets[0][N].astype(float).max() <= sets[2][N].astype(float).min()
    assert f"metric {N}: given" in (job_dir / "run.out").read_text()


@pytest.mark.slow
@pytest.mark.relion
def test_a_bound_outside_the_data_fails_the_relion_job_in_one_line(project):
    from relion_helpers import failed_without_outputs

    proj, data = project
    job_dir, status = run_external(proj, data, mode="threshold", bound=2)
    err = failed_without_outputs(proj, job_dir, status)
    assert f"ERROR: --bound 2 is outside the values of {P} in {data}" in err


# -- bad input: one line naming the file or the parameter, inputs untouched ---------------------------------
@pytest.mark.parametrize("data, args, message", [
    (R31, ("--metric", "rlnFoo"), "no column 'rlnFoo' in {src} (numeric columns: "),
    (R31, ("--metric", "rlnCtfFigureOfMerit"), "say which values are more certain with --direction higher"),
    (R31, ("--mode", "bins", "--bins", "6"), f"--bins 6: more sets than the 5 particles with a value of {P} in {{src}}"),
    (R31, ("--mode", "threshold", "--bound", "0.5"), f"--bound 0.5 is outside the values of {P} in {{src}} "
                                                     "[0.048138, 0.166997]"),
    (R31, ("--mode", "threshold"), "--mode threshold needs --bound"),
    (ONE, ("--mode", "auto"), f"--mode auto needs at least 2 particles with a value of {P}, {{src}} has 1"),
    (ONE, ("--mode", "bins", "--bins", "2"), "--mode bins needs at least 2 particles"),
])
def test_bad_input_is_one_line_naming_the_file_or_parameter(tmp_path, capsys, data, args, message):
    src = shared_path(*data)
    assert run_filter(src, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message.format(src=src) in err and "Traceback" not in err
    if "rlnFoo" in args:
        assert "known metrics: cryolensPoseUncertaintyDeg, rlnMaxValueProbDistribution" in err
    assert not (tmp_path / "out" / "particles.star").exists()


def test_no_known_metric_names_the_file_and_what_was_looked_for(tmp_path, capsys):
    src = shared_path(*J2)  # a 2D classification: alignments2D only
    assert cryosparc.main(["filter", "--offline", "--particles", str(src), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (f"{src}: no pose-uncertainty metric: looked for {POSE_UNCERTAINTY_DEG}, {P}, {N}, alignments3D/error"
            in err)
    assert not list(tmp_path.glob("*.cs"))


def test_a_metric_with_no_number_names_the_file(tmp_path, capsys):
    star = with_column(shared_path(*R31), tmp_path / "empty.star", **{P: np.full(5, np.nan)})
    assert run_filter(star, tmp_path / "out", "--metric", P) == 2
    assert f"{star}: column {P} holds no number" in capsys.readouterr().err
