"""Run a registered job from the shell, on STAR, .cs or MRC files

The job is the same one RELION and cryoSPARC run. Results go into --out in the input's format
(--format overrides), written by the adapters' own writers: RELION (particle and class sets as
.star, backup_selection.star for a class selection, tables as .csv, figures as PDF) or cryoSPARC
offline (.cs + .csg for Import Result Group, side-car CSVs, PDFs).
`cryolens run JOB --help` lists the job's inputs and parameters.

Example usage
-------------
$ cryolens run select --particles Class2D/job012/run_it025_data.star --classes 1,3 --out sel/
$ cryolens run rank --classes-in Class2D/job012/run_it025_optimiser.star --out Rank/
$ cryolens run identify --classes-in averages.mrcs --pixel-size 2.1 --library lib.npz --out Identify/
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from cryolens.core.jobs import Input, JobContext, JobSpec, get_job, load_all, prepare_params, run_job
from cryolens.core.jobs.flags import add_param_arguments, given_params

# how the shell spells each input kind (the cryoSPARC entry spells them the same way)
INPUT_FLAGS = {"particles": "--particles", "classes": "--classes-in", "volume": "--volume", "mask": "--mask"}


def input_flag(inp: Input) -> str:
    return INPUT_FLAGS.get(inp.kind, "--" + inp.name)


def add_args(parser: argparse.ArgumentParser) -> None:
    jobs = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    for name, spec in sorted(load_all().items()):
        add_job_args(jobs.add_parser(name, help=spec.summary, description=spec.summary), spec)


def add_job_args(p: argparse.ArgumentParser, spec: JobSpec) -> None:
    kinds = {i.kind for i in spec.inputs}
    g = p.add_argument_group("inputs and outputs")
    if "particles" in kinds:
        g.add_argument("--particles", metavar="PATH", help="particles: RELION .star or cryoSPARC .cs")
    if "classes" in kinds:
        g.add_argument("--classes-in", dest="classes_in", metavar="PATH",
                       help="2D classes: RELION run_itNNN_{data,model,optimiser}.star or job dir, cryoSPARC "
                            "templates .cs, or a bare .mrcs stack of class averages")
        g.add_argument("--class-particles", metavar="PATH",
                       help="cryoSPARC particles .cs with alignments2D (with a templates .cs)")
    if "volume" in kinds:
        g.add_argument("--volume", metavar="PATH", help="3D map (.mrc)")
    if "mask" in kinds:
        g.add_argument("--mask", metavar="PATH", help="3D mask (.mrc)")
    g.add_argument("--project-dir", metavar="PATH", help="directory image paths are relative to (default: found)")
    g.add_argument("--out", required=True, metavar="PATH", help="output directory")
    g.add_argument("--format", choices=["relion", "cryosparc"], help="output format (default: the input's)")
    add_param_arguments(p.add_argument_group(f"{spec.name} parameters"), spec)


def load_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The job's inputs from files of any kind, and the format of the last one ('relion' or 'cryosparc')."""
    from cryolens.core.mrc import read_map
    from cryolens.formats import kind_of, read_classes, read_particles

    inputs: dict[str, Any] = {}
    fmt = "relion"
    if getattr(args, "particles", None):
        inputs["particles"] = read_particles(args.particles, project_dir=args.project_dir)
        fmt = "cryosparc" if kind_of(args.particles) == "cs" else "relion"
    if getattr(args, "classes_in", None):
        inputs["classes"] = read_classes(args.classes_in, particles=getattr(args, "class_particles", None),
                                         project_dir=args.project_dir)
        fmt = "cryosparc" if kind_of(args.classes_in) == "cs" else "relion"
    for name in ("volume", "mask"):
        if getattr(args, name, None):
            inputs[name] = read_map(getattr(args, name))
    return inputs, fmt


def main(args: argparse.Namespace) -> int:
    from cryolens.core import signals
    from cryolens.core.atomic import clear_outputs, staged
    from cryolens.core.progress import Progress

    spec = get_job(args.job)
    params = prepare_params(spec, given_params(args), args.device)  # the library or model checked first
    inputs, fmt = load_inputs(args)
    out = Path(args.out)
    fmt = args.format or fmt
    # an earlier run's outputs in --out are not this run's: gone before it starts (only those)
    clear_outputs(out, output_files(spec, fmt), inputs=[getattr(args, k, None) for k in INPUT_ARGS])
    with Progress(spec.name) as prog:
        result = run_job(spec, inputs, params, JobContext(out_dir=out, device=args.device, seed=args.seed,
                                                          progress=prog))
    with staged(out) as stage:  # written together or not at all (an error, Ctrl-C)
        if fmt == "cryosparc":
            from cryolens.cryosparc_ext.offline import write_offline

            command = "cryolens " + shlex.join(getattr(args, "argv", []))
            res = write_offline(result, inputs, stage.dir, "pick_stats", f"cryolens {spec.name}", command)
            summary = result.summary + res.summary
        else:
            from cryolens.relion_ext.external import write_outputs

            write_outputs(result, stage.dir, tables="csv")
            summary = result.summary
        signals.finishing()
        written = stage.commit()
    for line in summary:
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0


INPUT_ARGS = ("particles", "classes_in", "class_particles", "volume", "mask")


def output_files(spec: JobSpec, fmt: str) -> list[str]:
    """The files a run of ``spec`` may write into --out in format ``fmt`` (what a re-run clears)."""
    if fmt == "cryosparc":
        from cryolens.cryosparc_ext.offline import output_files as cryosparc_files

        return cryosparc_files(spec)
    from cryolens.relion_ext.external import output_files as relion_files

    return relion_files(spec, tables="csv")
