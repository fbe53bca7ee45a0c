"""Labelled 2D classes from the phantom universe, for training and benchmarking the ranker.

Two routes, both with ground truth per class:

* fast synthetic classes (``core.simulate.classes.synthesize_classes``): good classes of 1-4
  phantom proteins drawn from a pool of many, junk classes of every particle-level and class-level junk type, at a range of
  SNRs, class sizes and impurities. Label: the class is a protein class (not junk) and at least
  ``PURITY_GOOD`` of its members are true particles of its species.
* genuine RELION Class2D runs (``relion_refine`` through ``relion_ext.simulate``) on simulated
  particles with junk: label = purity >= ``PURITY_GOOD`` (majority species of the members).

Seeds decide everything; a training set and a benchmark set never share phantom pools/seeds or
simulation seeds. RELION runs are cached on disk (they take minutes).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.core.particles import ClassSet

PURITY_GOOD = 0.7  # a class whose members are >= 70% true particles of one species is worth keeping
TRAIN_POOL = (100_000, 60)  # (seed, size) of the training phantom pool; the benchmark's pool is disjoint
JUNK_ALL = ("empty", "ice_contamination", "crystalline_ice", "carbon_edge", "aggregate", "off_centre",
            "ring_artefact", "over_masked", "streaky")


@dataclass
class LabelledClasses:
    """One data set: its classes, a 0/1 label per class (class order), and per class the number of
    member particles that are good (members of a good class that are true particles)."""

    classes: ClassSet
    labels: np.ndarray
    n_true: np.ndarray  # true particles of the class's species among its members
    route: str  # "synthetic" or "relion"
    species: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cryolens" / "rank"


def _phantoms(n: int, seed: int, box: int, pixel_size: float) -> dict:
    from cryolens.core.simulate.particles import Species
    from cryolens.core.simulate.proteins import phantom_library

    return {ph.name: Species.from_phantom(ph) for ph in phantom_library(n, seed=seed, box=box, pixel_size=pixel_size)}


_POOLS: dict = {}


def phantom_pool(pool_seed: int, size: int, box: int = 64, pixel_size: float = 3.0) -> dict:
    """A library of ``size`` phantom proteins (built once per process); data sets draw from it."""
    key = (pool_seed, size, box, pixel_size)
    if key not in _POOLS:
        _POOLS[key] = _phantoms(size, pool_seed, box, pixel_size)
    return _POOLS[key]


def synthetic_dataset(seed: int, pool: dict, *, box: int = 64, pixel_size: float = 3.0,
                      device="cpu") -> LabelledClasses:
    """One fast synthetic Class2D result: 1-4 species drawn from ``pool``, a random mix of junk
    classes, SNR and class sizes drawn per data set (statistics differ between data sets, as in life)."""
    from cryolens.core.simulate.classes import synthesize_classes

    rng = np.random.default_rng(seed)
    names = list(pool)
    n_species = int(rng.integers(1, 5))
    species = {names[i]: pool[names[i]] for i in rng.choice(len(names), n_species, replace=False)}
    n_good = int(rng.integers(6, 22))
    n_junk = int(rng.integers(3, 12))
    kinds = rng.choice(JUNK_ALL, n_junk)
    junk = {str(k): int((kinds == k).sum()) for k in np.unique(kinds)}
    snr = float(np.exp(rng.uniform(np.log(0.02), np.log(0.3))))
    lo = int(rng.integers(8, 30))
    members = (lo, lo * float(rng.uniform(3, 10)))
    cs, truth = synthesize_classes(species, n_classes=n_good, box=box, pixel_size=pixel_size, members=members,
                                   junk_classes=junk, impurity=(0.0, float(rng.uniform(0.1, 0.45))),
                                   view_spread_deg=float(rng.uniform(3, 12)), psi_error_deg=float(rng.uniform(2, 8)),
                                   seed=seed, snr=snr, noise="realistic", device=device)
    t = truth.table
    labels = (t["truth_good"].to_numpy(bool) & (t["truth_purity"].to_numpy() >= PURITY_GOOD)).astype(np.int64)
    n_true = np.round(t["truth_purity"].to_numpy() * t["n_particles"].to_numpy()).astype(np.int64)
    n_true = np.where(t["truth_good"].to_numpy(bool), n_true, 0)
    return LabelledClasses(cs, labels, n_true, "synthetic", list(species), {"seed": seed, "snr": snr, "junk": junk})


def relion_dataset(cache: Path, seed: int, phantom_seed: int, *, n: int = 500, n_species: int = 1, K: int = 6,
                   iters: int = 5, snr: float = 0.25, junk: float = 0.3, box: int = 64, pixel_size: float = 3.0,
                   threads: int = 2, log=print) -> LabelledClasses:
    """A genuine relion_refine Class2D run on simulated particles (cached in ``cache``)."""
    from cryolens.relion_ext.class2d import read_class2d

    name = f"relion_s{seed}_p{phantom_seed}_n{n}_k{K}_i{iters}_sp{n_species}_snr{snr:g}_j{junk:g}_b{box}"
    project = Path(cache) / name
    done = project / "Class2D" / "job001" / "classes_truth.csv"
    if not done.exists():
        from cryolens.core.simulate.particles import ParticleSimulator, SimulatorConfig
        from cryolens.relion_ext.simulate import class2d_with_truth, write_project

        t0 = time.monotonic()
        project.mkdir(parents=True, exist_ok=True)
        species = _phantoms(n_species, phantom_seed, box, pixel_size)
        sim = ParticleSimulator(species, SimulatorConfig(box=box, pixel_size=pixel_size, snr=snr, noise="realistic",
                                                         junk=junk))
        ps, images, truth = sim.dataset(n, seed=seed)
        write_project(project, ps, images, truth)
        cs, ct = class2d_with_truth(project, "Simulated/particles.star", truth, "Simulated/particles.mrcs", K=K,
                                    iters=iters, diameter_A=0.9 * box * pixel_size, seed=max(1, seed % 100000),
                                    job="Class2D/job001", threads=threads)
        (project / "species.json").write_text(json.dumps(list(species)))
        ct.to_csv(done, index=False)
        log(f"relion_refine Class2D {name}: {time.monotonic() - t0:.0f} s")
    data = sorted((project / "Class2D" / "job001").glob("run_it*_data.star"))[-1]
    cs = read_class2d(data, root=project)
    ct = pd.read_csv(done).set_index("class_id").loc[cs.class_ids]
    purity = ct["truth_purity"].to_numpy(float)
    counts = cs.counts().to_numpy()
    labels = ((purity >= PURITY_GOOD) & (counts > 0)).astype(np.int64)
    n_true = np.round(purity * counts).astype(np.int64)
    species = json.loads((project / "species.json").read_text())
    return LabelledClasses(cs, labels, n_true, "relion", species, {"seed": seed, "phantom_seed": phantom_seed,
                                                                  "project": str(project)})


# the RELION runs of the shipped model and of the benchmark: (seed, phantom_seed, overrides). Few and
# small: each costs minutes of relion_refine on two CPU cores.
TRAIN_RELION = [(101, 1101, {}), (102, 1102, {"n_species": 2, "K": 8, "snr": 0.4}),
                (103, 1103, {"junk": 0.45, "snr": 0.15})]
BENCH_RELION = [(901, 9901, {}), (902, 9902, {"n_species": 2, "K": 8, "snr": 0.4, "junk": 0.4})]


def cached_synthetic(cache: Path | None, seed: int, pool_seed: int, pool_size: int) -> LabelledClasses:
    """``synthetic_dataset`` on the phantom pool (``pool_seed``, ``pool_size``) through an on-disk
    cache (``.npz``: images, class table, labels); the pool is built only on a cache miss."""
    if cache is None:
        return synthetic_dataset(seed, phantom_pool(pool_seed, pool_size))
    path = Path(cache) / "synthetic" / f"s{seed}_pool{pool_seed}x{pool_size}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        cols = [str(c) for c in z["columns"]]
        table = pd.DataFrame({c: z[f"col_{c}"] for c in cols})
        cs = ClassSet(table, z["images"], float(z["pixel_size"]), None, source=f"synthetic seed {seed}",
                      meta={"simulate": {"seed": seed}})
        return LabelledClasses(cs, z["labels"], z["n_true"], "synthetic", [str(s) for s in z["species"]],
                               {"seed": seed, "pool_seed": pool_seed})
    d = synthetic_dataset(seed, phantom_pool(pool_seed, pool_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    t = d.classes.table
    from cryolens.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=d.classes.images.astype(np.float32), columns=np.array(list(t.columns)),
                     pixel_size=d.classes.pixel_size, labels=d.labels, n_true=d.n_true, species=np.array(d.species),
                     **{f"col_{c}": t[c].to_numpy() for c in t.columns})
    # membership is not kept in the cache: counts come from the n_particles column
    return LabelledClasses(replace(d.classes, table=t.copy(), particles=None), d.labels, d.n_true, d.route,
                           d.species, d.meta)


def build_training_sets(n_synthetic: int, use_relion: bool, cache: Path, log=print):
    """(half A, half B, calibration) groups of labelled data sets from the phantom universe.

    Data sets, not classes, are split (classes of one data set share species and statistics);
    RELION runs go one per group in order and weigh 3x (they are few, and the real thing)."""
    from cryolens.core.rank.train import Labelled

    groups: tuple[list, list, list] = ([], [], [])
    t0 = time.perf_counter()
    for i in range(n_synthetic):
        d = cached_synthetic(cache, 1000 + i, *TRAIN_POOL)
        g = 0 if i % 20 < 9 else (1 if i % 20 < 17 else 2)
        groups[g].append(Labelled(d.classes, d.labels))
        if (i + 1) % 20 == 0:
            log(f"  synthetic data sets: {i + 1}/{n_synthetic} ({time.perf_counter() - t0:.0f} s)")
    if use_relion:
        for j, (seed, pseed, kw) in enumerate(TRAIN_RELION):
            d = relion_dataset(cache, seed, pseed, log=log, **kw)
            groups[j % 3].append(Labelled(d.classes, d.labels, weight=3.0))
            log(f"  RELION Class2D run {seed}: {len(d.labels)} classes, {int(d.labels.sum())} good")
    return groups


if __name__ == "__main__":  # pre-build the cached RELION runs: python -m cryolens.recipes.rank_data [train|bench]
    import sys

    which = sys.argv[1:] or ["train", "bench"]
    runs = [(w, r) for w in which for r in (TRAIN_RELION if w == "train" else BENCH_RELION)]
    for w, (seed, pseed, kw) in runs:
        d = relion_dataset(default_cache(), seed, pseed, **kw)
        print(w, seed, "classes", len(d.labels), "good", int(d.labels.sum()), flush=True)
