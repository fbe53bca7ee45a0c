"""Faults at the three entries (issue 18): signals, a failed or interrupted write, a re-run into the
same folder, a failure handler that cannot write, OS errors, bad --o / --j, and abort latency.

Every case ends the same way: one line, an exit status from the ExitCode table, the RELION exit
file when one can be written, and no outputs nor hidden temporary files. The signal cases run the
real entry points as subprocesses; a small wrapper (``_slow_writer``) holds the run inside its
writing step so that the signal lands there, where a half result set could be left.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryolens.core import signals
from cryolens.core.atomic import MANIFEST, atomic_write_text, clear_outputs, staged
from cryolens.core.errors import CryolensError, ExitCode, Interrupted, JobAborted, exit_code, user_error

PY = sys.executable
EXITS = ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED")


# -- small inputs ----------------------------------------------------------------------------------
def class_stack(path: Path, k: int = 6, box: int = 32) -> Path:
    """A bare stack of blob-like class averages (what rank takes without RELION)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:box, :box] - box // 2
    ims = [np.exp(-(x ** 2 + y ** 2) / (2 * (2 + i) ** 2)) + 0.1 * rng.standard_normal((box, box)) for i in range(k)]
    with mrcfile.new(path) as m:
        m.set_data(np.stack(ims).astype(np.float32))
        m.voxel_size = 3.0
    return path


def particle_star(path: Path, n: int = 40) -> Path:
    from relion_helpers import pose_table

    from cryolens.relion_ext.star import write_particles

    ps = pose_table(n, seed=3)
    ps.table["optics_group"] = 1 + np.arange(n) % 2
    write_particles(ps, path)
    return path


