"""Write a simulated data set with ground truth (a RELION project RELION opens, .cs)

Species are phantom proteins (core.simulate.proteins); particles carry CTFs, noise, junk and
ground truth (core.simulate.particles); 2D classes come from the fast synthesis
(core.simulate.classes) and/or a real relion_refine run (relion_ext.simulate). The same seed
gives the same bytes.

Example usage
-------------
$ cryolens simulate sim/ --n 2000 --species 3 --snr 0.1 --junk 0.1 --classes 12 --class-route both --cs
$ cryolens simulate small/ --n 120 --species 2 --box 48 --pixel-size 4 --seed 5
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cryolens.core.jobs.base import Param
from cryolens.core.jobs.flags import add_options


# the ranges are checked before anything is written (cli: check_options)
OPTIONS = (
    Param("n", int, 2000, "particles", min=1),
    Param("species", int, 3, "number of phantom proteins", min=1),
    Param("box", int, 64, "box size, px (the projector needs at least 8)", min=8),
    Param("pixel_size", float, 3.0, "pixel size, A", min=0, min_exclusive=True),
    Param("snr", float, 0.1, "signal-to-noise ratio", min=0, min_exclusive=True),
    Param("junk", float, 0.1, "fraction of junk particles", min=0, max=1),
    Param("noise", str, "realistic", "noise model", choices=("white", "coloured", "realistic")),
    Param("classes", int, 12, "2D classes to make (0: none)", min=0),
    Param("class_route", str, "fast", "fast synthesis, a real relion_refine run, both, or none",
          choices=("fast", "relion", "both", "none")),
    Param("relion_iters", int, 5, "relion_refine iterations", min=1),
    Param("relion_version", str, "3.1", "the RELION version whose default_pipeline.star and job.star files "
          "the project gets (RELION opens it as its own project)", choices=("3.1", "4.0", "5.0")),
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", metavar="OUTDIR", help="project directory to write (created)")
    add_options(p, OPTIONS)
    p.add_argument("--cs", action="store_true", help="also write the particles as a cryoSPARC .cs")


def _short(name: str) -> str:
    return str(name).split("-s")[0][:16]  # phantom names end in their seed


def main(args: argparse.Namespace) -> int:
    from cryolens.core.figures import gallery
    from cryolens.core.simulate.classes import synthesize_classes
    from cryolens.core.simulate.particles import ParticleSimulator, SimulatorConfig, Species
    from cryolens.core.simulate.proteins import phantom_library
    from cryolens.relion_ext.simulate import (CLASS2D_JOB, class2d_with_truth, import_particles, write_project,
                                             write_simulated_pipeline)

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    px, box = args.pixel_size, args.box
    phantoms = phantom_library(args.species, seed=args.seed, box=box, pixel_size=px)
    (out / "Simulated").mkdir(exist_ok=True)
    for ph in phantoms:
        ph.save(out / "Simulated" / f"map_{ph.name}.mrc")
    species = {ph.name: Species.from_phantom(ph) for ph in phantoms}
    sim = ParticleSimulator(species, SimulatorConfig(box=box, pixel_size=px, snr=args.snr, noise=args.noise,
                                                     junk=args.junk), device=args.device)
    ps, images, truth = sim.dataset(args.n, seed=args.seed)
    star = write_project(out, ps, images, truth)
    imported = import_particles(out, star)
    class2d = None
    print(f"wrote {len(ps)} particles of {box} px at {px} A/px ({', '.join(species)}; "
          f"{int(truth['is_junk'].sum())} junk) -> {star}")
    if args.cs:
        from cryolens.cryosparc_ext.csfile import write_particles as write_cs
        from cryolens.relion_ext.star import read_particles

        write_cs(read_particles(star, root=out), out / "Simulated" / "particles.cs")
        print(f"wrote {out / 'Simulated' / 'particles.cs'}")

    rows = [("maps", np.stack([ph.density.sum(0) for ph in phantoms]), [_short(ph.name) for ph in phantoms]),
            ("particles", images[:10], [_short(s) if not j else str(jt) for s, j, jt in
                                        zip(truth["species"][:10], truth["is_junk"][:10], truth["junk_type"][:10])])]
    summary = {"n_particles": len(ps), "species": [ph.name for ph in phantoms], "seed": args.seed}
    if args.class_route in ("fast", "both") and args.classes > 0:
        from cryolens.core.mrc import write_stack

        n_junk = max(1, args.classes // 6)
        cs, ct = synthesize_classes(species, n_classes=args.classes, box=box, pixel_size=px, snr=args.snr,
                                    noise=args.noise, junk_classes={"empty": n_junk, "carbon_edge": 1, "over_masked": 1},
                                    seed=args.seed, device=args.device)
        write_stack(out / "Simulated" / "classes_fast.mrcs", cs.images, px)
        ct.table.to_csv(out / "Simulated" / "classes_fast_truth.csv", index=False)
        rows.append(("fast classes", cs.images, [k if k != "protein" else _short(s) for k, s in
                                                zip(ct.table["truth_kind"], ct.table["truth_species"])]))
        summary["fast_classes"] = len(cs)
        print(f"wrote {len(cs)} fast synthetic class averages -> {out / 'Simulated' / 'classes_fast.mrcs'}")
    if args.class_route in ("relion", "both") and args.classes > 0:
        cs, ct = class2d_with_truth(out, imported, truth, "Simulated/particles.mrcs",
                                    K=args.classes, iters=args.relion_iters, diameter_A=0.9 * box * px,
                                    seed=max(1, args.seed), job=CLASS2D_JOB.rstrip("/"), pipeline_control=True)
        class2d = out / CLASS2D_JOB / f"run_it{args.relion_iters:03d}_data.star"
        ct.to_csv(out / CLASS2D_JOB / "classes_truth.csv", index=False)
        rows.append(("RELION classes", cs.images, [f"{_short(s) or 'junk'} {p:.2f}" for s, p in
                                                  zip(ct["truth_species"], ct["truth_purity"])]))
        summary["relion_classes"] = len(cs)
        print(f"RELION Class2D: {len(cs)} classes -> {out / CLASS2D_JOB} (truth: classes_truth.csv)")
    pipeline = write_simulated_pipeline(out, imported, class2d, args.classes, args.relion_iters, args.relion_version)
    print(f"RELION {args.relion_version} project: {pipeline} ({imported}"
          + (f", {CLASS2D_JOB}" if class2d else "") + "); open it with relion in that directory")
    path = gallery(out / "gallery.png", rows)
    (out / "Simulated" / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"gallery: {path}")
    return 0
