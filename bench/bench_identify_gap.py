"""Where the identity embedding loses its queries -> bench/results/identify_gap.json

The shipped embedding ranks its training renders (``class_average_like``) far better than class
averages simulated from particles. This diagnostic takes unseen phantom proteins, a 24-entry
library, and scores the same proteins' queries made six ways, switching one factor at a time:

- ``render``: a projection made class-average-like (``class_average_like``) without the transfer
  of a CTF-corrected average, as the recipe trained before ``--ctf-corrected``;
- ``render_ctf_corrected``: the same renders with that transfer (the recipe's default now);
- ``particles``: class averages of simulated particles as the benchmark and calibration use
  (CTF, SNR 0.05-0.1 per particle, 40-200 members, view spread, in-plane and shift errors);
- ``particles_high_snr``: the same at particle SNR 1 (noise nearly gone);
- ``particles_aligned``: SNR 0.05-0.1 but no view spread and no alignment errors;
- ``particles_high_snr_aligned``: both (what remains is CTF correction and the envelope).

Top-1 entry of the embedding and of correlation (NCC over rotations and shifts) per variant.

    .venv/bin/python bench/bench_identify_gap.py [--proteins 24] [--classes 4]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "identify_gap.json"))
    ap.add_argument("--proteins", type=int, default=24)
    ap.add_argument("--classes", type=int, default=4, help="queries per protein and variant")
    ap.add_argument("--views", type=int, default=48, help="library references per entry")
    ap.add_argument("--model", help="identity model (default: the shipped one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from cryolens.core.geometry import random_rotations
    from cryolens.core.identify import IdentityModel, prepare_library, prepare_queries, score_entries
    from cryolens.core.identify.library import Library
    from cryolens.core.projector import Projector
    from cryolens.core.simulate.classes import class_average_like, synthesize_classes
    from cryolens.core.simulate.proteins import phantom_library

    box, px = 64, 3.0
    model = IdentityModel.load(args.model)
    proteins = phantom_library(args.proteins, seed=20261122, box=box, pixel_size=px)  # a seed no recipe draws
    lib = Library(box, px, n_views=args.views)
    for ph in proteins:
        lib.add_volume(ph.density, ph.name, source="phantom")
    prepare_library(lib, None)  # the decoys (the first row's scoring embeds the library, as a job does)
    names = lib.entries["name"].astype(str).to_numpy()
    n = args.classes * len(proteins)
    species = {ph.name: ph.density for ph in proteins}

    def particles(**kw):
        cs, truth = synthesize_classes(species, n, box=box, pixel_size=px, members=(40, 200), seed=31, **kw)
        return cs.images, truth.table["truth_species"].astype(str).to_numpy()

    def render(ctf_corrected: bool):
        g = torch.Generator().manual_seed(31)
        imgs, labels = [], []
        for k, ph in enumerate(proteins):
            rot = torch.as_tensor(random_rotations(args.classes, seed=100 + k), dtype=torch.float32)
            imgs.append(class_average_like(Projector(ph.density).project(rot), px, g, ctf_corrected=ctf_corrected))
            labels += [ph.name] * args.classes
        return torch.cat(imgs).numpy(), np.array(labels)

    variants = {
        "render": lambda: render(False),
        "render_ctf_corrected": lambda: render(True),
        "particles": lambda: particles(snr=(0.05, 0.1)),
        "particles_high_snr": lambda: particles(snr=1.0),
        "particles_aligned": lambda: particles(snr=(0.05, 0.1), view_spread_deg=0.0, psi_error_deg=0.0,
                                               shift_error_A=0.0),
        "particles_high_snr_aligned": lambda: particles(snr=1.0, view_spread_deg=0.0, psi_error_deg=0.0,
                                                        shift_error_A=0.0),
    }
    out = {"library": {"entries": len(lib), "views_per_entry": args.views, "box": box, "pixel_size": px},
           "model": model.fingerprint(), "results": {}}
    for label, make in variants.items():
        t = time.perf_counter()
        images, truth = make()
        q = prepare_queries(images, px, lib)
        row = {"queries": int(len(q))}
        for mode in ("embedding", "correlation"):
            es = score_entries(q, lib, mode, model)
            row[f"{mode}_top1"] = float((names[es.scores.argmax(1)] == truth).mean())
        row["seconds"] = time.perf_counter() - t
        out["results"][label] = row
        print(f"{label:28s} embedding top-1 {row['embedding_top1']:.3f}  correlation top-1 "
              f"{row['correlation_top1']:.3f}  ({row['seconds']:.0f} s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
