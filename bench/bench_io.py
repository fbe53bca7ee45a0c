"""Image streaming: ImageSource.iter_batches against a raw read of the same stack, same run.

Writes an N x box x box float32 stack (default 100,000 x 128^2 = 6.5 GB) to a temporary folder,
then, after one warm-up pass of each, times ``--rounds`` rounds of every method, alternating (the
order rotates each round, so page-cache eviction and co-tenant load hit all alike):

  raw              numpy.fromfile of the whole stack (the reference: ``baseline``, ``ratio``)
  raw_chunked      the file read in batch-sized pieces into fresh buffers (no 6.5 GB allocation)
  reader           ImageSource.iter_batches in order, prefetch on (``value``)
  reader_noprefetch, reader_shuffled   without the prefetch thread / on shuffled rows
  memmap, memmap_shuffled   the alternative design: slices / fancy indexing of core.mrc.open_stack
  reader_work(_noprefetch)  a consumer that normalises each batch, with / without prefetch
                            (on the first ``--work-n`` rows: it is compute-bound)

and prints one JSON object of median particles/s. The stack is removed afterwards.
Example: .venv/bin/python bench/bench_io.py --n 100000 --box 128
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryolens.core import images, mrc


def write_stack(path: Path, n: int, box: int, seed: int, chunk: int = 1024) -> None:
    rng = np.random.default_rng(seed)
    with mrc.stack_writer(path, (n, box, box), 1.0) as out:
        for s in range(0, n, chunk):
            k = min(chunk, n - s)
            out[s:s + k] = rng.standard_normal((k, box, box), dtype=np.float32)


def raw(path: Path, n: int, box: int, **_) -> float:
    t = time.perf_counter()
    a = np.fromfile(path, dtype=np.float32, offset=1024)
    dt = time.perf_counter() - t
    assert a.size == n * box * box
    return n / dt


def raw_chunked(path: Path, n: int, box: int, batch: int, **_) -> float:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        f.seek(1024)
        for s in range(0, n, batch):
            buf = np.empty((min(batch, n - s), box, box), np.float32)
            assert f.readinto(buf) == buf.nbytes
    return n / (time.perf_counter() - t)


def reader(src: images.ImageSource, batch: int, device: str, prefetch: bool = True, rows=None, work=False,
           **_) -> float:
    count = 0
    t = time.perf_counter()
    for r, b in src.iter_batches(batch_size=batch, rows=rows, device=device, prefetch=prefetch):
        if work:  # a consumer that computes, so reading can overlap with it
            images.normalize_background(b)
        count += b.shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    assert count == len(src if rows is None else rows)
    return count / dt


def memmap(path: Path, n: int, box: int, batch: int, rows=None, **_) -> float:
    mm = mrc.open_stack(path)
    t = time.perf_counter()
    for s in range(0, n, batch):
        out = np.empty((min(batch, n - s), box, box), np.float32)
        if rows is None:
            out[...] = mm[s:s + batch]
        else:  # what ImageSource would do with memory maps: gather sorted, scatter back
            r = rows[s:s + batch]
            order = np.argsort(r)
            out[order] = mm[r[order]]
    dt = time.perf_counter() - t
    del mm
    return n / dt


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work-n", type=int, default=20_000, help="rows for the compute-bound variants")
    ap.add_argument("--dir", default=None, help="folder for the temporary stack (default: the system temp dir)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    need = 1024 + args.n * args.box * args.box * 4
    parent = Path(args.dir or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < need * 1.05:
        raise SystemExit(f"{parent}: {free / 1e9:.1f} GB free, the stack needs {need / 1e9:.1f} GB; use a smaller --n")
    tmp = Path(tempfile.mkdtemp(prefix="cryolens-bench-io-", dir=parent))
    try:
        path = tmp / "particles.mrcs"
        write_stack(path, args.n, args.box, args.seed)
        src = images.ImageSource([path], np.zeros(args.n, np.int64), np.arange(args.n)).validate()
        shuffled = np.random.default_rng(args.seed).permutation(args.n)
        kw = dict(path=path, n=args.n, box=args.box, batch=args.batch, device=args.device, src=src)
        work_rows = np.arange(min(args.work_n, args.n))
        methods = {
            "raw": lambda: raw(**kw),
            "raw_chunked": lambda: raw_chunked(**kw),
            "reader": lambda: reader(**kw),
            "reader_noprefetch": lambda: reader(prefetch=False, **kw),
            "reader_shuffled": lambda: reader(rows=shuffled, **kw),
            "memmap": lambda: memmap(**kw),
            "memmap_shuffled": lambda: memmap(rows=shuffled, **kw),
            "reader_work": lambda: reader(work=True, rows=work_rows, **kw),
            "reader_work_noprefetch": lambda: reader(work=True, prefetch=False, rows=work_rows, **kw),
        }
        load = [os.getloadavg()[0]]
        for fn in methods.values():  # warm-up: page cache, allocator, threads
            fn()
        runs: dict[str, list[float]] = {k: [] for k in methods}
        names = list(methods)
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                runs[k].append(methods[k]())
        load.append(os.getloadavg()[0])
        src.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {
        "metric": "image_stream_particles_per_s",
        "value": round(med["reader"]),
        "baseline": round(med["raw"]),
        "ratio": round(med["reader"] / med["raw"], 3),
        "ratio_vs_raw_chunked": round(med["reader"] / med["raw_chunked"], 3),
        "reader_vs_memmap": round(med["reader"] / med["memmap"], 3),
        "reader_vs_memmap_shuffled": round(med["reader_shuffled"] / med["memmap_shuffled"], 3),
        "prefetch_gain_with_work": round(med["reader_work"] / med["reader_work_noprefetch"], 3),
        "medians": {k: round(v) for k, v in med.items()},
        "runs": {k: [round(x) for x in v] for k, v in runs.items()},
        "n": args.n, "box": args.box, "batch": args.batch, "rounds": args.rounds, "seed": args.seed,
        "device": args.device, "file_gb": round(need / 1e9, 2), "torch_threads": torch.get_num_threads(),
        "load_avg_1min": [round(x, 2) for x in load],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
