"""Training the ranker: the image scorer (two half-trained ensemble members), the combiner on
out-of-sample evidence, per-mode calibration, and fine-tuning on a facility's own selections.
Every network trains through the one loop, ``core.train.train``."""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..calibration import apply_calibration, expected_calibration_error, fit_platt, fit_score_calibration
from ..errors import InputError
from ..particles import ClassSet
from .features import stat_features
from .model import DOMAIN_NAMES, EVIDENCE, N_STAT, Combiner, ImageScorer, RankModel, RobustHead, domain_evidence
from .rules import Domain, RuleModel, class_statistics, rule_features


# -- training -------------------------------------------------------------------------------------
@dataclass
class Labelled:
    """A labelled data set for training: classes and a 0/1 label per class."""

    classes: ClassSet
    labels: np.ndarray
    weight: float = 1.0


def _bce(pos_weight: float):
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = labels.float()
        w = torch.where(y > 0.5, torch.full_like(y, pos_weight), torch.ones_like(y))
        return F.binary_cross_entropy_with_logits(logits, y, weight=w)

    return loss


def _augment():
    from ..nn.augment import Compose, RandomRotation, RandomTranslation

    return Compose([RandomRotation(180.0), RandomTranslation(0.03)])


def _resized(images, size: int) -> torch.Tensor:
    from ..images import fourier_resize

    x = torch.nan_to_num(torch.as_tensor(np.asarray(images), dtype=torch.float32))
    return fourier_resize(x, size) if x.shape[-1] != size else x


