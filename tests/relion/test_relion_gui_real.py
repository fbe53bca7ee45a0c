"""The real RELION 3.1.3 GUI (Debian ``relion-gui``) under a virtual X server (Xvfb), driven with
xdotool as a user drives it (issue 19): a ``cryolens simulate`` project opens with its jobs listed
(no "does not look like a RELION project" question), and the 3.1 route to a template works: the
template copied to ``.gui_externaljob.star``, *External* chosen, *Jobs > Load job settings*
(Alt+L), *Jobs > Save job settings* (Alt+S). What the GUI saves back is what it holds, so it shows
that all ten parameter rows were read, and that loading select after identify keeps none of
identify's rows. Clicks use RELION 3.1.3's fixed window layout."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO
from cryolens.relion_ext.star import read_blocks

TOOLS = ("relion", "Xvfb", "xdotool", "relion_pipeliner")
pytestmark = [pytest.mark.slow, pytest.mark.relion,
              pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason="needs the RELION GUI, Xvfb and xdotool (bash install/relion-debian.sh)")]
EXTERNAL_IN_LIST = (40, 330)  # the last entry of the job-type list, in window coordinates


@pytest.fixture(scope="module")
def display():
    """A private X server; its display name."""
    import select

    proc = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1400x1000x24"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    ready, _, _ = select.select([proc.stdout], [], [], 20.0)
    number = proc.stdout.readline().decode().strip() if ready else ""
    if not number.isdigit():
        proc.kill()
        pytest.skip("Xvfb did not start a display here (no X server can run on this machine)")
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


def _xdo(display: str, *args: str) -> str:
    env = dict(os.environ, DISPLAY=display)
    return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=20).stdout.strip()


def _wait_window(display: str, name: str, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = _xdo(display, "search", "--name", name)
        if found:
            return found.splitlines()[0]
        time.sleep(0.3)
    raise AssertionError(f"no window named {name!r} appeared")


def _rows(path: Path) -> list[tuple[str, str]]:
    t = read_blocks(path)["joboptions_values"]
    opts = dict(zip(t["rlnJobOptionVariable"], t["rlnJobOptionValue"].astype(str)))
    return [(opts.get(f"param{i}_label", ""), opts.get(f"param{i}_value", "")) for i in range(1, 11)]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    out = tmp_path_factory.mktemp("gui") / "proj"
    cli = shutil.which("cryolens") or str(REPO / ".venv" / "bin" / "cryolens")
    subprocess.run([cli, "simulate", "--n", "60", "--box", "32", str(out)], check=True, capture_output=True,
                   timeout=300)
    return out


def test_the_31_gui_opens_a_simulated_project_and_loads_templates_without_leaks(display, project):
    env = dict(os.environ, DISPLAY=display)
    gui = subprocess.Popen(["relion"], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        win = _wait_window(display, "RELION-3.1.3")
        time.sleep(1.0)
        names = {_xdo(display, "getwindowname", w) for w in _xdo(display, "search", "--name", ".").splitlines()}
        assert not any("project" in n.lower() and "RELION" not in n for n in names), names  # no question asked
        saved = project / ".gui_externaljob.star"
        for job in ("identify", "select"):  # identify fills ten rows, select nine: the tenth must not stay
            template = REPO / "install" / "relion" / f"cryolens_{job}_job.star"
            shutil.copyfile(template, saved)
            _xdo(display, "mousemove", "--window", win, *map(str, EXTERNAL_IN_LIST), "click", "1")
            time.sleep(0.8)
            _xdo(display, "windowfocus", "--sync", win)
            _xdo(display, "key", "--window", win, "alt+l")  # Jobs > Load job settings
            time.sleep(0.8)
            saved.write_text("")  # what follows must come from the GUI's own save
            _xdo(display, "key", "--window", win, "alt+s")  # Jobs > Save job settings
            end = time.monotonic() + 15
            while time.monotonic() < end and not saved.read_text():
                time.sleep(0.2)
            assert saved.read_text(), "the GUI saved nothing"
            assert _rows(saved) == _rows(template), job  # all ten rows as the template has them, none left over
    finally:
        gui.terminate()
        gui.wait(10)
