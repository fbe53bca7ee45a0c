"""identify's brute-force NCC in the library's box vs in a box fitted to each class's particle, on
foreign class averages (the corpus's relion_project runs): retrieval and time, same classes, same
library. A lead for issue 15's speed goal, not the shipped search.

The library box must hold the largest entry (96 px at 5 A for the corpus proteins), while a small
protein fills a few pixels of it: NCC inside the library's mask is then mostly background. Here each
class's particle radius is estimated (radius of gyration of its thresholded positive mass after a
light blur, background from the outer ring), the class and every reference are cropped to
``--box-factor`` times that radius (a multiple of 8 px, at least 24), and NCC runs there, classes
grouped by box. Queries and library are ``bench_identify_foreign``'s (all proteins in the library).

    python bench/bench_identify_box.py [--corpus DIR] [--box-factor 5] [--out results.json]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_identify_foreign import (PHANTOM_SEED, add_entries, fitting_maps, log, prepared_by_run,  # noqa: E402
                                    queries_of, rank_of_truth)
from protocol import emit, load_corpus  # noqa: E402


def particle_radius(images: torch.Tensor, sigma: float = 1.5, k_sd: float = 1.0) -> np.ndarray:
    """(N,) radius of gyration (px) of each image's positive mass above the outer ring's level."""
    x = torch.as_tensor(images, dtype=torch.float32)
    b = x.shape[-1]
    f = torch.fft.fftfreq(b)
    blur = torch.exp(-2 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    xs = torch.fft.ifft2(torch.fft.fft2(x) * blur).real
    yy, xx = torch.meshgrid(torch.arange(b) - b // 2, torch.arange(b) - b // 2, indexing="ij")
    r = torch.sqrt(yy.float() ** 2 + xx.float() ** 2)
    ring = (r >= 0.40 * b) & (r < 0.45 * b)
    level = xs[:, ring].median(1).values + k_sd * xs[:, ring].std(1)
    m = torch.clamp(xs - level[:, None, None], min=0) * (r < 0.45 * b)
    tot = m.sum((1, 2)) + 1e-9
    cy, cx = (m * yy).sum((1, 2)) / tot, (m * xx).sum((1, 2)) / tot
    rg = torch.sqrt((m * ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)).sum((1, 2)) / tot)
    return rg.numpy()


def crop(x: torch.Tensor, n: int) -> torch.Tensor:
    s = x.shape[-1] // 2 - n // 2
    return x[..., s:s + n, s:s + n]


def best_per_entry(q: torch.Tensor, refs: torch.Tensor, ent: np.ndarray, n_entries: int, box: int,
                   max_freq: float) -> np.ndarray:
    from cryolens.core.correlate import ncc_search
    from cryolens.core.index import group_max

    m = ncc_search(q, refs, n_psi=36, max_shift_px=max(2, int(round(0.05 * box))), max_freq=max_freq)
    return group_max(torch.from_numpy(m.score.astype(np.float32)), torch.from_numpy(np.array(ent, np.int64)),
                     n_entries)[0].numpy()


def figures(scores: np.ndarray, names: np.ndarray, truth: np.ndarray) -> dict:
    ranks = np.array([rank_of_truth(scores[i], names, truth[i]) for i in range(len(truth))])
    return {"R@1": float((ranks <= 1).mean()), "R@5": float((ranks <= 5).mean()),
            "median_rank": float(np.median(ranks))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "cryolens" / "corpus")
    ap.add_argument("--box-factor", type=float, default=5.0, help="cropped box = this x the particle's radius")
    ap.add_argument("--phantoms", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from cryolens.core.identify import Library
    from cryolens.core.identify.score import _max_freq

    t0 = time.perf_counter()
    runs = [r for r in load_corpus(args.corpus) if r.generator == "relion_project"]
    queries = queries_of(runs, 0.7, 20)
    lib = Library(96, 5.0, 15.0, 200)
    maps, _ = fitting_maps(runs, args.corpus, lib)
    add_entries(lib, maps, (), args.phantoms, PHANTOM_SEED)
    names = lib.entries["name"].astype(str).to_numpy()
    queries = queries[queries["species"].isin(list(names))].reset_index(drop=True)
    prepared = prepared_by_run(queries, runs, lib)
    q = torch.cat([prepared[run] for run in sorted(prepared)])
    truth = np.concatenate([g["species"].to_numpy(str) for _, g in queries.groupby("run", sort=True)])
    refs = torch.as_tensor(np.asarray(lib.references, np.float32))
    ent = lib.entry_of_reference()
    max_freq = _max_freq(lib)  # the job's band limit
    log(f"{len(q)} classes, {len(lib)} entries x {lib.n_views} views")
    t = time.perf_counter()
    full = best_per_entry(q, refs, ent, len(lib), lib.box, max_freq)
    t_full = time.perf_counter() - t
    radius = particle_radius(q)
    boxes = np.clip(np.ceil(args.box_factor * radius / 8) * 8, 24, lib.box).astype(int)
    fitted = np.full_like(full, -np.inf)
    t = time.perf_counter()
    for n in sorted(set(boxes.tolist())):
        sel = np.flatnonzero(boxes == n)
        fitted[sel] = best_per_entry(crop(q[sel], n), crop(refs, n), ent, len(lib), n, max_freq)
    t_fit = time.perf_counter() - t
    out = {"benchmark": "identify_box", "corpus": str(args.corpus), "threads": args.threads, "classes": int(len(q)),
           "proteins": sorted(set(truth.tolist())), "entries": len(lib), "views": lib.n_views,
           "box_factor": args.box_factor, "boxes": {str(b): int((boxes == b).sum()) for b in sorted(set(boxes))},
           "library_box": {**figures(full, names, truth), "seconds_per_class": t_full / len(q)},
           "particle_box": {**figures(fitted, names, truth), "seconds_per_class": t_fit / len(q)},
           "speed_ratio": t_full / max(t_fit, 1e-9), "seconds": time.perf_counter() - t0}
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
