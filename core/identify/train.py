"""The identity model's training recipe, after the two-stage domain-mixed training of Kuczbanski
et al., "Learning image representation for limited cryo-EM data" (synthetic pretraining with a
triplet loss, then fine-tuning on mixed synthetic and real class averages), plus confidence
calibration.

Stage I. For each of many phantom proteins, clusters of nearby views (a few degrees apart, what
one 2D class gathers) are projected once. A batch holds G groups, each one cluster of one
protein: K renders of it, most made to look like class averages (``class_average_like``: blur,
residual noise, envelope, low-pass, mask), one rendered like a library reference. The label is
the group, so the triplet loss (all margin-violating triplets) pulls a class average onto the
reference projections of the same protein at the same view and pushes other proteins and other
views away: retrieval then asks "which reference does this class look like", which carries over
to proteins never seen in training. The paper's augmentations (rotation to 180 degrees,
translation, crop, low-pass, histogram, dropout, mask; ``nn.class_average_augment``) make it
invariant to what classes vary.

Stage II (when labelled real class averages exist). Every real class is paired with the three
reference projections of its labelled entry that correlate best with it (its view); batches are
balanced per identity and per domain: half real groups (real class + its references), half
synthetic stage-I groups.

Calibration. Held-out phantoms make a small library; class averages simulated from particles
(``synthesize_classes``) of library proteins, of proteins missing from the library, and junk
classes are scored in every mode; a logistic model of P(top-1 right) is fitted per mode.
``calibrate_on_classes`` fits the same logistic on labelled class averages from elsewhere (RELION
classes a facility has named, the foreign-generator corpus of ``bench/corpus.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..geometry import euler_to_matrix, uniform_orientations
from ..images import resample_images
from ..calibration import fit_logistic, logistic
from ..projector import Projector
from ..runtime import is_main_process
from ..simulate.classes import class_average_like
from .decoys import build_decoys, prepare_library
from .library import Library
from .model import MODES, IdentityModel
from .score import confidence_features, decoy_z, margin_floor, min_margin, prepare_queries, score_entries


@dataclass
class RecipeConfig:
    n_proteins: int = 600           # stage-I phantoms
    n_clusters: int = 24            # view clusters per protein
    per_cluster: int = 4            # projections per cluster
    cluster_spread_deg: float = 5.0
    box: int = 64
    pixel_size: float = 3.0
    groups: int = 48                # groups per batch
    per_group: int = 4              # images per group (one reference-like)
    steps: int = 2000
    lr: float = 1e-3                # 1e-4 (the paper's, for a ViT-Base) is slow for a small CNN
    lr_min: float = 1e-6
    margin: float = 0.2
    encoder: str = "resnet_tiny"
    in_size: int = 32               # encoder input (class averages are band-limited to ~10-30 A)
    embed_dim: int = 128
    ctf_corrected: bool = True      # class-like renders carry a CTF-corrected average's transfer
    n_val: int = 24                 # held-out phantoms for validation / calibration
    n_unknown: int = 12             # proteins missing from the calibration library
    seed: int = 0
    device: str = "auto"
    checkpoint_dir: str | None = None
    val_every: int = 250


@dataclass
class ViewClusters:
    """(P, C, J, b, b) float16 projections: protein p, view cluster c, member j."""

    images: np.ndarray
    names: list[str]
    pixel_size: float
    meta: dict[str, Any] = field(default_factory=dict)


def cluster_angles(n_clusters: int, per_cluster: int, spread_deg: float, rng: np.random.Generator) -> np.ndarray:
    """(C, J, 3) RELION angles: C random view directions, J views within ~``spread_deg`` of each."""
    rot, tilt = np.ascontiguousarray(uniform_orientations(n_clusters, rng, draw="euler", psi=False)[:, :2].T)
    d_tilt = rng.normal(0, spread_deg, (n_clusters, per_cluster))
    d_rot = rng.normal(0, spread_deg, (n_clusters, per_cluster)) / np.maximum(np.sin(np.deg2rad(tilt)), 0.2)[:, None]
    d_tilt[:, 0] = d_rot[:, 0] = 0.0
    return np.stack([rot[:, None] + d_rot, np.clip(tilt[:, None] + d_tilt, 0, 180),
                     np.zeros((n_clusters, per_cluster))], -1)


def build_view_clusters(volumes, names, n_clusters: int, per_cluster: int, spread_deg: float, pixel_size: float,
                        seed: int = 0, device="cpu", progress: Callable[[int, int], None] | None = None) -> ViewClusters:
    rng = np.random.default_rng(seed)
    box = volumes[0].shape[0]
    out = np.zeros((len(volumes), n_clusters, per_cluster, box, box), np.float16)
    for i, vol in enumerate(volumes):
        ang = cluster_angles(n_clusters, per_cluster, spread_deg, rng).reshape(-1, 3)
        A = torch.as_tensor(euler_to_matrix(ang), dtype=torch.float32)
        out[i] = Projector(vol, device=device).project(A).cpu().numpy().reshape(n_clusters, per_cluster, box, box)
        if progress:
            progress(i + 1, len(volumes))
    return ViewClusters(out, list(names), pixel_size)


def _reference_like(x: torch.Tensor, pixel_size: float, g: torch.Generator) -> torch.Tensor:
    """Rendered like a library reference: low-passed, masked at 0.45 box, no noise or blur."""
    return class_average_like(x, pixel_size, g, resolution_A=(12.0, 20.0), bfactor=0.0, snr=1e8,
                              n_copies=1, mask_radius=0.45)


class StageOneSource:
    """``source(step, rank, world) -> (images, labels)`` for ``core.train.train``."""

    def __init__(self, data: ViewClusters, groups: int, per_group: int, seed: int, ctf_corrected: bool):
        self.data, self.groups, self.per_group, self.seed = data, groups, per_group, seed
        self.ctf_corrected = ctf_corrected

    def batch(self, rng: np.random.Generator, g: torch.Generator, n_groups: int):
        P, C, J = self.data.images.shape[:3]
        prot = rng.choice(P, n_groups, replace=n_groups > P)
        clus = rng.integers(C, size=n_groups)
        mem = rng.integers(J, size=(n_groups, self.per_group))
        x = torch.from_numpy(self.data.images[prot[:, None], clus[:, None], mem].astype(np.float32))
        x = x.reshape(-1, *x.shape[-2:])
        labels = torch.arange(n_groups).repeat_interleave(self.per_group)
        is_ref = (torch.arange(len(x)) % self.per_group) == 0
        out = torch.empty_like(x)
        out[~is_ref] = class_average_like(x[~is_ref], self.data.pixel_size, g, ctf_corrected=self.ctf_corrected)
        out[is_ref] = _reference_like(x[is_ref], self.data.pixel_size, g)
        return out, labels

    def __call__(self, step: int, rank: int, world: int):
        from ..train import step_seed

        s = step_seed(self.seed, step, rank)
        return self.batch(np.random.default_rng(s), torch.Generator().manual_seed(s), self.groups)


class MixedSource:
    """Stage II: half real groups (a real class + its best references), half stage-I groups."""

    def __init__(self, synthetic: StageOneSource, real: torch.Tensor, real_labels: np.ndarray,
                 partners: np.ndarray, references: np.ndarray, groups: int, seed: int):
        self.syn, self.real, self.labels = synthetic, real, np.asarray(real_labels)
        self.partners, self.refs = partners, references
        self.groups, self.seed = groups, seed
        self.by_identity = {k: np.flatnonzero(self.labels == k) for k in np.unique(self.labels)}

    def __call__(self, step: int, rank: int, world: int):
        from ..train import step_seed

        s = step_seed(self.seed, step, rank)
        rng, g = np.random.default_rng(s), torch.Generator().manual_seed(s)
        n_real = min(max(1, self.groups // 2), len(self.labels))
        # balanced per identity, and no class twice in a batch: a copy under another group label
        # would be a negative identical to its anchor
        left = {k: list(v) for k, v in self.by_identity.items()}
        pick = []
        for _ in range(n_real):
            ids = [k for k, v in left.items() if v]
            pool = left[ids[int(rng.integers(len(ids)))]]
            pick.append(int(pool.pop(int(rng.integers(len(pool))))))
        imgs, labs = [], []
        for gi, i in enumerate(pick):  # 2 views of the real class, 2 of its references
            refs = torch.from_numpy(self.refs[rng.choice(self.partners[i], 2)].astype(np.float32))
            imgs += [self.real[i:i + 1], self.real[i:i + 1], refs]
            labs += [gi] * 4
        syn_x, syn_l = self.syn.batch(rng, g, self.groups - n_real)
        x = torch.cat(imgs + [syn_x])
        y = torch.cat([torch.tensor(labs), syn_l + n_real])
        return x, y


# ------------------------------------------------------------------------------- validation data


def _library_of(phantoms, box: int, pixel_size: float, n_views: int, device="cpu") -> Library:
    lib = Library(box, pixel_size, n_views=n_views)
    for ph in phantoms:
        lib.add_volume(ph.density, ph.name, source="phantom", provenance=ph.provenance, device=device)
    return lib


def simulated_queries(phantoms, n_classes: int, box: int, pixel_size: float, seed: int, junk: int = 0,
                      snr=(0.05, 0.1), members=(40, 200), device="cpu"):
    """Class averages simulated from particles of ``phantoms`` (CTF, noise, misalignment), plus
    ``junk`` junk classes: (images (N, b, b), species name per class ('' for junk))."""
    from ..simulate.classes import synthesize_classes
    from ..simulate.junk import CLASS_JUNK_TYPES, JUNK_TYPES

    kinds = [k for k in JUNK_TYPES + CLASS_JUNK_TYPES if k != "off_centre"]
    jc: dict[str, int] = {}
    for i in range(junk):
        jc[kinds[i % len(kinds)]] = jc.get(kinds[i % len(kinds)], 0) + 1
    species = {ph.name: ph.density for ph in phantoms}
    cs, truth = synthesize_classes(species, n_classes, box=box, pixel_size=pixel_size, members=members,
                                   junk_classes=jc, snr=snr, seed=seed, device=device)
    names = np.where(truth.table["truth_good"].to_numpy(bool), truth.table["truth_species"].astype(str), "")
    return cs.images, names


def calibrate(model: IdentityModel, known, unknown, cfg: RecipeConfig, log: Callable[[str], None] = print,
              modes=MODES) -> dict[str, Any]:
    """Fit the per-mode confidence calibration on held-out proteins; return the figures."""
    lib = _library_of(known, cfg.box, cfg.pixel_size, n_views=48)
    lib.decoys = build_decoys(lib)
    qk, nk = simulated_queries(known, 4 * len(known), cfg.box, cfg.pixel_size, cfg.seed + 11)
    qu, nu = simulated_queries(unknown, 2 * len(unknown), cfg.box, cfg.pixel_size, cfg.seed + 12, junk=8)
    images = np.concatenate([qk, qu])
    truth = np.concatenate([nk, np.full(len(qu), "")])
    q = prepare_queries(images, cfg.pixel_size, lib)
    report: dict[str, Any] = {"n_known": int(len(qk)), "n_unknown": int(len(qu)), "library_entries": len(lib)}
    report.update(_fit_modes(model, lib, q, truth, np.arange(len(truth)) < len(qk), modes, log, refit_shortlist=True))
    return report


def _fit_modes(model: IdentityModel, lib: Library, q: torch.Tensor, truth: np.ndarray, known: np.ndarray, modes,
               log: Callable[[str], None], refit_shortlist: bool = False, scores: dict | None = None,
               min_each: int = 0, l2: float = 1e-3, min_confidence: float = 0.5) -> dict[str, Any]:
    """Per mode: score the prepared queries ``q`` against ``lib`` (or take ``scores[mode]``), fit the
    logistic of P(top-1 right) on ``confidence_features`` and store it in ``model.calibration``.
    ``truth``: per query the name of its entry (anything else: the query has no right answer);
    ``known``: the queries counted as known in the figures. ``refit_shortlist``: the embedding
    mode also sets the combined mode's shortlist bar (``shortlist_z``). A mode with fewer than
    ``min_each`` right or wrong top-1 answers keeps the calibration it has. Returns the figures."""
    names = lib.entries["name"].astype(str).to_numpy()
    truth = np.asarray(truth).astype(str)
    report: dict[str, Any] = {}
    for mode in modes:
        t = time.perf_counter()
        es = scores[mode] if scores is not None and mode in scores else score_entries(q, lib, mode, model)
        f = confidence_features(es)
        top1 = names[np.argmax(np.where(np.isfinite(es.scores), es.scores, -np.inf), 1)]
        correct = top1 == truth
        if mode == "embedding" and refit_shortlist:  # how far down the true entry can sit: the combined mode's shortlist
            model.meta["shortlist_z"] = shortlist_z(es, names, truth)
            report["shortlist_z"] = model.meta["shortlist_z"]
        before = model.calibration.get(mode)
        n_right = int(correct.sum())
        fitted = min(n_right, len(correct) - n_right) >= min_each
        if fitted:
            model.calibration[mode] = fit_logistic(f, correct, l2=l2)
            named = logistic(f, model.calibration[mode]) >= min_confidence
            model.meta.setdefault("min_margin", {})[mode] = margin_floor(f[:, 2], named, correct)
        r: dict[str, Any] = {"top1_known": float(correct[known].mean()) if known.any() else float("nan"),
                             "seconds": time.perf_counter() - t}
        if min_each:
            r.update({"right": n_right, "wrong": int(len(correct) - n_right), "fitted": bool(fitted)})
        if mode in model.calibration:
            conf = logistic(f, model.calibration[mode])
            r["mean_confidence_known"] = float(conf[known].mean()) if known.any() else float("nan")
            r["mean_confidence_unknown"] = float(conf[~known].mean()) if (~known).any() else float("nan")
            floor = min_margin(model, mode)
            r["min_margin"] = floor if np.isfinite(floor) else None
            if min_each:  # on the fitting classes themselves: named (>= min_confidence, margin >= floor) and wrong
                r["confidently_wrong"] = float(((conf >= min_confidence) & (f[:, 2] >= floor) & ~correct).mean())
                if before is not None:
                    r["confidently_wrong_before"] = float(((logistic(f, before) >= min_confidence) & ~correct).mean())
        if mode == "combined":
            r.update(shortlist_figures(es, names, truth))
        report[mode] = r
        if not fitted:
            log(f"calibration {mode}: {n_right} right and {len(correct) - n_right} wrong top-1 answers, fewer than "
                f"{min_each} of one kind: the calibration it had is kept")
        elif "mean_confidence_known" in r:
            log(f"calibration {mode}: top-1 on known {r['top1_known']:.3f}, mean confidence "
                f"known {r['mean_confidence_known']:.2f} / unknown {r['mean_confidence_unknown']:.2f}")
    return report


def calibrate_on_classes(model: IdentityModel, library: Library, images, pixel_size: float, truth,
                         modes=MODES, scores: dict | None = None, min_each: int = 2, l2: float | None = None,
                         log: Callable[[str], None] = print, note: str = "") -> dict[str, Any]:
    """Refit each mode's confidence calibration on labelled class averages of any origin (RELION or
    cryoSPARC classes a facility has named, the foreign-generator corpus), so that "unknown" is
    calibrated on the data it will meet rather than on cryolens's simulator. The encoder and the
    combined mode's shortlist bar are left as they are.

    ``truth`` per class: the name of its ``library`` entry, or anything that names no entry (``""``,
    ``"unknown"``, a protein missing from the library, junk): a class whose right answer is
    "unknown". Features and fit are the recipe's (``confidence_features``, ``fit_logistic``); only the
    data differ. A mode with fewer than ``min_each`` right or wrong top-1 answers cannot be fitted
    and keeps its calibration (said in the report and the log). ``l2`` (default ``max(1e-3, 1/n)``
    for n classes): a few dozen classes are often separable, and an unpenalised fit would answer
    with confidence 0 or 1. ``scores``: ``EntryScores`` per mode already computed for these images
    against ``library`` (``score_entries`` on ``prepare_queries``), not computed again. The library
    gets its decoys and embeddings if it lacks them (``prepare_library``). Updates ``model`` (its
    calibration, and a stage in its meta) and returns the figures per mode."""
    truth = np.asarray(truth).astype(str)
    prepare_library(library, model if any(m != "correlation" for m in modes) else None)
    q = prepare_queries(images, pixel_size, library)
    if len(truth) != len(q):
        raise ValueError(f"{len(q)} class averages but {len(truth)} labels")
    names = library.entries["name"].astype(str).to_numpy()
    known = np.isin(truth, names)
    l2 = max(1e-3, 1.0 / max(len(truth), 1)) if l2 is None else l2
    report: dict[str, Any] = {"n_classes": int(len(truth)), "n_known": int(known.sum()),
                              "n_unknown": int((~known).sum()), "library_entries": len(library), "l2": l2}
    report.update(_fit_modes(model, library, q, truth, known, modes, log, scores=scores, min_each=min_each, l2=l2))
    model.meta.setdefault("stages", []).append({
        "stage": "calibration on labelled classes", "note": note, "classes": report["n_classes"],
        "known": report["n_known"], "library_entries": len(library), "l2": l2,
        "modes": [m for m in modes if report[m].get("fitted")]})
    return report


def _true_entries(names: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose truth names a library entry, and that entry's column."""
    rows = np.flatnonzero(np.isin(truth, names))
    return rows, np.array([int(np.flatnonzero(names == truth[i])[0]) for i in rows], np.int64)


