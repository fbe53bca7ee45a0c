"""Abort latency: how long after the user asks a run to stop it has stopped, per stage.

In-process stages (``should_stop`` turns true ``--after`` s into the stage; latency = until
JobAborted is raised):

  identify_ncc      identify's correlation stage (score_entries, mode correlation) on a random library
                    of ``--refs`` references (the issue's case: 16,000), ``--queries`` class averages
  identify_decoys   the decoy NCC pass alone (a one-reference library, the decoys made large)
  decoy_rendering   rendering the 16 decoy proteins at box ``--box`` (once per library)
  rank_images       rank's image pass over ``--classes`` class averages

Whole-process stages (a real ``cryolens-relion-rank`` on a bare stack of ``--entry-classes`` averages;
latency = from the request, ``--entry-after`` s after the run started, until the process has
exited with RELION_JOB_EXIT_ABORTED written and its outputs removed):

  relion_abort_now  RELION's Abort button (RELION_JOB_ABORT_NOW touched)
  relion_sigint     Ctrl-C (SIGINT)
  relion_sigterm    scancel / a time limit (SIGTERM)

Each figure is the median of ``--trials`` runs (all runs listed). The project promises < 5 s.
Example: .venv/bin/python bench/bench_abort.py --trials 3 --out abort.json

Measured (defaults, 3 trials, 2 shared CPU cores, CPU torch), median s: identify_ncc 0.05 (16,000
references; the issue measured 11.2 s before the per-chunk poll), identify_decoys 0.16 (not
abortable before), decoy_rendering 0.27, rank_images 0.39 (8.0 before features came in chunks),
relion_abort_now 0.91, relion_sigint 1.03, relion_sigterm 0.99 (no exit file was written before).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from protocol import emit

from cryolens.core.errors import JobAborted


class Stopper:
    """should_stop that turns true ``after`` s after ``arm()``; records when it did."""

    def __init__(self, after: float):
        self.after, self.t_stop = after, None

    def arm(self) -> None:
        self.t_stop = time.monotonic() + self.after

    def __call__(self) -> bool:
        return self.t_stop is not None and time.monotonic() >= self.t_stop


def latency(work, after: float) -> float | None:
    """Seconds from the stop request to JobAborted; None when the work finished first."""
    stop = Stopper(after)
    stop.arm()
    try:
        work(stop)
    except JobAborted:
        return time.monotonic() - stop.t_stop
    return None


def random_library(n_refs: int, n_views: int, box: int, decoy_refs: int):
    from cryolens.core.identify.library import Decoys, Library

    rng = np.random.default_rng(0)
    n_entries = max(1, n_refs // n_views)
    lib = Library(box, 3.0, 15.0, n_views)
    lib.entries = pd.DataFrame({"entry": np.arange(n_entries), "name": [f"p{i}" for i in range(n_entries)],
                                "accession": "", "source": "", "provenance": "{}"})
    lib.views = pd.DataFrame({"entry": np.repeat(np.arange(n_entries), n_views), "rot": 0.0, "tilt": 0.0,
                              "psi": 0.0})
    lib.references = rng.standard_normal((n_entries * n_views, box, box)).astype(np.float16)
    per = max(1, decoy_refs // 16)
    lib.decoys = Decoys(rng.standard_normal((16 * per, box, box)).astype(np.float16), per,
                        [f"d{i}" for i in range(16)])
    return lib


def class_images(k: int, box: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:box, :box] - box // 2
    blob = np.exp(-(x ** 2 + y ** 2) / (2 * (box / 8) ** 2))
    return (blob[None] * rng.uniform(0.5, 2, (k, 1, 1)) + 0.3 * rng.standard_normal((k, box, box))).astype(np.float32)


def in_process(args) -> dict[str, list]:
    from cryolens.core.identify.decoys import build_decoys
    from cryolens.core.identify.score import score_entries
    from cryolens.core.particles import ClassSet
    from cryolens.core.rank.model import RankModel

    q = torch.from_numpy(class_images(args.queries, args.box))
    big = random_library(args.refs, 200, args.box, 768)
    decoys_only = random_library(1, 1, args.box, args.refs)
    cs = ClassSet(pd.DataFrame({"class_id": np.arange(1, args.classes + 1)}), class_images(args.classes, args.box), 3.0)
    model = RankModel.load()
    stages = {
        "identify_ncc": lambda s: score_entries(q, big, mode="correlation", should_stop=s),
        "identify_decoys": lambda s: score_entries(q, decoys_only, mode="correlation", should_stop=s),
        "decoy_rendering": lambda s: build_decoys(big, should_stop=s),
        "rank_images": lambda s: model.score(cs, should_stop=s),
    }
    return {name: [latency(work, args.after) for _ in range(args.trials)] for name, work in stages.items()}


def whole_process(args, how: str) -> float | None:
    """One real cryolens-relion-rank run stopped by ``how`` once scoring has started."""
    import mrcfile

    with tempfile.TemporaryDirectory(prefix="bench-abort-") as tmp:
        tmp = Path(tmp)
        with mrcfile.new(tmp / "cls.mrcs") as m:
            m.set_data(class_images(args.entry_classes, args.box))
            m.voxel_size = 3.0
        job = tmp / "External/job001"
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.argv[0] = 'cryolens-relion-rank'; "
                                 "from cryolens.relion_ext.external import main; sys.exit(main())",
                                 "--o", "External/job001/", "--in_parts", "cls.mrcs", "--j", "1"],
                                cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:
            if "External job in" in line:
                break
        time.sleep(args.entry_after)  # inputs read, the model loaded: scoring
        t0 = time.monotonic()
        if how == "abort_now":
            (job / "RELION_JOB_ABORT_NOW").touch()
        else:
            proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        rc = proc.wait(timeout=120)
        dt = time.monotonic() - t0
        ok = (job / "RELION_JOB_EXIT_ABORTED").exists() and rc in (3, 130, 143)
        return dt if ok else None  # None: it finished before the request (or did not abort)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refs", type=int, default=16000, help="library references for identify_ncc")
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--classes", type=int, default=4000, help="class averages for rank_images")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--after", type=float, default=1.0, help="seconds into a stage before the stop")
    p.add_argument("--entry-after", type=float, default=4.0,
                   help="seconds after a RELION run started before it is stopped")
    p.add_argument("--entry-classes", type=int, default=4000, help="class averages for the RELION runs")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = in_process(args)
    for how in ("abort_now", "sigint", "sigterm"):
        runs[f"relion_{how}"] = [whole_process(args, how) for _ in range(args.trials)]
    rows = {name: {"median_s": statistics.median([v for v in vals if v is not None]) if any(
        v is not None for v in vals) else None, "runs_s": vals} for name, vals in runs.items()}
    emit({"bench": "abort_latency", "promise_s": 5.0, "stop_after_s": args.after, "refs": args.refs,
          "queries": args.queries, "classes": args.classes, "entry_classes": args.entry_classes,
          "entry_after_s": args.entry_after, "box": args.box, "threads": args.threads,
          "cpus": os.cpu_count(), "stages": rows}, args.out)


if __name__ == "__main__":
    main()
