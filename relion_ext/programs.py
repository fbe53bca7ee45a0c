"""Running RELION's own programs (relion_refine, relion_reconstruct, ...) from cryolens.

Used by the simulator's "real RELION" class-average route and by the integration tests. Each
program runs in the project directory, as RELION's GUI runs it, so every path in the STAR files
it writes is project-relative.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cryolens.core.errors import CryolensError


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise CryolensError(f"RELION program(s) not found on PATH: {', '.join(missing)} "
                            "(install RELION, e.g. bash install/relion-debian.sh)")


def run(cmd: list[str], project: Path, log: str | None = None, timeout: int = 3600) -> subprocess.CompletedProcess:
    """Run a RELION command in ``project``; CryolensError with the end of stderr on failure."""
    require(cmd[0])
    res = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=timeout)
    if log:
        (project / log).parent.mkdir(parents=True, exist_ok=True)
        (project / log).write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    if res.returncode != 0:
        raise CryolensError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-1500:]}")
    return res


def class2d(project: Path, star: str, job: str = "Class2D/job001", K: int = 10, iters: int = 5,
            diameter_A: float = 150, seed: int = 1, threads: int = 2, psi_step: float = 12,
            offset_range: int = 5, offset_step: int = 2, tau2_fudge: float = 2, ctf: bool = True,
            pipeline_control: bool = False) -> Path:
    """A CPU relion_refine 2D classification (EM, as RELION 3.1's default); returns the last _data.star.
    ``pipeline_control``: as the pipeliner runs it (``--pipeline_control``: RELION_JOB_EXIT_SUCCESS
    in the job directory; the log in run.out), for a job the project's pipeline lists."""
    (project / job).mkdir(parents=True, exist_ok=True)
    cmd = ["relion_refine", "--o", f"{job}/run", "--i", star, "--dont_combine_weights_via_disc", "--preread_images",
           "--pool", "30", "--pad", "2", "--iter", str(iters), "--tau2_fudge", str(tau2_fudge),
           "--particle_diameter", str(diameter_A), "--K", str(K), "--flatten_solvent", "--zero_mask",
           "--oversampling", "1", "--psi_step", str(psi_step), "--offset_range", str(offset_range),
           "--offset_step", str(offset_step), "--norm", "--scale", "--j", str(threads), "--random_seed", str(seed)]
    if ctf:
        cmd.append("--ctf")
    if pipeline_control:
        cmd += ["--pipeline_control", f"{job}/"]
    run(cmd, project, log=f"{job}/run.out" if pipeline_control else f"{job}/run.log")
    return project / job / f"run_it{iters:03d}_data.star"


def reconstruct(project: Path, star: str, out: str, ctf: bool = True, extra: list[str] | None = None) -> Path:
    run(["relion_reconstruct", "--i", star, "--o", out, *(["--ctf"] if ctf else []), *(extra or [])], project)
    return project / out