def leftovers(folder: Path) -> list[str]:
    """Every name under ``folder``, hidden ones included (a staging folder, a .tmp file)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def relion(argv: list[str], job: str = "rank") -> int:
    from cryolens.relion_ext.external import main

    return main(["--job", job, *argv])


def shell(argv: list[str]) -> int:
    from cryolens.cli import main

    return main(argv)


# -- the mechanisms ------------------------------------------------------------------------------------
def test_the_first_signal_raises_and_later_ones_wait_for_the_clean_up():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in the background (nohup, CI)
    with signals.raise_on_signals():
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at once: never reached
        os.kill(os.getpid(), signal.SIGINT)  # during clean-up: only noted
        time.sleep(0.05)
        assert signals.received() == signal.SIGTERM
    assert exit_code(info.value) == ExitCode.TERMINATED == 143
    assert exit_code(Interrupted(signal.SIGINT)) == ExitCode.INTERRUPTED == 130
    assert signal.getsignal(signal.SIGINT) == before  # restored


def test_os_errors_are_one_line_naming_the_file_and_bad_input():
    err = user_error(OSError(errno.ENOSPC, "No space left on device", "out/particles.star"))
    assert str(err) == "out/particles.star: no space left on the device"
    assert exit_code(PermissionError(errno.EACCES, "Permission denied", "x")) == ExitCode.BAD_INPUT
    assert user_error(OSError("200 requested and 59 written")) is None  # names no file: not explainable
    assert exit_code(AttributeError("'Stream' object has no attribute 'pos'")) == ExitCode.FAILED


def test_staged_outputs_move_in_together_or_not_at_all(tmp_path):
    (tmp_path / "b.pdf").mkdir()  # a folder where an output goes
    with pytest.raises(CryolensError, match="b.pdf: is a directory"):
        with staged(tmp_path) as stage:
            atomic_write_text(stage.dir / "a.star", "a")
            atomic_write_text(stage.dir / "b.pdf", "b")
            stage.commit()
    assert leftovers(tmp_path) == ["b.pdf"]
    with staged(tmp_path) as stage:
        atomic_write_text(stage.dir / "a.star", "a")
        assert stage.commit() == [tmp_path / "a.star"]
    assert leftovers(tmp_path) == [MANIFEST, "a.star", "b.pdf"]


def test_a_failure_while_staging_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged(tmp_path) as stage:
            atomic_write_text(stage.dir / "a.star", "a")
            raise KeyboardInterrupt
    assert leftovers(tmp_path) == []


def test_clear_outputs_removes_what_the_job_owns_and_nothing_else(tmp_path):
    for name in ("particles.star", "rejected.star", "particles_1.star", "notes.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / MANIFEST).write_text("particles_1.star\n../outside.txt\n")
    (tmp_path.parent / "outside.txt").write_text("keep")
    (tmp_path / "rank_gallery.pdf").mkdir()
    with pytest.raises(CryolensError, match="rank_gallery.pdf: is a directory"):
        clear_outputs(tmp_path, ["particles.star", "rank_gallery.pdf"])
    assert (tmp_path / "particles.star").exists()  # refused before anything was removed
    (tmp_path / "rank_gallery.pdf").rmdir()
    clear_outputs(tmp_path, ["particles.star", "rejected.star"])
    assert leftovers(tmp_path) == ["notes.txt"] and (tmp_path.parent / "outside.txt").exists()


def test_clear_outputs_never_removes_an_input(tmp_path):
    star = tmp_path / "particles.star"
    star.write_text("input")
    with pytest.raises(CryolensError, match="an input is in the output folder"):
        clear_outputs(tmp_path, ["particles.star"], inputs=[str(star)])
    assert star.read_text() == "input"


def test_a_full_disk_in_a_writer_library_names_the_final_file(tmp_path, monkeypatch):
    import shutil

    from cryolens.core.atomic import atomic_path

    def full(_):
        return shutil._ntuple_diskusage(100, 100, 0)

    monkeypatch.setattr(shutil, "disk_usage", full)
    with pytest.raises(CryolensError) as info:
        with atomic_path(tmp_path / "rank_model.star"):
            raise AttributeError("'Stream' object has no attribute 'pos'")  # what a library said on ENOSPC
    assert str(info.value) == f"{tmp_path / 'rank_model.star'}: no space left on the device"
    assert leftovers(tmp_path) == []


def test_threads_are_capped_to_the_cpus_available():
    from cryolens.core.runtime import available_cpus, cap_threads

    notes = []
    assert cap_threads(100000, notes.append) == available_cpus()
    assert "100000 threads asked for" in notes[0]
    assert cap_threads(0) == 1


# -- the RELION entry, in process ------------------------------------------------------------------
def test_relion_o_without_a_value_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert relion(["--in_parts", "x.mrcs", "--o"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "--o: expected one argument" in err and "Traceback" not in err
    assert relion(["--o"]) == ExitCode.BAD_INPUT
    assert leftovers(tmp_path) == []


def test_relion_j_beyond_the_cpus_is_capped_with_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    class_stack(tmp_path / "cls.mrcs")
    assert relion(["--o", "External/job007/", "--in_parts", "cls.mrcs", "--j", "100000", "--gallery", "no"]) == 0
    out = capsys.readouterr().out
    assert "note: 100000 threads asked for, using" in out
    assert (tmp_path / "External/job007/RELION_JOB_EXIT_SUCCESS").exists()


def test_relion_rerun_clears_the_earlier_runs_outputs_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    particle_star(tmp_path / "parts.star")
    job = tmp_path / "External/job009"
    base = ["--o", "External/job009/", "--in_parts", "parts.star", "--column", "rlnDefocusU"]
    assert relion(base + ["--min_quantile", "0.5", "--write_rejected", "yes"], "select") == 0
    assert (job / "rejected.star").exists()
    (job / "my_notes.txt").write_text("mine")
    assert relion(base + ["--min_quantile", "0.25"], "select") == 0
    assert not (job / "rejected.star").exists()  # a stale rejected.star beside the new particles.star
    assert (job / "particles.star").exists() and (job / "my_notes.txt").read_text() == "mine"
    nodes = (job / "RELION_OUTPUT_NODES.star").read_text()
    assert "rejected" not in nodes and "External/job009/particles.star" in nodes


def test_relion_rerun_clears_split_sets_it_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    particle_star(tmp_path / "parts.star")
    job = tmp_path / "External/job010"
    assert relion(["--o", "External/job010/", "--in_parts", "parts.star", "--split_by", "rlnOpticsGroup"],
                  "select") == 0
    split = sorted(p.name for p in job.glob("particles_*.star"))
    assert len(split) == 2
    assert relion(["--o", "External/job010/", "--in_parts", "parts.star", "--column", "rlnDefocusU",
                   "--min_quantile", "0.5"], "select") == 0
    assert not list(job.glob("particles_*.star")) and (job / "particles.star").exists()


def test_relion_job_dir_that_is_a_file_gives_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    class_stack(tmp_path / "cls.mrcs")
    (tmp_path / "External").mkdir()
    (tmp_path / "External/job011").write_text("not a folder")
    rc = relion(["--o", "External/job011/", "--in_parts", "cls.mrcs"])
    err = capsys.readouterr().err
    assert rc == ExitCode.BAD_INPUT and "Traceback" not in err
    assert "External/job011: exists and is not a folder" in err
    assert "cannot write the exit file" in err  # said once, not a crash of the handler


def test_relion_failure_handler_on_a_full_disk_says_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    class_stack(tmp_path / "cls.mrcs")
    real_touch = Path.touch

    def touch(self, *a, **kw):
        if self.name.startswith("RELION_JOB_EXIT_"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_touch(self, *a, **kw)

    monkeypatch.setattr(Path, "touch", touch)
    rc = relion(["--o", "External/job012/", "--in_parts", "cls.mrcs", "--pixel_size", "-1"])
    err = capsys.readouterr().err
    assert rc == ExitCode.BAD_INPUT and "Traceback" not in err
    assert "RELION_JOB_EXIT_FAILURE: no space left on the device" in err


def test_relion_disk_full_while_writing_names_the_file_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    class_stack(tmp_path / "cls.mrcs")
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if str(dst).endswith("rank_gallery.pdf"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    rc = relion(["--o", "External/job013/", "--in_parts", "cls.mrcs"])
    err = capsys.readouterr().err
    assert rc == ExitCode.BAD_INPUT and "internal error" not in err
    assert "External/job013/rank_gallery.pdf: no space left on the device" in err
    assert leftovers(tmp_path / "External/job013") == ["RELION_JOB_EXIT_FAILURE"]


def test_relion_internal_error_keeps_its_traceback_file_and_declares_nothing(tmp_path, capsys, monkeypatch):
    import cryolens.relion_ext.class2d as class2d

    monkeypatch.chdir(tmp_path)
    class_stack(tmp_path / "cls.mrcs")
    monkeypatch.setattr(class2d, "write_backup_selection", lambda *a: 1 / 0)
    assert relion(["--o", "External/job014/", "--in_parts", "cls.mrcs"]) == ExitCode.FAILED
    assert "internal error: ZeroDivisionError" in capsys.readouterr().err
    assert leftovers(tmp_path / "External/job014") == ["RELION_JOB_EXIT_FAILURE", "cryolens_traceback.txt"]


# -- cryolens run and the cryoSPARC offline entry, in process ----------------------------------------------
def test_run_with_a_folder_in_the_way_leaves_no_half_result_set(tmp_path, capsys):
    class_stack(tmp_path / "cls.mrcs")
    out = tmp_path / "out"
    (out / "rank_gallery.pdf").mkdir(parents=True)
    rc = shell(["run", "rank", "--classes-in", str(tmp_path / "cls.mrcs"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == ExitCode.BAD_INPUT and "rank_gallery.pdf: is a directory" in err
    assert leftovers(out) == ["rank_gallery.pdf"]


def test_run_disk_full_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    import cryolens.relion_ext.class2d as class2d
    import cryolens.relion_ext.star as star

    class_stack(tmp_path / "cls.mrcs")

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[1]))

    for mod, name in ((star, "write_blocks"), (star, "write_particles"), (class2d, "write_class_averages")):
        monkeypatch.setattr(mod, name, full)
    rc = shell(["run", "rank", "--classes-in", str(tmp_path / "cls.mrcs"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == ExitCode.BAD_INPUT and "no space left on the device" in err and "out/rank_model.star" in err
    assert ".cryolens-staging" not in err
    assert leftovers(tmp_path / "out") == []


def test_run_rerun_clears_its_own_outputs(tmp_path):
    class_stack(tmp_path / "cls.mrcs")
    out = tmp_path / "out"
    args = ["run", "rank", "--classes-in", str(tmp_path / "cls.mrcs"), "--out", str(out)]
    assert shell(args) == 0 and (out / "rank_gallery.pdf").exists()
    assert shell(args + ["--gallery", "no"]) == 0
    assert not (out / "rank_gallery.pdf").exists() and (out / "rank_scores.csv").exists()


def test_run_in_cryosparc_format_rerun_clears_its_own_outputs(tmp_path):
    class_stack(tmp_path / "cls.mrcs")
    out = tmp_path / "out"
    args = ["run", "rank", "--classes-in", str(tmp_path / "cls.mrcs"), "--out", str(out), "--format", "cryosparc"]
    assert shell(args) == 0 and (out / "cryolens_rank_gallery.pdf").exists()
    assert shell(args + ["--gallery", "no"]) == 0
    assert not (out / "cryolens_rank_gallery.pdf").exists() and (out / "cryolens_rank_scores.csv").exists()
    assert not [n for n in leftovers(out) if "staging" in n or ".tmp" in n]


# -- abort latency: every long loop polls should_stop ------------------------------------------------------
def _random_library(n_entries: int, n_views: int, box: int = 32, decoys: int = 16):
    import pandas as pd

    from cryolens.core.identify.library import Decoys, Library

    rng = np.random.default_rng(0)
    lib = Library(box, 4.0, 15.0, n_views)
    lib.entries = pd.DataFrame({"entry": np.arange(n_entries), "name": [f"p{i}" for i in range(n_entries)],
                                "accession": "", "source": "", "provenance": "{}"})
    lib.views = pd.DataFrame({"entry": np.repeat(np.arange(n_entries), n_views), "rot": 0.0, "tilt": 0.0, "psi": 0.0})
    lib.references = rng.standard_normal((n_entries * n_views, box, box)).astype(np.float16)
    lib.decoys = Decoys(rng.standard_normal((decoys * 4, box, box)).astype(np.float16), 4,
                        [f"d{i}" for i in range(decoys)])
    return lib


def test_ncc_search_stops_between_reference_chunks():
    import torch

    from cryolens.core.correlate import ncc_search

    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(JobAborted):
        ncc_search(torch.randn(2, 32, 32), torch.randn(64 * 10, 32, 32), n_psi=4, should_stop=stop)
    assert len(calls) == 3  # asked per chunk: 2 chunks done, not all 10


def test_the_decoy_pass_and_decoy_rendering_are_abortable(monkeypatch):
    import torch

    import cryolens.core.identify.score as score
    from cryolens.core.identify.decoys import build_decoys

    lib = _random_library(3, 4)
    seen = []
    real = score.ncc_search
    monkeypatch.setattr(score, "ncc_search", lambda q, refs, **kw: seen.append(
        (len(refs), kw.get("should_stop") is not None)) or real(q, refs, **kw))
    score.score_entries(torch.randn(2, 32, 32), lib, mode="correlation", n_psi=4, should_stop=lambda: False)
    assert seen == [(12, True), (64, True)]  # the library pass, then the decoys: both polled
    with pytest.raises(JobAborted):
        build_decoys(lib, should_stop=lambda: True)


def test_rank_scoring_is_abortable_between_chunks():
    import pandas as pd

    from cryolens.core.particles import ClassSet
    from cryolens.core.rank.model import RankModel

    cs = ClassSet(pd.DataFrame({"class_id": [1, 2, 3]}), np.zeros((3, 32, 32), np.float32), 3.0)
    with pytest.raises(JobAborted):
        RankModel.load().score(cs, should_stop=lambda: True)


# -- signals on real processes ---------------------------------------------------------------------------
_slow_writer = """
import sys, time
import cryolens.core.atomic as atomic
real = atomic.atomic_path.__wrapped__
calls = []

