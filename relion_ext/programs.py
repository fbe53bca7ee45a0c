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


def refine3d(project: Path, star: str, ref: str, job: str = "Refine3D/job001", diameter_A: float = 150,
             ini_high_A: float = 30, sym: str = "C1", workers: int = 2, seed: int = 1, ctf: bool = True,
             timeout: int = 7200) -> Path:
    """A CPU 3D auto-refinement (relion_refine_mpi --auto_refine --split_random_halves: one MPI
    leader and ``workers`` followers, one thread each; RELION 3.1 needs MPI for the two halves);
    returns the final ``run_data.star``. ``--firstiter_cc``: the reference need not be on the
    particles' greyscale (a phantom or a map from elsewhere; without it the first iteration's
    probabilities are meaningless and every pose comes out wrong with full confidence)."""
    require("mpirun", "relion_refine_mpi")
    (project / job).mkdir(parents=True, exist_ok=True)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(workers + 1), "relion_refine_mpi",
           "--o", f"{job}/run", "--auto_refine", "--split_random_halves", "--i", star, "--ref", ref,
           "--firstiter_cc", "--ini_high", str(ini_high_A), "--particle_diameter", str(diameter_A),
           "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--healpix_order", "2",
           "--auto_local_healpix_order", "4", "--offset_range", "5",
           "--offset_step", "2", "--sym", sym, "--low_resol_join_halves", "40", "--norm", "--scale", "--j", "1",
           "--pool", "30", "--pad", "2", "--dont_combine_weights_via_disc", "--preread_images",
           "--random_seed", str(seed)]
    if ctf:
        cmd.append("--ctf")
    run(cmd, project, log=f"{job}/run.log", timeout=timeout)
    return project / job / "run_data.star"


def reconstruct(project: Path, star: str, out: str, ctf: bool = True, extra: list[str] | None = None) -> Path:
    run(["relion_reconstruct", "--i", star, "--o", out, *(["--ctf"] if ctf else []), *(extra or [])], project)
    return project / out
