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
import contextlib
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# only the standard library and the signal handling at import: `main` catches a signal from its
# first line, and torch, pandas and starfile take seconds to load (imported where used)
from cryolens.core import signals
from cryolens.core.errors import CryolensError, ExitCode, InputError, JobAborted, exit_code, os_error, user_error

if TYPE_CHECKING:
    from cryolens.core.jobs import JobResult, JobSpec

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
    from .star import header_version, read_blocks

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
    """RELION_OUTPUT_NODES.star: the integer type RELION 3.1 reads (and only that: 3.1 warns about
    the label it does not know), or the label 4.0/5.0 read with the integer beside it."""
    import pandas as pd

    from .star import write_blocks

    label_col = 2 if version == "5.0" else 1
    table = pd.DataFrame({
        "rlnPipeLineNodeName": [name for name, _ in nodes],
        "rlnPipeLineNodeType": [NODE_TYPES[kind][0] for _, kind in nodes],
    })
    if version != "3.1":
        table["rlnPipeLineNodeTypeLabel"] = [NODE_TYPES[kind][label_col] for _, kind in nodes]
    write_blocks(job_dir / NODES_FILE, {"output_nodes": table}, 50001 if version == "5.0" else 30001)


# -- command line ---------------------------------------------------------------------------
def build_parser(spec: JobSpec) -> argparse.ArgumentParser:
    from cryolens.core.jobs.flags import add_param_arguments

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
    from cryolens.core.jobs.flags import given_params

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


def _file_name(kind: str, name: str, tables: str) -> str:
    """The file a result goes into: ``<name>.star`` for particle and class sets, ``<name>.<tables>``
    for a table, ``<name>.pdf`` for a figure, and the selection of a class set."""
    if kind == "selection":
        return "backup_selection.star" if name == "class_averages" else f"{name}_selection.star"
    ext = {"table": tables, "figure": "pdf"}.get(kind, "star")
    return f"{name}.{ext}"


def output_files(spec: JobSpec, tables: str = "star") -> list[str]:
    """The files a run of ``spec`` may write (its declared outputs): what a re-run clears first."""
    names = [_file_name(o.kind, o.name, tables) for o in spec.outputs]
    return names + [_file_name("selection", o.name, tables) for o in spec.outputs if o.kind == "classes"]


def write_outputs(result: JobResult, out: Path, tables: str = "star", version: str = "5.0",
                  spec: JobSpec | None = None, classes: Any = None) -> list[tuple[str, str]]:
    """Write every result file atomically into ``out`` (a staging folder); return the nodes to
    declare (file name, kind). ``tables``: "star" (RELION), or "csv" (``cryolens run``).
    ``version``: only labels that RELION version knows go into a declared file. A table the
    ``spec`` declares a node (``Output.node``) is one too: per class (``class_id``), with each
    class's image from the input ``classes``, so RELION's Display shows it."""
    from cryolens.core.atomic import atomic_path
    from cryolens.core.figures import save_figure

    from .class2d import per_class_rows, write_backup_selection, write_class_averages
    from .star import write_blocks, write_particles

    nodes: list[tuple[str, str]] = []
    for name, ps in result.particles.items():
        write_particles(ps, out / _file_name("particles", name, tables))
        nodes.append((_file_name("particles", name, tables), "particles"))
    for name, cs in result.classes.items():
        # a class selection (backup_selection.star beside it) is Select's file, the rest the ranker's
        file = _file_name("classes", name, tables)
        if write_class_averages(cs, out / file, version, select=name in result.class_selection):
            nodes.append((file, "classes"))
        else:
            print(f"cryolens: note: {file} holds scores under RELION 4.0+ labels: written, not a node under "
                  f"RELION {version}", flush=True)
    as_node = {o.name for o in spec.outputs if o.node} if spec is not None else set()
    for name, sel in result.class_selection.items():
        write_backup_selection(sel, out / _file_name("selection", name, tables))
    for name, table in result.tables.items():
        path = out / _file_name("table", name, tables)
        if tables == "csv":
            with atomic_path(path) as tmp:
                table.to_csv(tmp, index=False)
        elif name in as_node and "class_id" in table:
            rows = per_class_rows(table, classes)
            write_blocks(path, {name: rows})
            if "rlnReferenceImage" in rows:
                nodes.append((path.name, "classes"))
        else:
            write_blocks(path, {name: table})
    for name, fig in result.figures.items():
        save_figure(fig, out / _file_name("figure", name, tables))
        nodes.append((_file_name("figure", name, tables), "figure"))
    for name, write in result.files.items():  # not nodes: e.g. a built library, for the next run's parameter
        write(out / name)
    return nodes


def out_dir_of(argv: list[str]) -> Path | None:
    """The value of ``--o`` (``--o X`` or ``--o=X``), or None when it is missing or empty."""
    for i, arg in enumerate(argv):
        if arg.startswith("--o="):
            return Path(arg[4:]) if arg[4:] else None
        if arg == "--o" and i + 1 < len(argv) and argv[i + 1] and not argv[i + 1].startswith("--"):
            return Path(argv[i + 1])
    return None


def mark_exit(job_dir: Path, name: str) -> bool:
    """Touch the exit file ``name`` RELION waits for. Never raises: a job dir that is a file, not
    writable or on a full disk gets one line on stderr (RELION then cannot learn the end)."""
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / name).touch()
        return True
    except OSError as err:
        why = os_error(OSError(err.errno, err.strerror or str(err)), job_dir / name)
        _say(f"cryolens: cannot write the exit file: {why or err}")
        return False


