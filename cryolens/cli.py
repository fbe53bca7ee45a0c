"""The ``cryolens`` command: neutral work on any STAR / .cs / MRC file.

    cryolens info FILE...            what a file holds (particles, classes, maps, pipelines)
    cryolens convert IN OUT          RELION STAR <-> cryoSPARC .cs, identity preserved
    cryolens example OUTDIR          write the built-in example RELION project
    cryolens simulate OUTDIR         phantom proteins, particles, junk and 2D classes with ground truth
    cryolens jobs                    list the registered jobs and their parameters
    cryolens run JOB --particles F --out DIR [--PARAM VALUE ...]   run a job from the shell

Errors print one line naming the file and the problem (a traceback only with --debug).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from cryolens import __version__
from cryolens.core.errors import CryolensError, JobAborted


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d("auto"),
                        help="where tensors live: auto = CUDA when present (default), else CPU")
    parser.add_argument("--seed", type=int, default=d(0), help="random seed (same seed, same output on CPU)")
    parser.add_argument("--debug", action="store_true", default=d(False), help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryolens", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"cryolens {__version__}")
    _common(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="summarise STAR, .cs, MRC stacks and maps")
    _common(info, suppress=True)
    info.add_argument("paths", nargs="+", metavar="FILE")
    info.add_argument("--project-dir", help="directory image paths are relative to (default: found)")
    info.add_argument("--stats", action="store_true",
                      help="also stream every particle image and report pixel statistics")
    info.add_argument("--batch-size", type=int, default=512)

    conv = sub.add_parser("convert", help="convert particles between RELION STAR and cryoSPARC .cs")
    _common(conv, suppress=True)
    conv.add_argument("input", metavar="IN")
    conv.add_argument("output", metavar="OUT")
    conv.add_argument("--project-dir", help="directory image paths are relative to (default: found)")
    conv.add_argument("--relion-version", choices=["3.0", "3.1", "4.0", "5.0"],
                      help="STAR flavour to write (default: the input's, or 3.1)")

    from cryolens.simulate_cmd import add_parser as add_simulate

    _common(add_simulate(sub), suppress=True)

    from cryolens.identify_cmd import add_library_parser
    from cryolens.train_cmd import add_parser as add_train

    add_library_parser(sub, lambda leaf: _common(leaf, suppress=True))
    add_train(sub, lambda leaf: _common(leaf, suppress=True))

    jobs = sub.add_parser("jobs", help="list the registered jobs and their parameters")
    _common(jobs, suppress=True)

    runp = sub.add_parser("run", help="run a registered job from the shell (job parameters after the job name)",
                          add_help=False)
    runp.add_argument("job", metavar="JOB")
    runp.add_argument("job_args", nargs=argparse.REMAINDER, metavar="...")

    ex = sub.add_parser("example", help="write the built-in example RELION project")
    _common(ex, suppress=True)
    ex.add_argument("outdir", metavar="OUTDIR")
    ex.add_argument("--n", type=int, default=200, help="number of particles (default 200)")
    ex.add_argument("--box", type=int, default=64, help="box size in pixels (default 64)")
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cryolens: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        import warnings

        warnings.showwarning = _warning_line  # one line, no source excerpt
    try:
        from cryolens.core.runtime import resolve_device, seed_everything

        args.device = resolve_device(args.device)
        seed_everything(args.seed)
        if args.command == "info":
            from cryolens.info import run_info

            return run_info(args)
        if args.command == "convert":
            return run_convert(args)
        if args.command == "example":
            return run_example(args)
        if args.command == "simulate":
            from cryolens.simulate_cmd import run_simulate

            return run_simulate(args)
        if args.command == "library":
            from cryolens.identify_cmd import run_library

            return run_library(args)
        if args.command == "train":
            from cryolens.train_cmd import run_train

            args.argv = list(argv if argv is not None else sys.argv[1:])
            return run_train(args)
        if args.command == "jobs":
            return run_jobs_list()
        if args.command == "run":
            from cryolens.shell_job import run_shell_job

            return run_shell_job(args.job, args.job_args, device=args.device, seed=args.seed, debug=args.debug)
    except CryolensError as err:
        if args.debug:
            traceback.print_exc()
        print(f"cryolens: error: {err}", file=sys.stderr)
        return 2
    except JobAborted:
        print("cryolens: aborted", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("cryolens: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"cryolens: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)",
                  file=sys.stderr)
        return 1
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from cryolens.formats import kind_of, read_particles, write_particles

    src, dst = Path(args.input), Path(args.output)
    if src.exists() and dst.exists() and os.path.samefile(src, dst):
        raise CryolensError("refusing to overwrite the input file", dst)
    kind_of(dst)  # fail on a bad output name before reading anything
    ps = read_particles(src, project_dir=args.project_dir)
    write_particles(ps, dst, relion_version=args.relion_version)
    print(f"wrote {len(ps)} particles: {src} -> {dst}")
    return 0


def run_jobs_list() -> int:
    from cryolens.core.jobs import load_all
    from cryolens.core.jobs.base import describe_params

    for name, spec in sorted(load_all().items()):
        print(f"{name}: {spec.summary}")
        print("\n".join(describe_params(spec)))
    return 0


def run_example(args: argparse.Namespace) -> int:
    from cryolens.core.simulate.example import example_dataset
    from cryolens.core.mrc import write_map, write_stack
    from cryolens.relion_ext.star import write_particles

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    volume, ps, images = example_dataset(n=args.n, box=args.box, seed=args.seed, device=args.device)
    write_map(out / "example_volume.mrc", volume, float(ps.table["pixel_size"].iloc[0]))
    write_stack(out / "particles.mrcs", images, float(ps.table["pixel_size"].iloc[0]))
    ps.root = out
    write_particles(ps, out / "particles.star", version="3.1")
    print(f"wrote example project {out}: {len(ps)} particles of {args.box} px "
          f"(particles.star, particles.mrcs, example_volume.mrc)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
