"""What ``filter`` does with RELION's own per-particle metrics on genuine relion_refine Class2D runs,
where the truth is known: how much picking junk each cut removes, and what it costs in particles.
-> JSON (stdout, or ``--out``).

Data: the finished runs of the corpus of ``bench/corpus.py`` that have junk (relion_project and
cryolens particles alike; relion_refine made every metric). Per run, from its last ``_data.star``
joined to ``particles_truth.csv`` on the image name: for ``rlnMaxValueProbDistribution`` and
``rlnNrOfSignificantSamples``, the AUROC of the metric's certainty for "a protein particle, not
junk", and for the job's cuts (``core.pose.uncertainty``: ``quantile`` 0.75, the Q3 cut, and
``auto``) the junk share before and after and the share of protein particles kept. Beside them
in the same run, the baseline a cut must beat: keeping a random 75% leaves the junk share as it
was (its expectation; reported as ``junk_after`` = ``junk_before``). Figures per run, the median
and the worst run.

This measures the metrics RELION writes after 2D classification; pose error (what ``filter`` is
for after 3D refinement) needs truth poses of a 3D refinement and is not measured here.

    python bench/bench_filter_corpus.py [--corpus DIR] [--out results.json]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import _keys  # noqa: E402
from protocol import emit, load_corpus  # noqa: E402

from cryolens.core.calibration import auroc  # noqa: E402

METRICS = ("rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples")


def run_figures(run, root: Path) -> list[dict]:
    from cryolens.core.pose.uncertainty import auto_cut, choose_metric, quantile_cut

    ps = run.classes.particles
    truth = pd.read_csv(root / run.name / "particles_truth.csv")
    keyed = truth.set_index(_keys(truth["rlnImageName"]))
    junk = keyed.loc[ps.image_keys().to_numpy(), "is_junk"].astype(bool).to_numpy()
    rows = []
    for name in METRICS:
        ch = choose_metric(ps, name)
        v, m = ch.values, ch.metric
        ok = np.isfinite(v)
        row = {"run": run.name, "generator": run.generator, "metric": name, "particles": int(ok.sum()),
               "junk_before": float(junk[ok].mean()),
               "auroc_protein_vs_junk": float(auroc(m.certainty(v[ok]), (~junk[ok]).astype(int)))}
        for mode, (keep, _, _) in (("q75", quantile_cut(v, m, 0.75, name)), ("auto", auto_cut(v, m, name))):
            keep = keep & ok
            row[f"{mode}_kept"] = float(keep.sum() / ok.sum())
            row[f"{mode}_junk_after"] = float(junk[keep].mean()) if keep.any() else float("nan")
            row[f"{mode}_protein_kept"] = float(keep[~junk & ok].mean()) if (~junk & ok).any() else float("nan")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "cryolens" / "corpus")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    runs = [r for r in load_corpus(args.corpus) if r.spec.get("junk_fraction", 0) > 0]
    table = pd.DataFrame([row for r in runs for row in run_figures(r, args.corpus)])
    summary = {}
    for name, g in table.groupby("metric"):
        s = {"runs": int(len(g))}
        for col, low in (("auroc_protein_vs_junk", False), ("junk_before", True), ("q75_junk_after", True),
                         ("q75_protein_kept", False), ("auto_junk_after", True), ("auto_kept", False)):
            vals = g[col].to_numpy(float)
            s[col] = {"median": float(np.nanmedian(vals)),
                      "worst": float(np.nanmax(vals) if low else np.nanmin(vals))}
        s["q75_junk_reduced_runs"] = float((g["q75_junk_after"] < g["junk_before"]).mean())
        summary[name] = s
    emit({"benchmark": "filter_corpus", "corpus": str(args.corpus), "runs_with_junk": len(runs),
          "baseline": "a random 75% keeps the junk share as it was (junk_after = junk_before)",
          "summary": summary, "per_run": table.to_dict(orient="records"),
          "seconds": time.perf_counter() - t0}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