def shortlist_figures(es, names: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Of a combined-mode scoring (entries off the shortlist are -inf): the mean shortlist length,
    and how often it held the true entry (classes whose truth names an entry)."""
    searched = np.isfinite(es.scores)
    rows, col = _true_entries(names, truth)
    return {"shortlist_mean_length": float(searched.sum(1).mean()),
            "shortlist_recall": float(searched[rows, col].mean()) if len(rows) else float("nan")}


def shortlist_z(es, names: np.ndarray, truth: np.ndarray, quantile: float = 0.01, n_sd: float = 3.0) -> float:
    """The combined mode's shortlist bar from the true entry's embedding z-score against the decoys
    (over the classes whose truth names an entry; ``truth`` per row of ``es``): the lower of its
    ``quantile`` and its mean - ``n_sd`` sd. A hundred calibration classes cannot pin a 1% tail,
    and an entry wrongly left off the list is a wrong answer, while one more entry only costs time."""
    rows, col = _true_entries(names, truth)
    z = decoy_z(es.scores[rows, col], es.decoy[rows])
    return float(min(np.quantile(z, quantile), z.mean() - n_sd * z.std()))


# ---------------------------------------------------------------------------------------- recipe


def _validation(val, cfg: RecipeConfig, seed: int):
    from ..train import Validation

    lib = _library_of(val, cfg.box, cfg.pixel_size, n_views=24)
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for e, ph in enumerate(val):
        ang = uniform_orientations(4, rng, draw="euler")
        imgs.append(Projector(ph.density).project(torch.as_tensor(euler_to_matrix(ang), dtype=torch.float32)))
        labels += [e] * 4
    q = class_average_like(torch.cat(imgs), cfg.pixel_size, torch.Generator().manual_seed(seed),
                           ctf_corrected=cfg.ctf_corrected)
    return Validation(q, np.array(labels), torch.from_numpy(lib.references.astype(np.float32)),
                      lib.entry_of_reference())


@dataclass
class RealClasses:
    """Labelled real class averages for stage II: ``images`` (N, b, b) at ``pixel_size``, and per
    class the name of its ``library`` entry."""

    images: np.ndarray
    labels: np.ndarray
    library: Library
    pixel_size: float


def _recipe_phantoms(cfg: RecipeConfig, phantoms: list | None, log: Callable[[str], None]) -> tuple[list, list, list]:
    """The recipe's phantom proteins (made from ``cfg.seed`` unless given): (training, validation
    and calibration library, missing from the calibration library)."""
    from ..simulate.proteins import phantom_library

    n_total = cfg.n_proteins + cfg.n_val + cfg.n_unknown
    if phantoms is None:
        log(f"building {n_total} phantom proteins ({cfg.box} px, {cfg.pixel_size} A/px)")
        phantoms = phantom_library(n_total, seed=cfg.seed, box=cfg.box, pixel_size=cfg.pixel_size)
    return (phantoms[: cfg.n_proteins], phantoms[cfg.n_proteins: cfg.n_proteins + cfg.n_val],
            phantoms[cfg.n_proteins + cfg.n_val: n_total])


def calibrate_identity(cfg: RecipeConfig, init: IdentityModel, log: Callable[[str], None] = print,
                       phantoms: list | None = None) -> tuple[IdentityModel, dict[str, Any]]:
    """A new calibration of ``init`` (weights untouched) on the held-out proteins of the recipe
    ``cfg`` (give the values it was trained with). Returns the model and a report."""
    t0 = time.perf_counter()
    report: dict[str, Any] = {"config": dict(vars(cfg))}
    _, val_ph, unk_ph = _recipe_phantoms(cfg, phantoms, log)
    report["phantoms_seconds"] = time.perf_counter() - t0
    model = IdentityModel(init.encoder, {}, dict(init.meta))
    report["calibration"] = calibrate(model, val_ph, unk_ph, cfg, log)
    report["total_seconds"] = time.perf_counter() - t0
    model.meta.setdefault("stages", []).append({"stage": "calibration", "config": report["config"]})
    return model, report


def train_identity(cfg: RecipeConfig, init: IdentityModel | None = None, real: RealClasses | None = None,
                   log: Callable[[str], None] = print, should_stop: Callable[[], bool] | None = None,
                   phantoms: list | None = None) -> tuple[IdentityModel, dict[str, Any]]:
    """Run the recipe. ``real``: labelled real classes for stage II; ``init``: start from this
    model (stage II only on top of a stage-I model, as the paper does). Under torchrun, rank 0
    alone calibrates. Returns the model and a report (``calibrate_identity`` refits only the
    calibration of a trained model)."""
    from ..nn import TripletMarginLoss, build_encoder, class_average_augment
    from ..train import TrainConfig, train

    t0 = time.perf_counter()
    report: dict[str, Any] = {"config": dict(vars(cfg))}
    train_ph, val_ph, unk_ph = _recipe_phantoms(cfg, phantoms, log)
    report["phantoms_seconds"] = time.perf_counter() - t0
    data = build_view_clusters([p.density for p in train_ph], [p.name for p in train_ph], cfg.n_clusters,
                               cfg.per_cluster, cfg.cluster_spread_deg, cfg.pixel_size, seed=cfg.seed + 1)
    validation = _validation(val_ph, cfg, cfg.seed + 2)
    source = StageOneSource(data, cfg.groups, cfg.per_group, cfg.seed + 3, cfg.ctf_corrected)
    if init is not None:
        encoder = init.encoder
    else:
        torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
        encoder = build_encoder(cfg.encoder, embed_dim=cfg.embed_dim, in_size=cfg.in_size)
    if real is not None:
        source = _mixed_source(source, real, cfg)
    stage = "II (mixed synthetic/real)" if real is not None else "I (synthetic)"
    log(f"stage {stage}: {cfg.steps} steps of {cfg.groups} x {cfg.per_group} images, {cfg.encoder}")

    def on_log(rec):
        if "val_top1" in rec or rec["step"] % 100 == 0:
            val = f", val top-1 {rec['val_top1']:.3f} top-5 {rec['val_top5']:.3f}" if "val_top1" in rec else ""
            log(f"  step {rec['step']}: loss {rec['loss']:.4f}{val} ({rec['seconds']:.0f} s)")

    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, lr_min=cfg.lr_min, seed=cfg.seed, device=cfg.device,
                     checkpoint_dir=cfg.checkpoint_dir, val_every=cfg.val_every, log_every=50)
    res = train(encoder, TripletMarginLoss(cfg.margin, "all"), source, tc, augment=class_average_augment(),
                validation=validation, on_log=on_log, should_stop=should_stop)
    if res.best_checkpoint is not None:
        from ..train import load_checkpoint

        encoder.load_state_dict(load_checkpoint(res.best_checkpoint)["model"])
    encoder = encoder.cpu().eval()
    last = res.history[-1] if res.history else {}
    report["train"] = {"steps": res.step, "best_step": res.best_step, "best_val_top1": res.best_metric,
                       "last": res.last_metrics, "seconds": last.get("seconds", 0.0), "world": last.get("world", 1)}
    model = IdentityModel(encoder, dict(init.calibration) if init is not None else {},
                          dict(init.meta) if init is not None else {})
    if not is_main_process():  # torchrun: rank 0 calibrates and writes the model
        return model, report
    report["calibration"] = calibrate(model, val_ph, unk_ph, cfg, log)
    report["total_seconds"] = time.perf_counter() - t0
    model.meta.setdefault("stages", []).append({"stage": stage, "steps": res.step, "config": report["config"],
                                                 "best_val_top1": res.best_metric})
    return model, report


def _mixed_source(synthetic: StageOneSource, real: RealClasses, cfg: RecipeConfig) -> MixedSource:
    """Stage II batches: each real class with its best-correlating references, brought to the
    synthetic data's sampling so that both domains share a batch."""
    lib = real.library
    q = prepare_queries(real.images, real.pixel_size, lib)
    partners = best_references(q, np.asarray(real.labels), lib)
    refs = resample_images(torch.from_numpy(lib.references.astype(np.float32)), lib.pixel_size,
                           cfg.pixel_size, cfg.box).numpy()
    q = resample_images(q, lib.pixel_size, cfg.pixel_size, cfg.box)
    return MixedSource(synthetic, q, np.asarray(real.labels), partners, refs, cfg.groups, cfg.seed + 4)


