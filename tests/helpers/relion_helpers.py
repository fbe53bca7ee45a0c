"""Build small, real RELION projects for integration tests (Debian RELION 3.1.3 binaries).

Particles come from ``relion_project`` (RELION's own projector, CTF and noise) of a phantom
volume; 2D classes from a short ``relion_refine`` run. Everything runs in the project directory,
as RELION's GUI does, so paths in the STAR files are project-relative.
"""
from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from cryolens.core.particles import ParticleSet
from cryolens.relion_ext import programs
from cryolens.relion_ext.star import write_particles


def phantom_volume(box: int = 64, seed: int = 0) -> np.ndarray:
    from cryolens.core.simulate.example import blob_phantom

    return blob_phantom(box, seed)


def write_volume(path: Path, vol: np.ndarray, pixel_size: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(vol.astype(np.float32))
        m.voxel_size = pixel_size


def pose_table(n: int, seed: int, box: int = 64, pixel_size: float = 3.0, tag: str = "protA") -> ParticleSet:
    """Random uniform poses, small shifts and per-micrograph defocus (a --ang star for relion_project)."""
    rng = np.random.default_rng(seed)
    eul = Rotation.random(n, random_state=seed).as_euler("ZYZ", degrees=True)
    n_mics = max(1, n // 50)
    mic = rng.integers(0, n_mics, n)
    du = rng.uniform(10000, 25000, n_mics)[mic] + rng.normal(0, 50, n)
    t = pd.DataFrame({
        "image_stack": [f"Synthetic/{tag}_placeholder.mrcs"] * n,
        "image_index": np.arange(n),
        "micrograph": [f"Micrographs/{tag}_mic{m:03d}.mrc" for m in mic],
        "coord_x": rng.uniform(100, 3900, n).round(1), "coord_y": rng.uniform(100, 3900, n).round(1),
        "rot": eul[:, 0], "tilt": eul[:, 1], "psi": eul[:, 2],
        "shift_x": rng.normal(0, 3.0, n), "shift_y": rng.normal(0, 3.0, n),
        "defocus_u": du, "defocus_v": du - rng.uniform(0, 300, n), "defocus_angle": rng.uniform(0, 180, n),
        "phase_shift": 0.0, "ctf_bfactor": 0.0, "optics_group": 1, "half_set": 1 + np.arange(n) % 2,
        "pixel_size": pixel_size, "box": box, "voltage": 300.0, "cs": 2.7, "amp_contrast": 0.1,
    })
    return ParticleSet(t)


def run(cmd: list[str], cwd: Path, log: str | None = None, timeout: int = 900):
    return programs.run(cmd, cwd, log=log, timeout=timeout)


def project_particles(project: Path, tag: str, n: int, seed: int, box: int = 64, pixel_size: float = 3.0,
                      white_noise: float = 1.5, vol_seed: int | None = None) -> Path:
    """relion_project a phantom at random poses with CTF and noise; returns the particle star."""
    syn = project / "Synthetic"
    syn.mkdir(parents=True, exist_ok=True)
    write_volume(syn / f"{tag}.mrc", phantom_volume(box, seed if vol_seed is None else vol_seed), pixel_size)
    write_particles(pose_table(n, seed, box, pixel_size, tag), syn / f"{tag}_truth.star")
    run(["relion_project", "--i", f"Synthetic/{tag}.mrc", "--o", f"Synthetic/{tag}_particles",
         "--ang", f"Synthetic/{tag}_truth.star", "--ctf", "--add_noise", "--white_noise", str(white_noise),
         "--angpix", str(pixel_size)], project, log=f"Synthetic/{tag}_project.log")
    return syn / f"{tag}_particles.star"


def run_class2d(project: Path, star: str, job: str = "Class2D/job002", K: int = 4, iters: int = 3,
                diameter: float = 150, seed: int = 1) -> Path:
    """A short CPU relion_refine 2D classification; returns the last _data.star."""
    return programs.class2d(project, star, job=job, K=K, iters=iters, diameter_A=diameter, seed=seed)


BOOTSTRAP_PIPELINE = "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n\n"


def add_and_run_external(project: Path, options: dict[str, str], timeout: int = 300,
                         on_start=None) -> tuple[Path, int]:
    """``relion_pipeliner --addJob External`` + ``--RunJobs``; returns (job dir, process status).

    Status is RELION's integer: 2 succeeded, 3 failed, 4 aborted (relion_pipeliner itself exits 0
    either way). ``on_start(job_dir)`` is called once RELION has launched the job.
    """
    import threading
    import time

    from cryolens.relion_ext.star import read_blocks

    if not (project / "default_pipeline.star").exists():
        (project / "default_pipeline.star").write_text(BOOTSTRAP_PIPELINE)
    before = set(read_blocks(project / "default_pipeline.star").get("pipeline_processes", pd.DataFrame(
        {"rlnPipeLineProcessName": []}))["rlnPipeLineProcessName"])
    opts = ";".join(f"{k} == {v}" for k, v in options.items())
    run(["relion_pipeliner", "--addJob", "External", "--addJobOptions", opts], project)
    procs = read_blocks(project / "default_pipeline.star")["pipeline_processes"]
    job = next(p for p in procs["rlnPipeLineProcessName"] if p not in before)
    job_dir = project / job
    watcher = None
    if on_start is not None:
        def watch():
            deadline = time.monotonic() + timeout
            while not (job_dir / "run.out").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            on_start(job_dir)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    run(["relion_pipeliner", "--RunJobs", job, "--sec_wait_after", "1"], project, timeout=timeout)
    if watcher is not None:
        watcher.join(timeout=5)
    procs = read_blocks(project / "default_pipeline.star")["pipeline_processes"]
    status = int(procs.loc[procs["rlnPipeLineProcessName"] == job, "rlnPipeLineProcessStatus"].iloc[0])
    return job_dir, status


def pipeline_nodes(project: Path) -> dict[str, int]:
    from cryolens.relion_ext.star import read_blocks

    nodes = read_blocks(project / "default_pipeline.star")["pipeline_nodes"]
    return dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"].astype(int)))


def form_params(**params) -> dict[str, str]:
    """The External job form's rows ``paramN_label`` / ``paramN_value`` for ``params``, in order."""
    rows: dict[str, str] = {}
    for k, (name, value) in enumerate(params.items(), start=1):
        rows[f"param{k}_label"], rows[f"param{k}_value"] = name, str(value)
    return rows


def failed_without_outputs(project: Path, job_dir: Path, status: int) -> str:
    """Check that an External job failed (status 3) in one line, declaring and leaving no output;
    returns its run.err."""
    assert status == 3
    err = (job_dir / "run.err").read_text()
    assert "Traceback" not in err
    assert not (job_dir / "RELION_OUTPUT_NODES.star").exists()
    assert not (job_dir / "particles.star").exists()
    assert not any(n.startswith(str(job_dir.relative_to(project))) for n in pipeline_nodes(project))
    return err