def _say(line: str, stream=None) -> None:
    """Print one line; a closed or broken stream must not turn a clean end into a crash."""
    try:
        print(line, file=stream or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


# -- the protocol ---------------------------------------------------------------------------
TRACEBACK_FILE = "cryolens_traceback.txt"


def run_external(job_name: str, argv: list[str]) -> int:
    """Run one External job invocation. The exit files tell RELION how it ended; the process exits
    with the ExitCode table (0 success, 1 failed, 2 bad input, 3 aborted, 130/143 SIGINT/SIGTERM:
    both recorded as RELION_JOB_EXIT_ABORTED, the state of a job stopped from outside)."""
    from cryolens.core.jobs import get_job

    spec = get_job(job_name)
    try:
        inv = parse(spec, argv)
    except SystemExit as exc:  # argparse: usage error (its message is on stderr) or --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.BAD_INPUT)
        out = out_dir_of(argv)
        if code and out is not None:
            mark_exit(out, EXIT_FAILURE)
        return code
    return _run(spec, inv)


def _run(spec: JobSpec, inv: Invocation) -> int:
    from cryolens.core.atomic import clear_outputs, staged
    from cryolens.core.jobs import JobContext, prepare_params, run_job

    job_dir = inv.out
    t0 = time.monotonic()
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        for stale in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
            (job_dir / stale).unlink(missing_ok=True)
        # an earlier run's outputs in this job dir are not this run's: gone before it starts
        clear_outputs(job_dir, output_files(spec) + [NODES_FILE, TRACEBACK_FILE],
                      inputs=[getattr(inv.args, f) for f in INPUT_FLAGS])
        if inv.unknown:
            print(f"cryolens: note: ignoring unknown arguments {' '.join(inv.unknown)}", file=sys.stderr)
        version = inv.args.relion_version or detect_version(job_dir)
        log = lambda s: print(s, flush=True)  # noqa: E731
        log(f"cryolens {spec.name}: RELION {version} External job in {job_dir}")
        from cryolens.core.progress import Progress
        from cryolens.core.runtime import cap_threads, resolve_device, seed_everything

        device = resolve_device(inv.args.device)
        seed_everything(inv.args.seed)
        threads = cap_threads(inv.args.j, log)
        params = prepare_params(spec, inv.params, device)  # the library or model checked before any input
        inputs = load_inputs(spec, inv.args)
        with Progress(spec.name, stream=sys.stdout, force_plain=True) as prog:
            ctx = JobContext(out_dir=job_dir, device=device, seed=inv.args.seed, threads=threads,
                             progress=prog, should_stop=lambda: (job_dir / ABORT_NOW).exists(), log=log)
            ctx.check_abort()
            result = run_job(spec, inputs, params, ctx)
            ctx.check_abort()
        with staged(job_dir) as stage:
            nodes = write_outputs(result, stage.dir, version=version, spec=spec, classes=inputs.get("classes"))
            write_output_nodes(stage.dir, [(str(job_dir / name), kind) for name, kind in nodes], version)
            signals.finishing()  # the outputs move in together: a signal now waits for the end
            stage.commit()
        for line in result.summary:
            log(line)
        log(f"cryolens {spec.name}: done in {time.monotonic() - t0:.1f} s")
        mark_exit(job_dir, EXIT_SUCCESS)
        return ExitCode.SUCCESS
    except BaseException as err:  # every end but success: one line, no outputs, an exit file
        signals.finishing()
        return _fail(spec, job_dir, err, inv.args.debug is not None)


def _fail(spec: JobSpec, job_dir: Path, err: BaseException, debug: bool) -> int:
    """Tell RELION (exit file) and the user (one line) how the run ended; never raises."""
    if isinstance(err, (JobAborted, KeyboardInterrupt)):
        with contextlib.suppress(OSError):
            (job_dir / ABORT_NOW).unlink(missing_ok=True)
        why = "aborted by the user" if isinstance(err, JobAborted) else f"interrupted ({err})"
        _say(f"cryolens {spec.name}: {why}")
        mark_exit(job_dir, EXIT_ABORTED)
        return exit_code(err)
    plain = user_error(err)
    if plain is not None:
        msg = str(plain)
    else:
        msg = f"internal error: {type(err).__name__}: {err}"
        try:
            (job_dir / TRACEBACK_FILE).write_text("".join(traceback.format_exception(err)))
            msg += f" (traceback in {job_dir / TRACEBACK_FILE})"
        except OSError:
            pass
    if debug:
        with contextlib.suppress(Exception):
            traceback.print_exception(err)
    _say(f"cryolens {spec.name}: ERROR: {msg}")
    mark_exit(job_dir, EXIT_FAILURE)
    return exit_code(err)


def job_from_program_name(prog: str) -> str | None:
    name = Path(prog).name
    prefix = "cryolens-relion-"
    return name[len(prefix):] if name.startswith(prefix) else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cryolens-relion-<job>`` (job from the program name) and of
    ``cryolens-relion --job <job>``. SIGINT/SIGTERM are handled from here on: one that comes
    before the run has begun (torch still loading) ends it as aborted too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with signals.raise_on_signals():
        try:
            return _main(argv)
        except KeyboardInterrupt as err:
            signals.finishing()
            _say(f"cryolens: interrupted ({err or 'SIGINT'})")
            out = out_dir_of(argv)
            if out is not None:
                mark_exit(out, EXIT_ABORTED)
            return exit_code(err)


def _main(argv: list[str]) -> int:
    from cryolens.core.jobs import load_all

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
        _say(f"cryolens: error: {err}")
        out = out_dir_of(argv)
        if out is not None:
            mark_exit(out, EXIT_FAILURE)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