def best_references(q: torch.Tensor, labels: np.ndarray, lib: Library, n: int = 3) -> np.ndarray:
    """(N, n) indices of the references of each class's labelled entry that correlate best with it."""
    from ..correlate import ncc_search
    from ..errors import CryolensError

    names = lib.entries["name"].astype(str).to_numpy()
    ent = lib.entry_of_reference()
    out = np.zeros((len(q), n), np.int64)
    for i, lab in enumerate(labels):
        hit = np.flatnonzero(names == str(lab))
        if not len(hit):
            raise CryolensError(f"label {lab!r} of real class {i + 1} is not an entry of the library")
        rows = np.flatnonzero(ent == hit[0])
        m = ncc_search(q[i:i + 1], torch.from_numpy(lib.references[rows].astype(np.float32)), n_psi=36)
        out[i] = rows[np.argsort(-m.score[0])[:n]]
    return out


def labelled_table(path) -> pd.DataFrame:
    """A CSV of labelled real classes: columns ``class`` (1-based class number in the stack) and
    ``identity`` (a library entry name); other columns are ignored."""
    from ..errors import InputError

    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise InputError(f"cannot read the labels CSV ({type(exc).__name__}: {exc})", path) from None
    missing = {"class", "identity"} - set(df.columns)
    if missing:
        raise InputError(f"the labels CSV needs columns class, identity (missing: {', '.join(sorted(missing))})", path)
    return df
