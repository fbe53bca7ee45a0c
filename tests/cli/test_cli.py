"""The cryolens command: info/convert/example work; bad input gives one line naming the file,
no traceback, exit code 2, and nothing written or changed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryolens.cli import main
from cryolens.relion_ext.star import read_particles, write_particles


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryolens", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example")
    assert main(["example", str(out), "--n", "40", "--box", "32"]) == 0
    return out


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.slow
def test_info_convert_round_trip(example, tmp_path):
    res = cli("info", str(example / "particles.star"), "--stats")
    assert res.returncode == 0 and "40 of 32x32 px" in res.stdout and "pixel statistics" in res.stdout
    assert cli("convert", str(example / "particles.star"), str(tmp_path / "p.cs")).returncode == 0
    res = cli("convert", str(tmp_path / "p.cs"), str(tmp_path / "back.star"), "--project-dir", str(example))
    assert res.returncode == 0, res.stderr
    a, b = read_particles(example / "particles.star"), read_particles(tmp_path / "back.star", root=example)
    assert a.image_keys().tolist() == b.image_keys().tolist()
    for col in ("defocus_u", "defocus_v", "rot", "tilt", "psi", "shift_x", "shift_y", "pixel_size"):
        np.testing.assert_allclose(a.table[col], b.table[col], rtol=1e-5, atol=1e-3)
    res = cli("info", str(example / "particles.mrcs"))
    assert "40 x 32 x 32" in res.stdout


@pytest.mark.slow
def test_missing_file(tmp_path):
    _one_line_error(cli("info", str(tmp_path / "nothere.star")), "nothere.star", "file not found")


@pytest.mark.slow
def test_missing_column(tmp_path):
    p = tmp_path / "cols.star"
    p.write_text("data_particles\n\nloop_\n_rlnDefocusU #1\n10000\n")
    before = _snapshot(tmp_path)
    _one_line_error(cli("convert", str(p), str(tmp_path / "o.cs")), "cols.star", "missing column rlnImageName")
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_nan_values(example, tmp_path):
    text = (example / "particles.star").read_text().splitlines()
    rows = [i for i, l in enumerate(text) if "@particles.mrcs" in l]
    cols = text[rows[0]].split("\t")
    cols[[i for i, c in enumerate(cols) if c.startswith("1") and "." in c][0]] = "nan"
    text[rows[0]] = "\t".join(cols)
    p = tmp_path / "nan.star"
    p.write_text("\n".join(text) + "\n")
    _one_line_error(cli("info", str(p)), "nan.star", "non-finite")


@pytest.mark.slow
def test_stack_shorter_than_the_star_claims(example, tmp_path):
    ps = read_particles(example / "particles.star")
    ps.table.loc[0, "image_index"] = 99  # image 100 of a 40-image stack
    write_particles(ps, example / "short.star")
    res = cli("info", str(example / "short.star"))
    assert "NOT READABLE" in res.stdout and "particles.mrcs" in res.stdout and "100" in res.stdout


@pytest.mark.slow
def test_mixed_box_sizes(example):
    with mrcfile.new(example / "big.mrcs", overwrite=True) as m:
        m.set_data(np.zeros((2, 48, 48), np.float32))
    ps = read_particles(example / "particles.star")
    ps.table.loc[0, "image_stack"] = "big.mrcs"
    ps.table.loc[0, "image_index"] = 0
    write_particles(ps, example / "mixed.star")
    res = cli("info", str(example / "mixed.star"))
    assert "NOT READABLE" in res.stdout and "box" in res.stdout.lower()


@pytest.mark.slow
def test_truncated_mrc(example, tmp_path):
    data = (example / "particles.mrcs").read_bytes()
    (tmp_path / "cut.mrcs").write_bytes(data[: len(data) // 2])
    _one_line_error(cli("info", str(tmp_path / "cut.mrcs")), "cut.mrcs", "truncated")


@pytest.mark.slow
def test_path_outside_the_project(example):
    ps = read_particles(example / "particles.star")
    ps.table["image_stack"] = "../../elsewhere/particles.mrcs"
    write_particles(ps, example / "outside.star")
    res = cli("info", str(example / "outside.star"), "--project-dir", str(example))
    assert "NOT READABLE" in res.stdout and "outside the project directory" in res.stdout


@pytest.mark.slow
def test_convert_refuses_to_overwrite_its_input_and_bad_output_names(example, tmp_path):
    star = example / "particles.star"
    before = star.read_bytes()
    _one_line_error(cli("convert", str(star), str(star)), "refusing to overwrite the input")
    _one_line_error(cli("convert", str(star), str(tmp_path / "out.txt")), "out.txt", "unknown file type")
    assert star.read_bytes() == before and not (tmp_path / "out.txt").exists()


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    res = cli("--debug", "info", str(tmp_path / "nothere.star"))
    assert "Traceback" in res.stderr and "file not found" in res.stderr


@pytest.mark.slow
def test_cuda_request_without_gpu_is_a_user_error(example):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _one_line_error(cli("info", str(example / "particles.star"), "--device", "cuda"), "no CUDA GPU")


@pytest.mark.slow
def test_run_select_from_the_shell(example, tmp_path):
    res = cli("run", "select", "--particles", str(example / "particles.star"), "--out", str(tmp_path / "sel"),
              "--column", "rlnDefocusU", "--min_quantile", "0.5")
    assert res.returncode == 0, res.stderr
    assert len(read_particles(tmp_path / "sel" / "particles.star", root=example)) == 20


@pytest.mark.slow
@pytest.mark.relion
def test_run_writes_backup_selection_through_the_relion_writer(project, tmp_path):
    """`cryolens run select --classes` and `cryolens run rank` on a real Class2D run write RELION's
    backup_selection.star, as their RELION External jobs do."""
    from cryolens.relion_ext.star import read_blocks

    proj, data = project
    sel = tmp_path / "sel"
    assert main(["run", "select", "--classes-in", str(proj / data), "--classes", "1-2", "--out", str(sel)]) == 0
    assert read_blocks(sel / "backup_selection.star")[""]["rlnSelected"].tolist() == [1, 1, 0, 0]
    assert (sel / "class_averages.star").exists() and (sel / "selection.csv").exists()
    rank = tmp_path / "rank"
    optimiser = str(proj / data).replace("_data.star", "_optimiser.star")
    assert main(["run", "rank", "--classes-in", optimiser, "--select", "fraction", "--fraction", "0.5",
                 "--out", str(rank)]) == 0
    chosen = read_blocks(rank / "backup_selection.star")[""]["rlnSelected"].tolist()
    scores = pd.read_csv(rank / "rank_scores.csv")
    assert chosen == scores["selected"].tolist() and sum(chosen) == 2


def test_help_for_run_and_for_a_job(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0 and "identify" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["run", "identify", "--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    assert "--top-k N" in text and "--top_k" not in text and "PARAM__" not in text
    assert "{embedding,correlation,combined}" in text and "--gallery [yes|no]" in text
    assert "(default: build one from maps)" in " ".join(text.split()) and "(default: from the file)" in text and "(default '')" not in text
    assert "--min-conf X" in text and "min-confidence" not in text and "min_confidence" not in text  # old name: hidden


def test_both_spellings_of_a_parameter(example, tmp_path):
    for flag in ("--min_quantile", "--min-quantile"):
        out = tmp_path / flag.strip("-")
        assert main(["run", "select", "--particles", str(example / "particles.star"), "--out", str(out),
                     "--column", "rlnDefocusU", flag, "0.5"]) == 0
        assert len(read_particles(out / "particles.star", root=example)) == 20