def train_image_scorer(model: ImageScorer, images: torch.Tensor, labels: np.ndarray, weights: np.ndarray,
                       steps: int, lr: float = 2e-3, batch: int = 32, seed: int = 0, device="cpu",
                       log: Callable[[str], None] | None = None, should_stop=None) -> None:
    """Train the CNN with balanced, weighted sampling (``core.train.train``)."""
    from ..train import TrainConfig, train

    y = np.asarray(labels, np.int64)
    w = np.asarray(weights, np.float64)
    prob = w * np.where(y == 1, 0.5 / max(w[y == 1].sum(), 1e-9), 0.5 / max(w[y == 0].sum(), 1e-9))
    prob = prob / prob.sum()

    def source(step, rank, world):
        rng = np.random.default_rng([seed, step, rank])
        idx = rng.choice(len(y), size=min(batch, max(len(y), 8)), p=prob)
        return images[idx], torch.as_tensor(y[idx])

    def on_log(rec):
        if log is not None and (rec["step"] % 200 == 0 or rec["step"] == steps):
            log(f"  image model step {rec['step']}/{steps} loss {rec['loss']:.3f} ({rec['seconds']:.0f} s)")

    cfg = TrainConfig(steps=steps, lr=lr, lr_min=lr * 0.02, warmup_steps=min(50, steps // 10), weight_decay=1e-4,
                      seed=seed, device=str(device), log_every=50)
    train(model, _bce(1.0), source, cfg, augment=_augment(), on_log=on_log, should_stop=should_stop)
    model.eval()


def train_combiner(model: Combiner, evidence: np.ndarray, labels: np.ndarray, weights: np.ndarray, steps: int,
                   lr: float = 3e-3, batch: int = 128, seed: int = 0, drop_stats: float = 0.35,
                   set_scaling: bool = True, device="cpu", should_stop=None) -> None:
    """Train the combiner; statistics are hidden for a ``drop_stats`` share of each batch (bare stacks)."""
    from ..train import TrainConfig, train

    ev = np.asarray(evidence, np.float64)
    if set_scaling:
        with warnings.catch_warnings():  # all-NaN columns (statistics a source never has) are fine
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(ev, 0)
            std = np.nanstd(ev, 0)
        model.mean.copy_(torch.as_tensor(np.nan_to_num(mean), dtype=torch.float32))
        model.std.copy_(torch.as_tensor(np.where(np.isfinite(std) & (std > 1e-6), std, 1.0), dtype=torch.float32))
    y = np.asarray(labels, np.int64)
    w = np.asarray(weights, np.float64)
    prob = w * np.where(y == 1, 0.5 / max(w[y == 1].sum(), 1e-9), 0.5 / max(w[y == 0].sum(), 1e-9))
    prob = prob / prob.sum()
    evt = torch.as_tensor(ev, dtype=torch.float32)

    def source(step, rank, world):
        rng = np.random.default_rng([seed, step, rank, 7])
        idx = rng.choice(len(y), size=batch, p=prob)
        x = evt[idx].clone()
        hide = torch.as_tensor(rng.random(batch) < drop_stats)
        x[hide, :N_STAT] = float("nan")
        part = torch.as_tensor(rng.random((batch, N_STAT)) < 0.1)  # sources that lack single statistics
        x[:, :N_STAT] = torch.where(part, torch.full_like(x[:, :N_STAT], float("nan")), x[:, :N_STAT])
        return x, torch.as_tensor(y[idx])

    cfg = TrainConfig(steps=steps, lr=lr, lr_min=lr * 0.02, warmup_steps=min(50, steps // 10), weight_decay=1e-3,
                      seed=seed, device=str(device), log_every=100)
    train(model, _bce(1.0), source, cfg, should_stop=should_stop)
    model.eval()


def _evidence_rows(model: RankModel, sets: Sequence[Labelled], stats: bool = True, device="cpu"):
    ev = [model.evidence(s.classes, stats=stats, device=device) for s in sets]
    y = [np.asarray(s.labels, np.int64) for s in sets]
    w = [np.full(len(s.labels), s.weight) for s in sets]
    if not ev:
        return np.zeros((0, len(EVIDENCE))), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(ev), np.concatenate(y), np.concatenate(w)


def fit(half_a: Sequence[Labelled], half_b: Sequence[Labelled], calibration_sets: Sequence[Labelled], *,
        image_steps: int = 1500, combiner_steps: int = 3000, seed: int = 0, device="cpu",
        encoder: dict[str, Any] | None = None, log: Callable[[str], None] = print, should_stop=None) -> RankModel:
    """Train a ranker from scratch on three disjoint groups of data sets (cross-fitting): one CNN
    on each half; the combiner on both halves, each scored by the CNN that did not see it (so it
    learns how far to trust out-of-sample CNN logits); the model's image scorer is the two CNNs'
    ensemble; calibration on the third group, scored by the final model."""
    members = []
    for k, sets in enumerate((half_a, half_b)):
        torch.manual_seed(seed + k)
        image = ImageScorer(encoder, 1)
        imgs = torch.cat([_resized(s.classes.images, image.in_size) for s in sets])
        y = np.concatenate([s.labels for s in sets])
        w = np.concatenate([np.full(len(s.labels), s.weight) for s in sets])
        log(f"image model {k + 1}/2: {len(y)} classes ({int(y.sum())} good) from {len(sets)} data sets, "
            f"{image_steps} steps")
        t0 = time.perf_counter()
        train_image_scorer(image, imgs, y, w, image_steps, seed=seed + 100 * k, device=device, log=log,
                           should_stop=should_stop)
        log(f"image model {k + 1}/2 trained in {time.perf_counter() - t0:.0f} s")
        members.append(image)
    rows = [_evidence_rows(RankModel(members[1 - k], Combiner(hidden=0), {}, {}), sets, device=device)
            for k, sets in enumerate((half_a, half_b))]
    ev, yc, wc = (np.concatenate([r[i] for r in rows]) for i in range(3))
    model = RankModel(ImageScorer.join(members), Combiner(hidden=0), {}, {})
    log(f"combiner: {len(yc)} classes ({int(yc.sum())} good), out-of-sample CNN evidence, {combiner_steps} steps")
    train_combiner(model.combiner, ev, yc, wc, combiner_steps, seed=seed + 1, device=device, should_stop=should_stop)
    calibrate(model, calibration_sets, device=device, log=log)
    return model


def calibrate(model: RankModel, sets: Sequence[Labelled], device="cpu", log: Callable[[str], None] = print,
              modes: Sequence[str] = ("stats", "image")) -> None:
    """Fit the calibrators of ``modes`` on held-out labelled data sets."""
    for mode in modes:
        ev, y, _ = _evidence_rows(model, sets, stats=(mode == "stats"), device=device)
        if len(y) == 0 or y.min() == y.max():
            raise InputError(f"calibration ({mode}) needs held-out classes of both kinds (good and bad)")
        logit = model.combine(ev, device)
        model.calibration[mode] = fit_score_calibration(logit, y)
        p = apply_calibration(model.calibration[mode], logit)
        log(f"calibration ({mode}): {model.calibration[mode]['kind']} on {len(y)} classes, "
            f"ECE {expected_calibration_error(p, y):.3f}")


def fine_tune(base: RankModel, sets: Sequence[Labelled], *, steps: int = 150, folds: int = 4, seed: int = 0,
              device="cpu", log: Callable[[str], None] = print, should_stop=None) -> RankModel:
    """A copy of ``base`` adapted to the user's own accepted/rejected classes.

    The CNN and the combiner are fine-tuned (low learning rate, few steps, from the base weights);
    the calibrator of each evidence mode present is refitted (Platt) on out-of-fold predictions:
    ``folds`` models are fine-tuned without one fold each and score it, so calibration never sees
    a prediction on a class the model was trained on."""
    ys = np.concatenate([np.asarray(s.labels, np.int64) for s in sets])
    if len(ys) < 4 or ys.min() == ys.max():
        raise InputError(f"fine-tuning needs accepted AND rejected classes (got {int(ys.sum())} accepted, "
                         f"{int((ys == 0).sum())} rejected)")
    rng = np.random.default_rng(seed)

    def adapt(rows: list[np.ndarray], s: int) -> RankModel:
        """The base model fine-tuned on ``rows`` (class positions per data set)."""
        m = RankModel(copy.deepcopy(base.image), copy.deepcopy(base.combiner), dict(base.calibration), dict(base.info),
                      base.robust)
        imgs = torch.cat([_resized(np.asarray(t.classes.images)[r], m.image.in_size) for t, r in zip(sets, rows)])
        y = np.concatenate([np.asarray(t.labels)[r] for t, r in zip(sets, rows)])
        w = np.concatenate([np.full(len(r), t.weight) for t, r in zip(sets, rows)])
        if y.min() != y.max():
            train_image_scorer(m.image, imgs, y, w, steps, lr=1e-3, batch=32, seed=s, device=device,
                               should_stop=should_stop)
            # evidence on whole data sets (relative statistics and isolation need every class)
            ev = np.concatenate([m.evidence(t.classes, device=device)[r] for t, r in zip(sets, rows)])
            train_combiner(m.combiner, ev, y, w, 2 * steps, lr=3e-3, batch=64, seed=s + 1, set_scaling=False,
                           drop_stats=0.2, device=device, should_stop=should_stop)
        return m

    # out-of-fold predictions: folds over classes, within each data set
    oof = {"stats": ([], []), "image": ([], [])}
    fold_of = [rng.permutation(len(s.labels)) % folds for s in sets]
    for f in range(folds):
        m = adapt([np.flatnonzero(fo != f) for fo in fold_of], seed + 10 * f)
        for s, fo in zip(sets, fold_of):
            te = np.flatnonzero(fo == f)
            for mode in ("stats", "image"):
                ev = m.evidence(s.classes, stats=mode == "stats", device=device)
                oof[mode][0].append(m.combine(ev[te], device))
                oof[mode][1].append(np.asarray(s.labels)[te])
        log(f"  fold {f + 1}/{folds} done")
    model = adapt([np.arange(len(s.labels)) for s in sets], seed)
    has_stats = any(np.isfinite(stat_features(s.classes)).any() for s in sets)
    for mode in ("stats", "image") if has_stats else ("image",):
        x, y = np.concatenate(oof[mode][0]), np.concatenate(oof[mode][1])
        model.calibration[mode] = fit_platt(x, y)
        p = apply_calibration(model.calibration[mode], x)
        log(f"calibration ({mode}, out-of-fold, {len(y)} classes): Platt, ECE {expected_calibration_error(p, y):.3f}")
    model.info = dict(base.info)
    model.info["fine_tuned"] = {"classes": int(len(ys)), "accepted": int(ys.sum()), "steps": int(steps),
                                "folds": int(folds), "seed": int(seed), "base": base.info.get("name", "")}
    return model


def fit_robust_head(model: RankModel, sets: Sequence[Labelled], device="cpu", log: Callable[[str], None] = print,
                    trained_on: dict[str, Any] | None = None) -> RobustHead:
    """The model's ``RobustHead`` fitted on labelled Class2D runs (one generator's, so that the
    other can test it): the monotone rule on their statistics, the sign-constrained stack of rule
    and image logits, and the domain (ranges of their image evidence, statistics, pixel sizes and
    boxes). The networks are not changed."""
    from ..calibration import fit_logistic

    if not sets:
        raise InputError("the robust head needs labelled Class2D runs")
    rf, il, ev, y, px, box = [], [], [], [], [], []
    for s in sets:
        e = model.evidence(s.classes, device=device)
        hidden = e.copy()
        hidden[:, :N_STAT] = np.nan
        rf.append(rule_features(class_statistics(s.classes)))
        il.append(model.combine(hidden, device))
        ev.append(e)
        y.append(np.asarray(s.labels, np.int64))
        px.append(float(s.classes.pixel_size or np.nan))
        box.append(int(s.classes.images.shape[-1]))
    RF, IL, EV, Y = np.concatenate(rf), np.concatenate(il), np.concatenate(ev), np.concatenate(y)
    if Y.min() == Y.max():
        raise InputError(f"the robust head needs good and bad classes (got {int(Y.sum())} good of {len(Y)})")
    rule = RuleModel.fit(RF, Y)
    stack = fit_logistic(np.stack([rule.logit(RF), IL], 1), Y, signs=(1, 1))
    domain = Domain.fit(DOMAIN_NAMES, domain_evidence(EV, RF), [p for p in px if np.isfinite(p)], box)
    image_cal = fit_platt(IL, Y)
    log(f"robust head: {len(sets)} runs, {len(Y)} classes ({int(Y.sum())} good); rule weights "
        f"{', '.join(f'{w:.2f}' for w in rule.weights)}; stack bias {stack[0]:.2f}, rule {stack[1]:.2f}, "
        f"image {stack[2]:.2f}")
    return RobustHead(rule, stack, domain, dict(trained_on or {}, runs=len(sets), classes=int(len(Y)),
                                                good=int(Y.sum())), image_cal)


def constrain_statistics(model: RankModel) -> list[str]:
    """Make a linear combiner monotone in the class statistics: a weight whose sign contradicts
    ``features.STAT_SIGNS`` (more particles, a finer resolution, a better accuracy must never lower
    the score) is set to 0. Returns what was changed, in words. Recalibrate afterwards."""
    from .features import STAT_FEATURES, STAT_SIGNS

    net = model.combiner.net
    if not isinstance(net, torch.nn.Linear):
        raise InputError("only a linear combiner can be constrained (this model has hidden layers)")
    changed = []
    with torch.no_grad():
        w = net.weight[0]
        for i, name in enumerate(STAT_FEATURES):
            s = STAT_SIGNS[name]
            if s and float(w[i]) * s < 0:
                changed.append(f"{name} {float(w[i]):+.3f} -> 0")
                w[i] = 0.0
    return changed
