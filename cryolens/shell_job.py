"""``cryolens run JOB ...``: any registered job from the shell, on STAR or .cs files.

Results are written into ``--out`` in the input's format (``--format`` overrides): particle
sets as ``<name>.star`` / ``<name>.cs``, tables as ``<name>.csv``, figures as PDF.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cryolens.core.jobs import JobContext, JobResult, get_job, run_job
from cryolens.core.jobs.base import add_param_arguments, given_params


def build_parser(spec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"cryolens run {spec.name}", description=spec.summary)
    kinds = {i.kind for i in spec.inputs}
    if "particles" in kinds:
        p.add_argument("--particles", help="particles: RELION .star or cryoSPARC .cs")
    if "classes" in kinds:
        p.add_argument("--classes-in", dest="classes_in",
                       help="2D classes: RELION run_itNNN_{data,model,optimiser}.star / job dir, or cryoSPARC templates .cs")
        p.add_argument("--class-particles", help="cryoSPARC particles .cs with alignments2D (with a templates .cs)")
    if "volume" in kinds:
        p.add_argument("--volume", help="3D map (.mrc)")
    if "mask" in kinds:
        p.add_argument("--mask", help="3D mask (.mrc)")
    p.add_argument("--project-dir", help="directory image paths are relative to")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=["relion", "cryosparc"], help="output format (default: the input's)")
    add_param_arguments(p, spec)
    return p


def load_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
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
            from cryolens.core.mrc import read_map

            inputs[name] = read_map(getattr(args, name))
    return inputs, fmt


def write_results(result: JobResult, out: Path, fmt: str) -> list[Path]:
    from cryolens.core.atomic import atomic_path
    from cryolens.core.figures import save_figure

    written: list[Path] = []
    for name, ps in result.particles.items():
        path = out / f"{name}.{'cs' if fmt == 'cryosparc' else 'star'}"
        if fmt == "cryosparc":
            from cryolens.cryosparc_ext.csfile import write_particles
        else:
            from cryolens.relion_ext.star import write_particles
        write_particles(ps, path)
        written.append(path)
    for name, cs in result.classes.items():
        if fmt == "cryosparc":
            from cryolens.cryosparc_ext.csfile import write_classes

            path = out / f"{name}.cs"
            write_classes(cs, path)
        else:
            from cryolens.relion_ext.class2d import write_class_averages

            path = out / f"{name}.star"
            write_class_averages(cs, path)
        written.append(path)
    for name, table in result.tables.items():
        path = out / f"{name}.csv"
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        written.append(path)
    for name, fig in result.figures.items():
        written.append(save_figure(fig, out / f"{name}.pdf"))
    return written


def run_shell_job(job: str, argv: list[str], device, seed: int, debug: bool) -> int:
    spec = get_job(job)
    args = build_parser(spec).parse_args(argv)
    params = given_params(args)
    inputs, fmt = load_inputs(args)
    out = Path(args.out)
    from cryolens.core.progress import Progress

    written: list[Path] = []
    try:
        with Progress(spec.name) as prog:
            ctx = JobContext(out_dir=out, device=device, seed=seed, progress=prog)
            result = run_job(spec, inputs, params, ctx)
        written = write_results(result, out, args.format or fmt)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for line in result.summary:
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_shell_job(sys.argv[1], sys.argv[2:], "cpu", 0, False))