def slow(path, suffix=None):
    gen = real(path, suffix)
    calls.append(path)
    if len(calls) == {after}:
        print("WRITING", flush=True)
        time.sleep(60)
    return gen

atomic.atomic_path = atomic.contextlib.contextmanager(slow)
for mod in ("cryolens.core.figures", "cryolens.relion_ext.star", "cryolens.cryosparc_ext.offline",
            "cryolens.cryosparc_ext.csfile", "cryolens.relion_ext.external"):
    m = __import__(mod, fromlist=["x"])
    if hasattr(m, "atomic_path"):
        m.atomic_path = atomic.atomic_path
from {module} import main
sys.argv[0] = {prog!r}
sys.exit(main())
"""


def _start(tmp_path: Path, module: str, prog: str, args: list[str], after: int = 2) -> subprocess.Popen:
    script = tmp_path / "entry.py"
    script.write_text(_slow_writer.format(after=after, module=module, prog=prog))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([PY, str(script), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _signal_when_writing(proc: subprocess.Popen, sig: int, timeout: float = 120) -> tuple[int, str, str]:
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if "WRITING" in line or time.monotonic() > deadline:
            break
    assert any("WRITING" in x for x in lines), "".join(lines) + proc.stderr.read()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, "".join(lines) + out, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_relion_entry_signal_while_writing_aborts_cleanly(tmp_path, sig):
    class_stack(tmp_path / "cls.mrcs")
    proc = _start(tmp_path, "cryolens.relion_ext.external", "cryolens-relion-rank",
                  ["--o", "External/job007/", "--in_parts", "cls.mrcs", "--j", "1"], after=3)
    rc, out, err = _signal_when_writing(proc, sig)
    assert rc == 128 + sig, err
    assert "Traceback" not in err and err.strip().splitlines() == \
        [f"cryolens rank: interrupted ({signal.Signals(sig).name})"]
    assert leftovers(tmp_path / "External/job007") == ["RELION_JOB_EXIT_ABORTED"]


@pytest.mark.slow
def test_relion_entry_sigterm_before_writing_aborts_cleanly(tmp_path):
    class_stack(tmp_path / "cls.mrcs")
    proc = subprocess.Popen([PY, "-c", "import sys; sys.argv[0] = 'cryolens-relion-rank'; "
                             "from cryolens.relion_ext.external import main; sys.exit(main())",
                             "--o", "External/job008/", "--in_parts", "cls.mrcs"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "External job in" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED and "Traceback" not in err
    assert leftovers(tmp_path / "External/job008") == ["RELION_JOB_EXIT_ABORTED"]


@pytest.mark.slow
def test_relion_entry_sigterm_while_torch_loads_still_writes_the_exit_file(tmp_path):
    class_stack(tmp_path / "cls.mrcs")
    exe = Path(PY).parent / "cryolens-relion-rank"
    proc = subprocess.Popen([str(exe), "--o", "External/job015/", "--in_parts", "cls.mrcs"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)  # the handlers are in from main's first line; torch is still loading
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED and "Traceback" not in err, err
    assert leftovers(tmp_path / "External/job015") == ["RELION_JOB_EXIT_ABORTED"]


@pytest.mark.slow
def test_cryolens_run_ctrl_c_while_writing_leaves_nothing(tmp_path):
    class_stack(tmp_path / "cls.mrcs")
    proc = _start(tmp_path, "cryolens.cli", "cryolens",
                  ["run", "rank", "--classes-in", "cls.mrcs", "--out", "out"], after=3)
    rc, out, err = _signal_when_writing(proc, signal.SIGINT)
    assert rc == ExitCode.INTERRUPTED and err.strip() == "cryolens: interrupted (SIGINT)"
    assert leftovers(tmp_path / "out") == []


@pytest.mark.slow
def test_cryosparc_offline_sigterm_while_writing_leaves_nothing(tmp_path):
    from conftest import shared_path

    cs = shared_path("cryosparc", "cryosparc_J2_particles_exported.cs")
    proc = _start(tmp_path, "cryolens.cryosparc_ext.external", "cryolens-cryosparc",
                  ["select", "--offline", "--particles", str(cs), "--classes", "1,2", "--write_rejected",
                   "--out", "out"], after=2)
    rc, out, err = _signal_when_writing(proc, signal.SIGTERM)
    assert rc == ExitCode.TERMINATED and "Traceback" not in err
    assert "interrupted (SIGTERM)" in err
    assert leftovers(tmp_path / "out") == []
