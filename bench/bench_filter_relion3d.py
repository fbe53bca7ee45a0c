"""RELION's own per-particle pose uncertainty after a real 3D auto-refinement, against the true
poses: the figures cryolens's ``pose`` uncertainty has to beat, and what ``filter`` does with
RELION's metrics today. -> JSON (stdout, or ``--out``).

Data: one asymmetric phantom complex (``--kda``, 64 px x 5 A: ``core.simulate.proteins``), ``--n``
particles from cryolens's simulator (10% junk, ``--snr``, CTF, white noise; truth per particle), refined by ``relion_refine_mpi --auto_refine`` (``relion_ext.programs.refine3d``) from
the true map low-passed to 30 A, so the frames agree and the error is the pose error. Per metric
(``rlnMaxValueProbDistribution``, ``rlnNrOfSignificantSamples``; directions of
``core.pose.uncertainty``), on the protein particles: Spearman(error, uncertainty), the AUROC of
"error > 10 degrees" from the uncertainty, the mean and median geodesic error after the job's
quantile cuts (keep 75% and 50%) and the ratio of the mean error before / after the Q3 cut; on all
particles the AUROC of junk and the junk share after the Q3 cut. Beside them, in the same run: the
oracle (the 75% with the smallest true error) and a random 75%. Issue 16's goals for cryolens's own
uncertainty: AUROC >= 0.9, the Q3 cut divides the mean error by >= 2.5.

The refinement starts with ``--firstiter_cc``: the phantom map is in Da/A^3, not on the particles'
greyscale, and without it RELION 3.1 assigned confident (max probability ~1) random poses.

    python bench/bench_filter_relion3d.py --work DIR [--kda 600] [--n 1000] [--snr 0.1] [--out results.json]

``--work`` keeps the project: a second call reuses a finished refinement there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import _keys  # noqa: E402
from protocol import emit  # noqa: E402

METRICS = ("rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples")
BOX, PIXEL = 64, 5.0
DIAMETER_A = 250  # RELION's mask: the complex reaches about 103 A from its centre


def simulate(proj: Path, kda: float, n: int, snr: float, seed: int) -> dict:
    from cryolens.core.simulate.particles import ParticleSimulator, SimulatorConfig, Species
    from cryolens.core.simulate.proteins import random_phantom
    from cryolens.relion_ext.simulate import write_project

    (proj / "Simulated").mkdir(parents=True, exist_ok=True)
    ph = random_phantom(seed, BOX, PIXEL, kind="complex", mass_kda=kda, p_conformations=0.0)
    ph.save(proj / "Simulated" / "map.mrc")
    sim = ParticleSimulator({ph.name: Species.from_phantom(ph)},
                            SimulatorConfig(box=BOX, pixel_size=PIXEL, snr=snr, junk=0.1))
    ps, images, truth = sim.dataset(n, seed=seed)
    write_project(proj, ps, images, truth)
    info = {"protein": ph.name, "mass_kda": ph.mass_kda, "symmetry": ph.symmetry}
    (proj / "Simulated" / "bench.json").write_text(json.dumps(info))
    return info


def figures(err: np.ndarray, unc: np.ndarray) -> dict:
    """``unc``: larger = less certain."""
    from scipy.stats import spearmanr

    from cryolens.core.calibration import auroc

    order = np.argsort(unc, kind="stable")
    bad = (err > 10).astype(int)
    out = {"spearman_error_uncertainty": float(spearmanr(err, unc).statistic),
           "auroc_error_gt_10deg": float(auroc(unc, bad)) if 0 < bad.sum() < len(bad) else float("nan")}
    for keep in (0.75, 0.5):
        kept = order[: int(round(keep * len(err)))]
        out[f"mean_error_keep{int(100 * keep)}"] = float(err[kept].mean())
        out[f"median_error_keep{int(100 * keep)}"] = float(np.median(err[kept]))
    out["mean_error_ratio_keep75"] = float(err.mean() / out["mean_error_keep75"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--kda", type=float, default=600, help="requested mass (capped so that it fits 64 px x 5 A)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from cryolens.core.calibration import auroc
    from cryolens.core.geometry import angular_distance_deg, euler_to_matrix
    from cryolens.core.pose.uncertainty import choose_metric, quantile_cut
    from cryolens.formats import read_particles
    from cryolens.relion_ext.programs import refine3d

    proj = args.work
    t0 = time.perf_counter()
    if not (proj / "Simulated" / "bench.json").exists():
        simulate(proj, args.kda, args.n, args.snr, args.seed)
    info = json.loads((proj / "Simulated" / "bench.json").read_text())
    data = proj / "Refine3D" / "job001" / "run_data.star"
    t1 = time.perf_counter()
    if not data.exists():
        refine3d(proj, "Simulated/particles.star", "Simulated/map.mrc", diameter_A=DIAMETER_A,
                 workers=args.workers)
    t_ref = time.perf_counter() - t1
    ps = read_particles(data, project_dir=proj)
    truth = pd.read_csv(proj / "Simulated" / "particles_truth.csv")
    t = truth.set_index(_keys(truth["rlnImageName"])).loc[ps.image_keys().to_numpy()]  # RELION reorders
    junk = t["is_junk"].astype(bool).to_numpy()
    est = euler_to_matrix(ps.table[["rot", "tilt", "psi"]].to_numpy(np.float64))
    true = euler_to_matrix(t[["rot", "tilt", "psi"]].to_numpy(np.float64))
    err = np.asarray(angular_distance_deg(est, true))[~junk]
    rng = np.random.default_rng(0)
    out = {"benchmark": "filter_relion3d", **info, "particles": len(ps), "junk": int(junk.sum()), "snr": args.snr,
           "box": BOX, "pixel_size": PIXEL, "seed": args.seed,
           "relion": f"relion_refine_mpi --auto_refine (3.1), CPU, {args.workers} workers x 1 thread",
           "seconds_refine": t_ref,
           "error": {"mean": float(err.mean()), "median": float(np.median(err)),
                     "under_5deg": float((err < 5).mean()), "under_10deg": float((err < 10).mean())},
           "oracle": figures(err, err), "random": figures(err, rng.permutation(len(err)).astype(float)),
           "metrics": {}}
    for name in METRICS:
        ch = choose_metric(ps, name)
        unc = -ch.metric.certainty(ch.values)  # larger = less certain
        f = figures(err, unc[~junk])
        keep, cut, _ = quantile_cut(ch.values, ch.metric, 0.75, name)
        f.update({"auroc_junk": float(auroc(unc, junk.astype(int))), "junk_before": float(junk.mean()),
                  "junk_after_q75": float(junk[keep].mean()), "q75_cut": cut})
        out["metrics"][name] = f
    out["seconds"] = time.perf_counter() - t0
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
