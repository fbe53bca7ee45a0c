"""The foreign-generator corpus as labelled training and test data (built by ``bench/corpus.py``).

Each finished run is a genuine ``relion_refine`` Class2D result with its truth per class
(``classes_truth.csv``: members, majority species, purity, good). Its ``spec.json`` says which
generator made the particles (``relion_project`` or ``cryolens``) and which proteins, so that a
model can be fitted on one generator and measured on the other, split by protein too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.core.particles import ClassSet


def default_corpus() -> Path:
    return Path.home() / ".cache" / "cryolens" / "corpus"


@dataclass
class CorpusRun:
    name: str
    spec: dict
    classes: ClassSet
    truth: pd.DataFrame  # per class (ClassSet order): truth_good, truth_purity, truth_species, n_particles

    @property
    def generator(self) -> str:
        return self.spec["generator"]

    @property
    def proteins(self) -> set[str]:
        return {p["name"] for p in self.spec["proteins"]}

    @property
    def labels(self) -> np.ndarray:
        return self.truth["truth_good"].to_numpy(np.int64)

    @property
    def good_particles(self) -> np.ndarray:
        """Members of each good class that are true particles of its species (0 for the others)."""
        t = self.truth
        return np.where(t["truth_good"] > 0, np.round(t["truth_purity"] * t["n_particles"]), 0).astype(np.int64)


def load_corpus(root: str | Path | None = None, generators: tuple[str, ...] | None = None) -> list[CorpusRun]:
    """Every finished run under ``root`` (default ``~/.cache/cryolens/corpus``), optionally only those
    of some generators."""
    from cryolens.relion_ext.class2d import read_class2d

    runs = []
    for d in sorted(Path(root or default_corpus()).glob("run_*")):
        if not (d / "DONE").exists():
            continue
        spec = json.loads((d / "spec.json").read_text())
        if generators and spec["generator"] not in generators:
            continue
        cs = read_class2d(d / "Class2D" / "job001" / f"run_it{spec['iterations']:03d}_data.star", root=d)
        truth = pd.read_csv(d / "classes_truth.csv").set_index("class_id").loc[cs.class_ids].reset_index()
        runs.append(CorpusRun(d.name, spec, cs, truth))
    return runs
