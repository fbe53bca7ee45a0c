"""A RELION project's pipeline, written so RELION opens a directory cryolens made as its own project.

RELION's GUI opens a directory as a project when it holds ``.gui_projectdir``; it lists the jobs of
``default_pipeline.star`` (processes, nodes and the edges between them) and shows, per job, its
``job.star``, ``note.txt`` and ``run.out``; ``relion_pipeliner --addJob`` needs
``default_pipeline.star``. The formats per version are in research/relion.md A.4-A.6: 3.1 writes
integer process and node types, 4.0 labels (and reads both), 5.0 labels with ``# version 50001``
and a node label depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .star import write_blocks

VERSIONS = ("3.1", "4.0", "5.0")
PROJECT_MARKER = ".gui_projectdir"
PIPELINE = "default_pipeline.star"
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"

# job kind -> (3.1 integer, 4.0/5.0 label), pipeline_jobs.h of each version
PROCESS_TYPES = {"import": (0, "relion.import.other"), "class2d": (8, "relion.class2d"),
                 "select": (7, "relion.select.interactive"), "external": (99, "relion.external")}
# node kind -> (3.1 integer, 4.0 label, 5.0 label)
NODE_TYPES = {
    "particles": (3, "ParticlesData.star.relion", "ParticleGroupMetadata.star.relion"),
    "class2d_particles": (3, "ParticlesData.star.relion.class2d", "ParticleGroupMetadata.star.relion.class2d"),
    "class2d_model": (8, "ProcessData.star.relion.optimiser.class2d", "OptimiserData.star.relion.class2d"),
    "classes": (5, "ImagesData.star.relion.classaverages", "Image2DGroupMetadata.star.relion.classaverages"),
}
STATUS_SUCCEEDED = (2, "Succeeded")


@dataclass
class Job:
    """One finished job of the project: its directory (``Class2D/job002/``), kind, the input and
    output nodes (path, node kind) and the options its job.star records."""

    name: str
    kind: str
    inputs: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    command: str = ""


def _node_type_columns(kind: str, version: str) -> dict[str, object]:
    integer, label4, label5 = NODE_TYPES[kind]
    if version == "3.1":
        return {"rlnPipeLineNodeType": integer}
    if version == "4.0":
        return {"rlnPipeLineNodeTypeLabel": label4}
    return {"rlnPipeLineNodeTypeLabel": label5, "rlnPipeLineNodeTypeLabelDepth": 1}


def write_job_star(path: Path, job: Job, version: str) -> None:
    """The job's ``job.star`` as that RELION version writes it (research/relion.md A.4)."""
    integer, label = PROCESS_TYPES[job.kind]
    head = ({"rlnJobType": integer, "rlnJobIsContinue": 0} if version == "3.1" else
            {"rlnJobTypeLabel": label, "rlnJobIsContinue": 0, "rlnJobIsTomo": 0})
    opts = pd.DataFrame(sorted(job.options.items()), columns=["rlnJobOptionVariable", "rlnJobOptionValue"])
    write_blocks(path, {"job": head, "joboptions_values": opts}, version=50001 if version == "5.0" else 30001)


def write_pipeline(project: Path, jobs: list[Job], version: str = "3.1") -> Path:
    """``default_pipeline.star`` listing ``jobs`` as succeeded, with their nodes and edges, and the
    ``.gui_projectdir`` marker; each job directory gets its job.star, a note.txt (unless it has one)
    and RELION_JOB_EXIT_SUCCESS. Returns the pipeline file."""
    if version not in VERSIONS:
        raise ValueError(f"RELION version {version!r} (known: {', '.join(VERSIONS)})")
    counter = 1 + max((int(j.name.rstrip("/").rsplit("job", 1)[1]) for j in jobs), default=0)
    status, status_label = STATUS_SUCCEEDED
    procs = pd.DataFrame({
        "rlnPipeLineProcessName": [j.name for j in jobs],
        "rlnPipeLineProcessAlias": ["None"] * len(jobs),
        **({"rlnPipeLineProcessType": [PROCESS_TYPES[j.kind][0] for j in jobs],
            "rlnPipeLineProcessStatus": [status] * len(jobs)} if version == "3.1" else
           {"rlnPipeLineProcessTypeLabel": [PROCESS_TYPES[j.kind][1] for j in jobs],
            "rlnPipeLineProcessStatusLabel": [status_label] * len(jobs)}),
    })
    seen: dict[str, str] = {}
    for j in jobs:
        for path, kind in j.inputs + j.outputs:
            seen.setdefault(path, kind)
    nodes = pd.DataFrame([{"rlnPipeLineNodeName": p, **_node_type_columns(k, version)} for p, k in seen.items()])
    blocks: dict[str, object] = {"pipeline_general": {"rlnPipeLineJobCounter": counter}, "pipeline_processes": procs,
                                 "pipeline_nodes": nodes}
    ins = [(p, j.name) for j in jobs for p, _ in j.inputs]
    outs = [(j.name, p) for j in jobs for p, _ in j.outputs]
    if ins:
        blocks["pipeline_input_edges"] = pd.DataFrame(ins, columns=["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"])
    if outs:
        blocks["pipeline_output_edges"] = pd.DataFrame(outs, columns=["rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode"])
    for j in jobs:
        d = project / j.name
        d.mkdir(parents=True, exist_ok=True)
        write_job_star(d / "job.star", j, version)
        if not (d / "note.txt").exists():
            (d / "note.txt").write_text(f" ++++ Written by cryolens with the following command(s):\n{j.command}\n ++++\n")
        (d / EXIT_SUCCESS).touch()
    for p, kind in seen.items():  # what RELION's pipeliner touches: the GUI's Browse lists these
        integer, label4, label5 = NODE_TYPES[kind]
        sub = str(integer) if version == "3.1" else (label4 if version == "4.0" else label5).split(".")[0]
        mark = project / ".Nodes" / sub / p
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    path = project / PIPELINE
    write_blocks(path, blocks, version=50001 if version == "5.0" else 30001)
    (project / PROJECT_MARKER).touch()
    return path
