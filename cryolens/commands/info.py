"""Summarise STAR, .cs, MRC stacks and maps

What a file holds, in a few lines: particles (optics groups, defocus, pose fields, classes,
image stacks checked), Class2D iterations (classes, counts, resolutions), cryoSPARC datasets
(slots) and MRC headers.

Example usage
-------------
$ cryolens info Class2D/job012/run_it025_data.star
$ cryolens info particles.star --stats          # also streams every image (bounded memory)
$ cryolens info J12_particles.cs map.mrc
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.core.errors import ExitCode, InputError
from cryolens.core.jobs.base import Param
from cryolens.core.jobs.flags import add_options
from cryolens.core.particles import ClassSet, ParticleSet
from cryolens.formats import kind_of
from cryolens.relion_ext.class2d import is_class2d


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="FILE")
    parser.add_argument("--project-dir", help="directory image paths are relative to (default: found)")
    parser.add_argument("--stats", action="store_true",
                        help="also stream every particle image and report pixel statistics")
    add_options(parser, (Param("batch_size", int, 512, "images per batch with --stats", min=1),))


def _rng(values: pd.Series, unit: str, fmt: str = ".0f") -> str:
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "no finite values"
    return f"{v.min():{fmt}} to {v.max():{fmt}} {unit} (median {np.median(v):{fmt}})"


def particle_lines(ps: ParticleSet) -> list[str]:
    t = ps.table
    lines = [f"  particles: {len(ps)}"]
    if ps.has("optics_group"):
        for g, rows in t.groupby("optics_group"):
            first = rows.iloc[0]
            parts = [f"{first[k]:g} {u}" for k, u in (("pixel_size", "A/px"), ("box", "px"), ("voltage", "kV"),
                                                     ("cs", "mm Cs"), ("amp_contrast", "Q0")) if k in rows]
            lines.append(f"  optics group {int(g)}: {', '.join(parts)} ({len(rows)} particles)")
    if ps.has("defocus_u"):
        lines.append(f"  defocus U: {_rng(t['defocus_u'], 'A')}")
    have = [f for f in ("rot", "tilt", "psi", "shift_x", "shift_y") if ps.has(f)]
    lines.append(f"  pose fields: {', '.join(have) if have else 'none'}")
    if ps.has("class_id"):
        counts = t["class_id"].value_counts()
        lines.append(f"  classes: {len(counts)} (largest {int(counts.max())} particles, smallest {int(counts.min())})")
    if ps.has("micrograph"):
        lines.append(f"  micrographs: {t['micrograph'].nunique()}")
    if ps.has("image_stack"):
        lines.append(f"  image stacks: {t['image_stack'].nunique()} (paths relative to {ps.root})")
    extra = [c for c in ps.passthrough_columns if not c.startswith("~")]
    if extra:
        lines.append(f"  other columns ({len(extra)}): {', '.join(extra[:12])}{' ...' if len(extra) > 12 else ''}")
    return lines


def image_lines(ps: ParticleSet, args: argparse.Namespace) -> list[str]:
    try:
        src = ps.image_source(validate=True)
    except InputError as err:
        return [f"  images: NOT READABLE: {err}"]
    lines = [f"  images: {len(src)} of {src.box}x{src.box} px, all stacks present and long enough"]
    if getattr(args, "stats", False):
        from cryolens.core.progress import Progress

        # statistics over the finite pixels; the others are counted, not averaged in (a NaN would
        # turn every figure into nan)
        total, bad, s1, s2, lo, hi = 0, 0, 0.0, 0.0, np.inf, -np.inf
        with Progress("reading images") as prog:
            for _, batch in src.iter_batches(batch_size=args.batch_size, device=args.device, progress=prog):
                b = batch.double().reshape(-1)
                ok = torch.isfinite(b)
                n_ok = int(ok.sum())
                bad += b.numel() - n_ok
                if n_ok < b.numel():
                    b = b[ok]
                if not n_ok:
                    continue
                total += n_ok
                s1 += float(b.sum())
                s2 += float((b * b).sum())
                lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
        if total:
            mean = s1 / total
            lines.append(f"  pixel statistics: mean {mean:.4g}, std {np.sqrt(max(s2 / total - mean ** 2, 0)):.4g}, "
                         f"min {lo:.4g}, max {hi:.4g}" + (" (finite pixels)" if bad else ""))
        if bad:
            lines.append(f"  non-finite pixels: {bad} of {bad + total} (NaN or inf)")
    return lines


def class_lines(cs: ClassSet) -> list[str]:
    t = cs.table
    lines = [f"  classes: {len(cs)}" + (f" at {cs.pixel_size:g} A/px" if cs.pixel_size else "")]
    if cs.images is not None:
        lines.append(f"  class images: {cs.images.shape[1]}x{cs.images.shape[2]} px")
    if "n_particles" in t and t["n_particles"].notna().all():
        n = t["n_particles"].astype(int)
        lines.append(f"  particles per class: {', '.join(map(str, n))} ({int((n == 0).sum())} empty)")
    if "resolution" in t:
        res = t["resolution"].to_numpy(float)
        fin = res[np.isfinite(res)]
        if len(fin):
            lines.append(f"  estimated resolution: {fin.min():.1f} to {fin.max():.1f} A"
                         f" ({int((~np.isfinite(res)).sum())} classes without an estimate)")
    return lines


def summarize(path: Path, args: argparse.Namespace) -> list[str]:
    kind = kind_of(path)
    project = getattr(args, "project_dir", None)
    if kind == "mrc":
        from cryolens.core.mrc import stack_info

        info = stack_info(path)
        return [f"{path}: MRC, {info.n} x {info.ny} x {info.nx} ({info.dtype}), "
                f"pixel size {info.pixel_size or 'not set'} A"]
    if is_class2d(path):
        from cryolens.formats import read_classes

        cs = read_classes(path, project_dir=project)
        head = f"{path}: RELION Class2D iteration {cs.meta['relion']['iteration']}"
        out = [head, *class_lines(cs)]
        if cs.particles is not None:
            out += particle_lines(cs.particles)
        return out
    if kind == "star":
        from cryolens.relion_ext.star import read_blocks, read_particles

        blocks = read_blocks(path)
        loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
        if any("rlnImageName" in v.columns for v in loops.values()):
            ps = read_particles(path, root=project)
            return [f"{path}: RELION {ps.meta['relion']['version']} particle STAR", *particle_lines(ps),
                    *image_lines(ps, args)]
        desc = ", ".join(f"data_{k} ({len(v)} rows)" if isinstance(v, pd.DataFrame) else f"data_{k} ({len(v)} values)"
                         for k, v in blocks.items())
        return [f"{path}: STAR file with {desc}"]
    if kind == "cs":
        from cryolens.cryosparc_ext.csfile import load_dataset, read_particles as read_cs

        dset = load_dataset(path)
        prefixes = sorted({f.split("/", 1)[0] for f in dset.fields() if "/" in f})
        out = [f"{path}: cryoSPARC dataset, {len(dset)} rows, {len(dset.fields())} fields",
               f"  slots: {', '.join(prefixes) if prefixes else 'none'}"]
        try:
            ps = read_cs(path, project_dir=project)
        except InputError as err:
            return out + [f"  (not a particle dataset: {err.message})"]
        if len(ps):
            out += particle_lines(ps) + image_lines(ps, args)
        return out
    raise InputError("is a directory (give a file, or a Class2D job directory)", path)


def main(args: argparse.Namespace) -> int:
    failed = 0
    for p in args.paths:
        try:
            lines = summarize(Path(p), args)
        except InputError as err:
            if getattr(args, "debug", False):
                import traceback

                traceback.print_exc()
            print(f"cryolens: error: {err}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print("\n".join(lines), flush=True)
    return ExitCode.BAD_INPUT if failed else ExitCode.SUCCESS
