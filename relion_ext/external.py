"""Every registered cryolens job as a RELION External job (RELION 3.1, 4.0 and 5.0).

RELION runs, from the project directory::

    cryolens-relion-<job> --o External/jobNNN/ [--in_parts F] [--in_3dref F] [--in_mask F]
        [--<param> <value> ...] --j N [other args] [--pipeline_control External/jobNNN/]

The only things the pipeliner watches are the exit files RELION_JOB_EXIT_{SUCCESS,FAILURE,
ABORTED} in the job directory; RELION_OUTPUT_NODES.star (read on success) declares the outputs.
Facts and sources: ../shared/research/relion.md (section 0 and A).
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cryolens.core.errors import CryolensError, ExitCode, InputError, JobAborted, exit_code
from cryolens.core.jobs import JobContext, JobResult, JobSpec, get_job, load_all, prepare_params, run_job
from cryolens.core.jobs.flags import add_param_arguments, given_params

from .star import header_version, read_blocks, write_blocks, write_particles

EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED = ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE",
                                            "RELION_JOB_EXIT_ABORTED")
ABORT_NOW = "RELION_JOB_ABORT_NOW"
NODES_FILE = "RELION_OUTPUT_NODES.star"
INPUT_FLAGS = ("in_movies", "in_mics", "in_parts", "in_coords", "in_3dref", "in_mask")

# output kind -> (3.1 integer type, 4.0 label, 5.0 label)
NODE_TYPES = {
    "particles": (3, "ParticlesData.star.relion", "ParticleGroupMetadata.star.relion"),
    "classes": (5, "ImagesData.star.relion.classaverages", "Image2DGroupMetadata.star.relion.classaverages"),
    "volume": (6, "DensityMap.mrc", "DensityMap.mrc"),
    "figure": (13, "LogFile.pdf.relion", "LogFile.pdf.relion"),
}


# -- RELION version -------------------------------------------------------------------------
def detect_version(job_dir: Path, project_dir: Path = Path(".")) -> str:
    """'3.1', '4.0' or '5.0': from the job's own job.star (written by RELION before it runs
    us), else from default_pipeline.star; '5.0' when neither says."""
    job_star = job_dir / "job.star"
    if job_star.is_file():
        try:
            job = read_blocks(job_star).get("job", {})
        except CryolensError:
            job = {}
        if isinstance(job, dict):
            if "rlnJobTypeLabel" in job:
                return "5.0" if header_version(job_star) == 50001 else "4.0"
            if "rlnJobType" in job:
                return "3.1"
    pipeline = project_dir / "default_pipeline.star"
    if pipeline.is_file():
        text = pipeline.read_text(errors="replace")
        if "# version 50001" in text or "_rlnPipeLineNodeTypeLabelDepth" in text:
            return "5.0"
        if "_rlnPipeLineProcessTypeLabel" in text:
            return "4.0"
        if "_rlnPipeLineProcessType" in text:
            return "3.1"
    return "5.0"


def write_output_nodes(job_dir: Path, nodes: list[tuple[str, str]], version: str) -> None:
    """RELION_OUTPUT_NODES.star with both the 3.1 integer type and the 4.0/5.0 label."""
    label_col = 2 if version == "5.0" else 1
    table = pd.DataFrame({
        "rlnPipeLineNodeName": [name for name, _ in nodes],
        "rlnPipeLineNodeType": [NODE_TYPES[kind][0] for _, kind in nodes],
        "rlnPipeLineNodeTypeLabel": [NODE_TYPES[kind][label_col] for _, kind in nodes],
    })
    write_blocks(job_dir / NODES_FILE, {"output_nodes": table}, 50001 if version == "5.0" else 30001)


# -- command line ---------------------------------------------------------------------------
def build_parser(spec: JobSpec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"cryolens-relion-{spec.name}", description=spec.summary,
                                allow_abbrev=False)
    p.add_argument("--o", required=True, help="output directory (External/jobNNN/)")
    for flag in INPUT_FLAGS:
        p.add_argument(f"--{flag}", default=None)
    p.add_argument("--j", type=int, default=1, help="threads")
    p.add_argument("--pipeline_control", default=None)
    p.add_argument("--relion_version", choices=["3.1", "4.0", "5.0"], default=None,
                   help="override the detected RELION version (output node labels)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", nargs="?", const="yes", default=None)
    add_param_arguments(p, spec, bare_flags=True)
    return p


@dataclass
class Invocation:
    spec: JobSpec
    out: Path
    args: argparse.Namespace
    params: dict[str, Any]
    unknown: list[str]


def parse(spec: JobSpec, argv: list[str]) -> Invocation:
    args, unknown = build_parser(spec).parse_known_args(argv)
    params = given_params(args)
    return Invocation(spec, Path(args.o), args, params, unknown)


# -- inputs and outputs ---------------------------------------------------------------------
def load_inputs(spec: JobSpec, args: argparse.Namespace) -> dict[str, Any]:
    """--in_parts as the job wants it: a Class2D iteration (or job directory) as classes, or its
    _data.star as particles; a particle STAR; a bare stack of class averages (.mrcs)."""
    from cryolens.core.mrc import MRC_SUFFIXES, read_class_stack

    from .class2d import find_class2d_files, is_class2d, read_class2d
    from .star import read_particles

    wanted = {i.name for i in spec.inputs}
    inputs: dict[str, Any] = {}
    if args.in_parts and wanted & {"particles", "classes"}:
        path = Path(args.in_parts)
        if path.suffix.lower() in MRC_SUFFIXES and "classes" in wanted:
            inputs["classes"] = read_class_stack(path)
        elif is_class2d(path):
            if "classes" in wanted:
                inputs["classes"] = read_class2d(path)
            else:
                files = find_class2d_files(path)
                if files.data is None:
                    raise CryolensError("the Class2D iteration has no _data.star", path)
                inputs["particles"] = read_particles(files.data)
        elif path.suffix.lower() == ".star" or not path.suffix:
            inputs["particles"] = read_particles(path)
        else:
            raise InputError("expected a particle .star, a Class2D iteration or job directory, or an .mrcs "
                             "stack of class averages", path)
    if args.in_3dref and "volume" in wanted:
        from cryolens.core.mrc import read_map

        inputs["volume"] = read_map(args.in_3dref)
    if args.in_mask and "mask" in wanted:
        from cryolens.core.mrc import read_map

        inputs["mask"] = read_map(args.in_mask)
    for name in ("in_movies", "in_mics", "in_coords"):
        if getattr(args, name):
            print(f"cryolens: note: --{name} is not used by job {spec.name}", file=sys.stderr)
    return upgrade_optics(inputs)


def upgrade_optics(inputs: dict[str, Any]) -> dict[str, Any]:
    """Particles read without ``data_optics`` converted as RELION 3.1+ converts them on reading
    (``star.with_optics``), so every particle STAR this job writes is a valid 3.1+ file, and a set
    that cannot be converted fails now, before any work."""
    from dataclasses import replace

    from .star import with_optics

    if inputs.get("particles") is not None:
        inputs["particles"] = with_optics(inputs["particles"])
    cs = inputs.get("classes")
    if cs is not None and cs.particles is not None:
        inputs["classes"] = replace(cs, particles=with_optics(cs.particles))
    return inputs


def write_outputs(result: JobResult, job_dir: Path, written: list[Path], tables: str = "star") -> list[tuple[str, str]]:
    """Write every result file atomically, appending each to ``written`` as it lands; return the
    nodes to declare (path, kind). ``tables``: "star" (RELION), or "csv" (``cryolens run``)."""
    from .class2d import write_backup_selection, write_class_averages

    nodes: list[tuple[str, str]] = []
    for name, ps in result.particles.items():
        path = job_dir / f"{name}.star"
        write_particles(ps, path)
        written.append(path)
        nodes.append((str(path), "particles"))
    for name, cs in result.classes.items():
        path = job_dir / f"{name}.star"
        write_class_averages(cs, path)
        written.append(path)
        nodes.append((str(path), "classes"))
    for name, sel in result.class_selection.items():
        path = job_dir / ("backup_selection.star" if name == "class_averages" else f"{name}_selection.star")
        write_backup_selection(sel, path)
        written.append(path)
    for name, table in result.tables.items():
        path = job_dir / f"{name}.{tables}"
        if tables == "csv":
            from cryolens.core.atomic import atomic_path

            with atomic_path(path) as tmp:
                table.to_csv(tmp, index=False)
        else:
            write_blocks(path, {name: table})
        written.append(path)
    for name, fig in result.figures.items():
        from cryolens.core.figures import save_figure

        path = save_figure(fig, job_dir / f"{name}.pdf")
        written.append(path)
        nodes.append((str(path), "figure"))
    return nodes


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


# -- the protocol ---------------------------------------------------------------------------
def run_external(job_name: str, argv: list[str]) -> int:
    """Run one External job invocation. The exit files tell RELION how it ended; the process exits
    with the ExitCode table (0 success, 1 failed, 2 bad input, 3 aborted)."""
    spec = get_job(job_name)
    try:
        inv = parse(spec, argv)
    except SystemExit as exc:  # argparse: usage error or --help
        if exc.code not in (0, None) and "--o" in argv:
            out = Path(argv[argv.index("--o") + 1])
            _touch(out / EXIT_FAILURE)
        return int(exc.code or 0)
    job_dir = inv.out
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED, NODES_FILE):
        (job_dir / stale).unlink(missing_ok=True)
    debug = inv.args.debug is not None
    written: list[Path] = []
    t0 = time.monotonic()
    try:
        if inv.unknown:
            print(f"cryolens: note: ignoring unknown arguments {' '.join(inv.unknown)}", file=sys.stderr)
        version = inv.args.relion_version or detect_version(job_dir)
        print(f"cryolens {spec.name}: RELION {version} External job in {job_dir}", flush=True)
        from cryolens.core.runtime import resolve_device, seed_everything
        from cryolens.core.progress import Progress

        device = resolve_device(inv.args.device)
        seed_everything(inv.args.seed)
        import torch

        torch.set_num_threads(max(1, inv.args.j))
        params = prepare_params(spec, inv.params, device)  # the library or model checked before any input
        inputs = load_inputs(spec, inv.args)
        with Progress(spec.name, stream=sys.stdout, force_plain=True) as prog:
            ctx = JobContext(out_dir=job_dir, device=device, seed=inv.args.seed, threads=inv.args.j,
                             progress=prog, should_stop=lambda: (job_dir / ABORT_NOW).exists(),
                             log=lambda s: print(s, flush=True))
            ctx.check_abort()
            result = run_job(spec, inputs, params, ctx)
            ctx.check_abort()
        nodes = write_outputs(result, job_dir, written)
        for line in result.summary:
            print(line, flush=True)
        write_output_nodes(job_dir, nodes, version)
        print(f"cryolens {spec.name}: done in {time.monotonic() - t0:.1f} s", flush=True)
        _touch(job_dir / EXIT_SUCCESS)
        return ExitCode.SUCCESS
    except JobAborted as err:
        _cleanup(written, job_dir)
        (job_dir / ABORT_NOW).unlink(missing_ok=True)
        print(f"cryolens {spec.name}: aborted by the user", flush=True)
        _touch(job_dir / EXIT_ABORTED)
        return exit_code(err)
    except Exception as err:  # every failure: one readable line on stderr (run.err), no outputs
        _cleanup(written, job_dir)
        if isinstance(err, CryolensError):
            msg = str(err)
        else:
            msg = f"internal error: {type(err).__name__}: {err}"
            (job_dir / "cryolens_traceback.txt").write_text(traceback.format_exc())
            msg += f" (traceback in {job_dir / 'cryolens_traceback.txt'})"
        if debug:
            traceback.print_exc()
        print(f"cryolens {spec.name}: ERROR: {msg}", file=sys.stderr, flush=True)
        _touch(job_dir / EXIT_FAILURE)
        return exit_code(err)


def _cleanup(written: list[Path], job_dir: Path) -> None:
    """A failed or aborted job declares no outputs and leaves none half-made."""
    for path in written:
        path.unlink(missing_ok=True)
    (job_dir / NODES_FILE).unlink(missing_ok=True)


def job_from_program_name(prog: str) -> str | None:
    name = Path(prog).name
    prefix = "cryolens-relion-"
    return name[len(prefix):] if name.startswith(prefix) else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cryolens-relion-<job>`` (job from the program name) and of
    ``cryolens-relion --job <job>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    job = job_from_program_name(sys.argv[0])
    if job is None:
        if "--job" in argv:
            i = argv.index("--job")
            job = argv[i + 1] if i + 1 < len(argv) else ""
            del argv[i:i + 2]
        else:
            load_all()
            print("usage: cryolens-relion-<job> --o External/jobNNN/ ... (or cryolens-relion --job NAME ...)\n"
                  f"jobs: {', '.join(sorted(load_all()))}", file=sys.stderr)
            return ExitCode.BAD_INPUT
    try:
        return run_external(job, argv)
    except CryolensError as err:  # unknown job name: still tell the pipeliner, or it waits forever
        print(f"cryolens: error: {err}", file=sys.stderr)
        if "--o" in argv and argv.index("--o") + 1 < len(argv):
            _touch(Path(argv[argv.index("--o") + 1]) / EXIT_FAILURE)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
