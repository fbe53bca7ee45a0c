"""One evaluation protocol for every learned job: data from another generator, figures per run.

A learned job is measured on runs it was not trained on, split by generator (train on cryolens's
simulator, test on ``relion_project`` particles, and the other way round) and by protein (no test
run shares a protein with a training run), with the figures of every run kept: the median AND the
worst run are reported, beside the classical rules computed on the same runs.

The corpus comes from ``bench/corpus.py`` and is read by ``cryolens.recipes.corpus``. This module
splits it and turns per-run scores into the figures the benchmarks print (``per_run``, ``summarise``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cryolens.core.calibration import auroc
from cryolens.recipes.corpus import CorpusRun  # noqa: F401 (the protocol's data)
from cryolens.recipes.corpus import load_corpus as _load_corpus


def load_corpus(root=None, generators: tuple[str, ...] | None = None) -> list[CorpusRun]:
    """The finished corpus runs (``cryolens.recipes.corpus.load_corpus``); none is a usage error
    every benchmark says the same way, not a crash on an empty table."""
    runs = _load_corpus(root, generators)
    if not runs:
        which = f" of {', '.join(generators)}" if generators else ""
        raise SystemExit(f"no finished corpus runs{which} in {root or '~/.cache/cryolens/corpus'}: make them with "
                         "python bench/corpus.py build (resumable; see its --help)")
    return runs


def draw_proteins(proteins, share: float, seed: int = 0) -> set[str]:
    """A seeded draw of ``round(share * n)`` of the proteins (sorted first, so the draw depends on
    the names only): the side of a split by protein."""
    proteins = sorted(set(proteins))
    rng = np.random.default_rng(seed)
    return {str(p) for p in rng.choice(proteins, int(round(share * len(proteins))), replace=False)} if proteins else set()


def split_by_protein(runs: list[CorpusRun], test_share: float = 0.5, seed: int = 0) -> tuple[list, list]:
    """(train, test): proteins are drawn into the test side; a run goes to test when all its proteins
    are test proteins, to train when none is, and is dropped when it mixes both."""
    test_p = draw_proteins(set().union(*(r.proteins for r in runs)) if runs else [], test_share, seed)
    train = [r for r in runs if not (r.proteins & test_p)]
    test = [r for r in runs if r.proteins <= test_p]
    return train, test


def selection_figures(keep: np.ndarray, run: CorpusRun) -> dict[str, float]:
    """Good-particle recall and particle precision of a class selection."""
    good = run.good_particles
    n = run.truth["n_particles"].to_numpy(np.float64)
    kept_good = good[keep].sum()
    return {"recall_good_particles": float(kept_good / good.sum()) if good.sum() else float("nan"),
            "precision_particles": float(kept_good / n[keep].sum()) if n[keep].sum() else float("nan")}


def per_run(runs: list[CorpusRun], scorers: dict[str, Callable[[CorpusRun], np.ndarray]]) -> pd.DataFrame:
    """One row per (run, scorer): AUROC of the class scores against truth_good (NaN for a run
    with only one kind of class), with the run's settings beside."""
    rows = []
    for r in runs:
        y = r.labels
        for name, fn in scorers.items():
            s = np.asarray(fn(r), np.float64)
            rows.append({"run": r.name, "generator": r.generator, "scorer": name, "classes": len(y),
                         "good": int(y.sum()), "auroc": auroc(s, y),
                         "snr": r.spec["snr"], "junk": r.spec["junk_fraction"], "K": r.spec["K"],
                         "iterations": r.spec["iterations"], "box": r.spec["box"],
                         "pixel_size": r.spec["pixel_size"], "ctf": r.spec["ctf"]})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, metric: str = "auroc", best_rule: str | None = None,
              lower_is_better: bool = False) -> dict:
    """Per scorer: median, mean, worst (min; max when ``lower_is_better``, e.g. an error rate) over
    runs where the metric is defined, the run count; with ``best_rule``: the share of runs where the
    scorer is better than that rule, and its worst deficit."""
    out = {}
    for name, g in table.groupby("scorer", sort=False):
        v = g.set_index("run")[metric].dropna()
        worst = v.idxmax() if lower_is_better and len(v) else v.idxmin() if len(v) else ""
        row = {"runs": int(len(v)), "median": float(v.median()) if len(v) else float("nan"),
               "mean": float(v.mean()) if len(v) else float("nan"),
               "worst": float(v[worst]) if len(v) else float("nan"),
               "worst_run": str(worst)}
        if best_rule is not None and name != best_rule:
            rule = table[table["scorer"] == best_rule].set_index("run")[metric].reindex(v.index)
            d = ((rule - v) if lower_is_better else (v - rule)).dropna()
            row["above_rule_share"] = float((d > 0).mean()) if len(d) else float("nan")
            row["worst_deficit_vs_rule"] = float(-d.min()) if len(d) else float("nan")
        out[name] = row
    return out


def emit(result: dict, path=None) -> None:
    """A benchmark's JSON: printed, and written to ``path`` when given."""
    import json

    text = json.dumps(result, indent=1, default=float)
    if path:
        Path(path).write_text(text)
    print(text)
