"""Simulated data as a RELION project, and genuine RELION 2D classes of it with ground truth.

``write_project`` writes what ``cryolens simulate`` produces (stack, particles.star with optics,
the truth table); ``import_particles`` and ``write_simulated_pipeline`` make it a project RELION
opens (an Import job, the Class2D job, ``default_pipeline.star``); ``class2d_with_truth`` runs Debian's ``relion_refine`` 2D classification on it
and maps each class to a species by the majority vote of its member particles.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.core.mrc import write_stack
from cryolens.core.particles import ClassSet, ParticleSet

from . import programs
from .class2d import read_class2d
from .star import write_blocks, write_particles


def write_project(project: Path, ps: ParticleSet, images: np.ndarray, truth: pd.DataFrame,
                  name: str = "particles") -> Path:
    """``Simulated/<name>.mrcs``, ``Simulated/<name>.star`` (RELION 3.1) and ``<name>_truth.csv/.star``
    in ``project``; returns the particle star. Paths in the star are project-relative."""
    sim_dir = project / "Simulated"
    sim_dir.mkdir(parents=True, exist_ok=True)
    stack = f"Simulated/{name}.mrcs"
    write_stack(project / stack, images, float(ps.table["pixel_size"].iloc[0]))
    ps = ps.copy()
    ps.table["image_stack"] = stack
    ps.table["image_index"] = np.arange(len(ps))
    ps.root = project
    write_particles(ps, sim_dir / f"{name}.star", version="3.1")
    truth = truth.copy()
    truth.insert(0, "rlnImageName", [f"{i + 1:06d}@{stack}" for i in range(len(truth))])
    truth.to_csv(sim_dir / f"{name}_truth.csv", index=False)
    text_cols = {c: str for c in truth.columns if truth[c].dtype.kind not in "biuf"}
    write_blocks(sim_dir / f"{name}_truth.star", {"truth": truth.astype(text_cols)})
    return sim_dir / f"{name}.star"

IMPORT_JOB = "Import/job001/"
CLASS2D_JOB = "Class2D/job002/"


def import_particles(project: Path, star: Path, command: str = "cryolens simulate") -> str:
    """The simulated particles as RELION's Import job leaves them: a copy in ``Import/job001/``
    (paths inside stay project-relative), its run.out; returns the project-relative star."""
    job = project / IMPORT_JOB
    job.mkdir(parents=True, exist_ok=True)
    rel = f"{IMPORT_JOB}particles.star"
    (project / rel).write_bytes(Path(star).read_bytes())
    (job / "run.out").write_text(f"{command}: imported {Path(star).relative_to(project)} as {rel}\n")
    return rel


def write_simulated_pipeline(project: Path, particles: str, class2d: Path | None = None, K: int = 0,
                             iters: int = 0, version: str = "3.1", command: str = "cryolens simulate") -> Path:
    """``default_pipeline.star`` and ``.gui_projectdir``: RELION opens the simulated project with its
    Import job (the particles) and, when it ran, its Class2D job (the last iteration's data and
    model/optimiser), so ``relion_pipeliner --addJob`` works there with no manual step."""
    from .pipeline import Job, write_pipeline

    jobs = [Job(IMPORT_JOB, "import", outputs=[(particles, "particles")], command=command,
                options={"fn_in_other": str(Path(particles)), "node_type": "Particles STAR file (.star)",
                         "do_other": "Yes", "do_raw": "No"})]
    if class2d is not None:
        data = f"{CLASS2D_JOB}{class2d.name}"
        second = (data.replace("_data.star", "_model.star") if version == "3.1"
                  else data.replace("_data.star", "_optimiser.star"))
        jobs.append(Job(CLASS2D_JOB, "class2d", inputs=[(particles, "particles")],
                        outputs=[(data, "class2d_particles"), (second, "class2d_model")], command=command,
                        options={"fn_img": particles, "nr_classes": str(K), "nr_iter": str(iters)}))
    return write_pipeline(project, jobs, version)


def class2d_with_truth(project: Path, star: str, truth: pd.DataFrame, stack: str, K: int = 10, iters: int = 5,
                       diameter_A: float = 150, seed: int = 1, job: str = "Class2D/job001",
                       threads: int = 2, pipeline_control: bool = False) -> tuple[ClassSet, pd.DataFrame]:
    """Run relion_refine 2D classification; return its ClassSet and a per-class truth table:
    majority species, purity (fraction of members that are true particles of it), junk fraction.
    Row i of ``truth`` is image i (0-based) of ``stack`` (as ``write_project`` writes them)."""
    data = programs.class2d(project, star, job=job, K=K, iters=iters, diameter_A=diameter_A, seed=seed,
                            threads=threads, pipeline_control=pipeline_control)
    cs = read_class2d(data, root=project)
    parts = cs.particles.table
    # RELION reorders particles: join on the image, never on position
    keyed = truth.set_index(pd.Index([f"{i}@{stack}" for i in range(len(truth))]))
    members = keyed.loc[cs.particles.image_keys().to_numpy()]
    members = members.assign(class_id=parts["class_id"].to_numpy())
    rows = []
    for k in cs.class_ids:
        m = members[members["class_id"] == k]
        good = m[~m["is_junk"].astype(bool)] if "is_junk" in m else m
        if len(good):
            major = good["species"].value_counts().idxmax()
            purity = float((good["species"] == major).sum() / len(m))
        else:
            major, purity = "", 0.0
        rows.append({"class_id": int(k), "n_particles": len(m), "truth_species": major, "truth_purity": purity,
                     "truth_junk_fraction": float(m["is_junk"].astype(bool).mean()) if len(m) and "is_junk" in m else 0.0})
    return cs, pd.DataFrame(rows)
