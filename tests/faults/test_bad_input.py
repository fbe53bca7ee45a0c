"""Bad input at the three front ends: one line naming the file or the parameter, the bad-input exit
status, inputs byte-identical afterwards and no output left or declared (issue 18 defects 5, 6, 9,
11, 12, 13, 15, 16).

Every case runs the entry in-process: ``cryolens`` (cli.main), ``cryolens-relion-<job>``
(relion_ext.external.main) and ``cryolens-cryosparc <job> --offline`` (cryosparc_ext.external.main).
Real files from ../shared/data are read in place; corrupted variants are made in a temporary folder.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from conftest import SHARED_DATA
from cryolens.core.errors import ExitCode

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REAL = {  # placeholder -> a real file under ../shared/data, read in place
    "star": "real-particles/relion31.star",
    "cs": "cryosparc/cryosparc_P12_J24_001_particles.cs",
    "map": "maps/EMD-3197.map",
    "stack": "maps/trpv1_small_stack.mrcs",
}


# -- the corrupted variants -----------------------------------------------------------------------
def _corrupt_map(src: Path, dst: Path, value: float) -> None:
    with mrcfile.open(src, permissive=True) as m:
        data, vox = np.array(m.data, dtype=np.float32), float(m.voxel_size.x)
    data[tuple(s // 2 for s in data.shape)] = value  # one voxel
    with mrcfile.new(dst) as m:
        m.set_data(data)
        m.voxel_size = vox


def _class2d_with_a_nan_class(d: Path, stack: Path) -> Path:
    """A RELION Class2D iteration (model star + class stack) whose class 2 average holds a NaN."""
    with mrcfile.open(stack, permissive=True) as m:
        images = np.array(m.data[:3], dtype=np.float32)
    images[1, 5, 5] = np.nan
    job = d / "Class2D" / "job001"
    job.mkdir(parents=True)
    with mrcfile.new(job / "run_it001_classes.mrcs") as m:
        m.set_data(images)
        m.voxel_size = 4.88
    rows = "\n".join(f"{k:06d}@Class2D/job001/run_it001_classes.mrcs 0.333 20.0" for k in (1, 2, 3))
    (job / "run_it001_model.star").write_text(
        "\n# version 30001\n\ndata_model_general\n\n_rlnReferenceDimensionality 2\n_rlnPixelSize 4.88\n\n"
        "# version 30001\n\ndata_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n"
        f"_rlnEstimatedResolution #3\n{rows}\n")
    return job / "run_it001_model.star"


def _cs_with_text_defocus(src: Path, dst: Path) -> None:
    from cryosparc.dataset import Dataset

    d = Dataset.load(src)
    descr = [tuple(f) if f[0] != "ctf/df1_A" else ("ctf/df1_A", "O") for f in d.descr()]
    out = Dataset.allocate(len(d), descr)
    for f in descr:
        out[f[0]] = np.asarray(d[f[0]]) if f[0] != "ctf/df1_A" else \
            np.array([f"{v:.0f} A" for v in np.asarray(d["ctf/df1_A"])], dtype=object)
    out.save(dst)


def _templates(dst: Path, stack: str, n: int) -> None:
    from cryosparc.dataset import Dataset

    t = Dataset.allocate(n, [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                             ("blob/psize_A", "<f4"), ("blob/res_A", "<f4")])
    t["blob/path"] = np.array([stack] * n, dtype=object)
    t["blob/idx"] = np.arange(n)
    t["blob/shape"] = 48
    t["blob/psize_A"] = 4.88
    t["blob/res_A"] = 20.0
    t.save(dst)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path] | None:
    """Placeholder -> path: the real files in place and the corrupted variants (None without ../shared)."""
    if not SHARED_DATA.is_dir():
        return None
    real = {k: SHARED_DATA / v for k, v in REAL.items()}
    if not all(p.exists() for p in real.values()):
        return None
    d = tmp_path_factory.mktemp("bad_inputs")
    out = dict(real, dir=d)
    _corrupt_map(SHARED_DATA / "maps" / "trpv1_volume.mrc", d / "nan_voxel.mrc", np.nan)
    _corrupt_map(SHARED_DATA / "maps" / "trpv1_volume.mrc", d / "inf_voxel.mrc", np.inf)
    out.update(nan_map=d / "nan_voxel.mrc", inf_map=d / "inf_voxel.mrc")
    with mrcfile.open(real["stack"], permissive=True) as m:
        images = np.array(m.data, dtype=np.float32)
    images[3, 10, 10] = np.inf
    with mrcfile.new(d / "inf_classes.mrcs") as m:
        m.set_data(images)
        m.voxel_size = 4.88
    out["inf_stack"] = d / "inf_classes.mrcs"
    out["c2d_nan"] = _class2d_with_a_nan_class(d, real["stack"])
    text = real["star"].read_text()
    (d / "no_optics.star").write_text("\n# version 30001\n\n" + text[text.index("data_particles"):])
    out["noopt"] = d / "no_optics.star"
    _cs_with_text_defocus(real["cs"], d / "text_defocus.cs")
    out["strdf"] = d / "text_defocus.cs"
    _templates(d / "J3_class_averages.cs", "inf_classes.mrcs", 10)
    out["tpl_inf"] = d / "J3_class_averages.cs"
    return out


def _digest(paths) -> dict[str, str]:
    files = [q for p in paths for q in (sorted(p.rglob("*")) if p.is_dir() else [p]) if q.is_file()]
    return {str(q): hashlib.sha256(q.read_bytes()).hexdigest() for q in files}


# -- the cases --------------------------------------------------------------------------------------
# (front end, argv with {placeholders}, what the one line must name). {out}: an output folder or file
# under tmp; {job}: the RELION job directory.
SHELL, RELION, CRYOSPARC = "cryolens", "relion", "cryosparc"
CASES = {
    # parameters of commands (defects 6, 9, 15): checked before anything is written
    "simulate-snr-negative": (SHELL, "simulate {out} --snr -1", ["--snr", "(0, inf)"]),
    "simulate-snr-nan": (SHELL, "simulate {out} --snr nan", ["--snr", "finite"]),
    "simulate-snr-inf": (SHELL, "simulate {out} --snr inf", ["--snr", "finite"]),
    "simulate-n-zero": (SHELL, "simulate {out} --n 0", ["--n"]),
    "simulate-n-fraction": (SHELL, "simulate {out} --n 1.5", ["--n", "int"]),
    "simulate-box-7": (SHELL, "simulate {out} --box 7", ["--box", "[8, inf)"]),
    "simulate-junk-2": (SHELL, "simulate {out} --junk 2", ["--junk", "[0, 1]"]),
    "simulate-pixel-size-0": (SHELL, "simulate {out} --pixel-size 0", ["--pixel-size"]),
    "simulate-species-0": (SHELL, "simulate {out} --species 0", ["--species"]),
    "simulate-noise-choice": (SHELL, "simulate {out} --noise pink", ["--noise", "realistic"]),
    "simulate-class-route-choice": (SHELL, "simulate {out} --class-route all", ["--class-route"]),
    "library-pixel-size-negative": (SHELL, "library build {out}/lib.npz --maps {map} --pixel-size -3",
                                    ["--pixel-size", "-3"]),
    "library-views-0": (SHELL, "library build {out}/lib.npz --maps {map} --views 0", ["--views"]),
    "library-box-4": (SHELL, "library build {out}/lib.npz --maps {map} --box 4", ["--box"]),
    "library-resolution-negative": (SHELL, "library build {out}/lib.npz --maps {map} --resolution -1",
                                    ["--resolution"]),
    "library-phantoms-negative": (SHELL, "library build {out}/lib.npz --phantoms -1", ["--phantoms"]),
    "info-batch-size-0": (SHELL, "info {star} --stats --batch-size 0", ["--batch-size"]),
    "convert-relion-version": (SHELL, "convert {star} {out}/o.star --relion-version 2.0", ["--relion-version"]),
    # maps and images that are not finite (defects 5, 12)
    "library-nan-voxel": (SHELL, "library build {out}/lib.npz --maps {nan_map} --no-embed", ["nan_voxel.mrc", "NaN"]),
    "library-inf-voxel": (SHELL, "library build {out}/lib.npz --maps {inf_map} --no-embed", ["inf_voxel.mrc"]),
    "rank-inf-bare-stack": (SHELL, "run rank --classes-in {inf_stack} --out {out}", ["inf_classes.mrcs", "class 4"]),
    "rank-nan-class2d": (SHELL, "run rank --classes-in {c2d_nan} --out {out}", ["run_it001_classes.mrcs", "class 2"]),
    # a .cs number field stored as text (defect 16)
    "convert-text-defocus": (SHELL, "convert {strdf} {out}/o.star", ["text_defocus.cs", "ctf/df1_A"]),
    # job parameters from the shell
    "run-select-quantile": (SHELL, "run select --particles {star} --out {out} --column rlnDefocusU --min-quantile 2",
                            ["--min-quantile", "[0, 1]"]),
    "run-select-min-value-inf": (SHELL, "run select --particles {star} --out {out} --column rlnDefocusU "
                                        "--min-value inf", ["--min-value", "finite"]),
    "run-rank-threshold": (SHELL, "run rank --classes-in {stack} --out {out} --threshold 2", ["--threshold"]),
    "run-rank-pixel-size": (SHELL, "run rank --classes-in {stack} --out {out} --pixel-size 0", ["--pixel-size"]),
    "run-identify-top-k": (SHELL, "run identify --classes-in {stack} --out {out} --library {dir}/none.npz --top-k 0", ["--top-k"]),
    # the RELION entries
    "relion-select-no-optics": (RELION, "select --o {job} --in_parts {noopt} --classes 1 --j 1",
                                ["no_optics.star", "data_optics", "pixel size"]),
    "relion-rank-inf-stack": (RELION, "rank --o {job} --in_parts {inf_stack} --j 1", ["inf_classes.mrcs"]),
    "relion-rank-nan-class2d": (RELION, "rank --o {job} --in_parts {c2d_nan} --j 1", ["run_it001_classes.mrcs"]),
    "relion-select-quantile": (RELION, "select --o {job} --in_parts {star} --column rlnDefocusU --min_quantile 2 "
                                       "--j 1", ["--min-quantile"]),
    "relion-select-max-splits": (RELION, "select --o {job} --in_parts {star} --split_by rlnOpticsGroup "
                                         "--max_splits 0 --j 1", ["--max-splits"]),
    "relion-rank-threshold-nan": (RELION, "rank --o {job} --in_parts {stack} --threshold nan --j 1",
                                  ["--threshold", "finite"]),
    "relion-rank-pixel-size": (RELION, "rank --o {job} --in_parts {stack} --pixel_size -1 --j 1", ["--pixel-size"]),
    "relion-identify-top-k": (RELION, "identify --o {job} --in_parts {stack} --library {dir}/none.npz --top_k 0 --j 1", ["--top-k"]),
    "relion-select-missing": (RELION, "select --o {job} --in_parts {dir}/missing.star --classes 1 --j 1",
                              ["missing.star", "not found"]),
    "relion-select-a-cs": (RELION, "select --o {job} --in_parts {cs} --classes 1 --j 1",
                           ["cryosparc_P12_J24_001_particles.cs"]),
    # the cryoSPARC entry, offline
    "cryosparc-select-text-defocus": (CRYOSPARC, "select --offline --particles {strdf} --out {out} --classes 1",
                                      ["text_defocus.cs", "ctf/df1_A"]),
    "cryosparc-rank-inf-templates": (CRYOSPARC, "rank --offline --classes-in {tpl_inf} --project-dir {dir} "
                                                "--out {out}", ["inf_classes.mrcs", "class 4"]),
    "cryosparc-rank-threshold": (CRYOSPARC, "rank --offline --classes-in {tpl_inf} --out {out} --threshold -1",
                                 ["--threshold"]),
    "cryosparc-select-quantile": (CRYOSPARC, "select --offline --particles {cs} --out {out} --column ctf/df1_A "
                                             "--min-quantile 2", ["--min-quantile"]),
    "cryosparc-select-max-value-nan": (CRYOSPARC, "select --offline --particles {cs} --out {out} --column ctf/df1_A "
                                                  "--max-value nan", ["--max-value", "finite"]),
    "cryosparc-identify-top-k": (CRYOSPARC, "identify --offline --classes-in {tpl_inf} --out {out} --library {dir}/none.npz --top-k 0",
                                 ["--top-k"]),
    "cryosparc-select-missing": (CRYOSPARC, "select --offline --particles {dir}/missing.cs --out {out} --classes 1",
                                 ["missing.cs", "not found"]),
}


def _run(front: str, argv: list[str]) -> int:
    if front == SHELL:
        from cryolens.cli import main

        return main(argv)
    if front == RELION:
        from cryolens.relion_ext.external import main

        return main(["--job", *argv])
    from cryolens.cryosparc_ext.external import main

    return main(argv)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(case, files, tmp_path, monkeypatch, capsys):
    front, template, needles = CASES[case]
    if files is None and ("{" in template.replace("{out}", "").replace("{job}", "")):
        pytest.skip(f"real test data not available: {SHARED_DATA} (../shared/data is absent on a user's clone)")
    monkeypatch.chdir(tmp_path)  # RELION runs in the project directory
    out, job = tmp_path / "out", tmp_path / "External" / "job009"
    argv = [a.format(out=out, job=f"{job}/", **(files or {})) for a in template.split()]
    inputs = [p for p in (files or {}).values()]
    before = _digest(inputs)

    rc = _run(front, argv)

    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == ExitCode.BAD_INPUT, err
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert _digest(inputs) == before, "an input changed"
    if front == RELION:  # the pipeliner is told, and nothing is declared or left
        assert sorted(p.name for p in job.iterdir()) == ["RELION_JOB_EXIT_FAILURE"]
    else:
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], "outputs left"


def test_enough_cases():
    assert len(CASES) >= 40 and {c[0] for c in CASES.values()} == {SHELL, RELION, CRYOSPARC}


# -- what bad input should still give ----------------------------------------------------------------
def test_info_stats_counts_non_finite_pixels_and_reports_the_finite_ones(files, tmp_path, capsys):
    """Defect 13: a particle stack with NaN and inf pixels: counted, statistics over the finite ones."""
    if files is None:
        pytest.skip(f"real test data not available: {SHARED_DATA}")
    from cryolens.cli import main

    src = files["star"]
    with mrcfile.open(src.parent / "relion31.mrcs", permissive=True) as m:
        images = np.array(m.data, dtype=np.float32)
    images[0, 0, :3] = np.nan
    images[4, 7, 7] = -np.inf
    with mrcfile.new(tmp_path / "relion31.mrcs") as m:
        m.set_data(images)
    (tmp_path / "p.star").write_text(src.read_text())
    assert main(["info", str(tmp_path / "p.star"), "--stats", "--project-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "non-finite pixels: 4 of 327680" in out
    fin = images[np.isfinite(images)].astype(np.float64)
    assert f"mean {fin.mean():.4g}" in out and f"min {fin.min():.4g}" in out and "mean nan" not in out


def test_a_particle_star_without_optics_becomes_a_valid_31_file(files, tmp_path, monkeypatch, capsys):
    """Defect 11, as RELION 3.1 treats it: a file without data_optics whose particles give their
    optics (RELION 3.0 style) is converted on reading, and the External job writes 3.1."""
    if files is None:
        pytest.skip(f"real test data not available: {SHARED_DATA}")
    from cryolens.relion_ext.external import main
    from cryolens.relion_ext.star import header_version, read_blocks, read_particles

    from cryolens.relion_ext.star import write_blocks

    particles = read_blocks(files["star"])["particles"].assign(rlnImagePixelSize=2.806, rlnVoltage=300.0)
    write_blocks(tmp_path / "old.star", {"particles": particles}, version=None)
    monkeypatch.chdir(tmp_path)
    assert main(["--job", "select", "--o", "External/job002/", "--in_parts", "old.star", "--classes", "1",
                 "--j", "1"]) == 0, capsys.readouterr().err
    out = tmp_path / "External" / "job002" / "particles.star"
    blocks = read_blocks(out)
    assert header_version(out) == 30001 and set(blocks) == {"optics", "particles"}
    optics = blocks["optics"]
    optics = optics if not isinstance(optics, dict) else {k: [v] for k, v in optics.items()}
    assert list(optics["rlnImagePixelSize"]) == [2.806] and list(optics["rlnVoltage"]) == [300]
    ps, orig = read_particles(out), read_particles(tmp_path / "old.star")
    assert ps.table["image_stack"].tolist() == orig.table["image_stack"].tolist()
    np.testing.assert_allclose(ps.table["shift_x"], orig.table["shift_x"])


def test_an_emptied_class_all_nan_is_blank_not_bad_input(files, tmp_path, capsys):
    """The finite rule's one exception, the same in every reader: an average with no finite pixel is
    RELION's average of a class that lost its particles; rank reads it and scores it 0. Some NaN
    pixels among finite ones is corruption (the cases above)."""
    if files is None:
        pytest.skip(f"real test data not available: {SHARED_DATA}")
    import pandas as pd

    from cryolens.cli import main

    with mrcfile.open(files["stack"], permissive=True) as m:
        images = np.array(m.data, dtype=np.float32)
    images[2] = np.nan
    with mrcfile.new(tmp_path / "emptied.mrcs") as m:
        m.set_data(images)
        m.voxel_size = 4.88
    assert main(["run", "rank", "--classes-in", str(tmp_path / "emptied.mrcs"), "--out", str(tmp_path / "out"),
                 "--gallery", "no"]) == 0, capsys.readouterr().err
    scores = pd.read_csv(tmp_path / "out" / "rank_scores.csv")
    assert scores.loc[2, "score"] == 0 and scores.loc[2, "selected"] == 0
