"""The 2D class ranker: a calibrated probability that a class is good.

Evidence per class (``core.rank_features``): statistics where the source has them, RELION-ranker-
style image features, the logit of a small CNN on the class average (an encoder of the learning
engine with a linear head), and the class's isolation among the data set's classes in that CNN's
embedding space. A small MLP (the *combiner*) turns the evidence into one logit; missing evidence
is an input too (a NaN feature becomes 0 plus a "missing" flag), and the combiner is trained with
the statistics randomly dropped, so a bare stack of class averages is scored from its images alone.

Calibration: the combiner's logit is mapped to a probability by a calibrator fitted on held-out
data sets (isotonic when there are enough classes, else Platt), one per evidence mode: ``stats``
(the source has per-class statistics) and ``image`` (a bare stack). A class with no particles gets
probability 0 (there is nothing to keep).

Training uses the one loop, ``core.train.train``, for the CNN and for the combiner. Models are
saved as plain tensors and dicts (``torch.load(weights_only=True)``) with a format name and version.
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import atomic_path
from .errors import InputError
from .particles import ClassSet
from .rank_features import (IMAGE_FEATURES, ISOLATION_FEATURES, STAT_FEATURES, class_counts, image_features,
                            isolation_features, stat_features)

MODEL_FORMAT = "cryolens.rank"
MODEL_VERSION = 1
EVIDENCE = tuple(STAT_FEATURES) + tuple(IMAGE_FEATURES) + tuple(ISOLATION_FEATURES) + ("cnn_logit",)
N_STAT = len(STAT_FEATURES)
_ISO = slice(N_STAT + len(IMAGE_FEATURES), N_STAT + len(IMAGE_FEATURES) + len(ISOLATION_FEATURES))
IMAGE_SIZE = 32  # the CNN's input box (class averages are Fourier-resampled to it)


# -- networks ------------------------------------------------------------------------------------
class ImageScorer(nn.Module):
    """Encoders (learning engine) with linear heads: class average -> logit, averaged over the
    ``members`` of a small ensemble; ``embed`` gives the mean L2-normalised embedding (for isolation).
    The shipped model has two members, each trained on a different half of the training data, so
    that each can score the other's half out of sample for the combiner."""

    def __init__(self, encoder: dict[str, Any] | None = None, members: int = 1):
        super().__init__()
        from .nn.encoders import encoder_from_config

        cfg = dict(encoder or {"name": "resnet_tiny", "in_size": IMAGE_SIZE, "embed_dim": 32})
        self.encoders = nn.ModuleList([encoder_from_config(cfg) for _ in range(members)])
        self.heads = nn.ModuleList([nn.Linear(self.encoders[0].embed_dim, 1) for _ in range(members)])
        self.config = {"encoder": dict(self.encoders[0].config), "members": int(members)}

    @property
    def in_size(self) -> int:
        return self.encoders[0].in_size

    @property
    def embed_dim(self) -> int:
        return self.encoders[0].embed_dim

    @classmethod
    def join(cls, members: Sequence["ImageScorer"]) -> "ImageScorer":
        out = cls(members[0].config["encoder"], len(members))
        for i, m in enumerate(members):
            out.encoders[i], out.heads[i] = m.encoders[0], m.heads[0]
        return out

    def logit_and_embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embs = [e(images) for e in self.encoders]
        logit = torch.stack([h(e)[:, 0] for h, e in zip(self.heads, embs)]).mean(0)
        return logit, F.normalize(torch.stack(embs).mean(0), dim=-1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_and_embed(images)[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_and_embed(images)[0]


class Combiner(nn.Module):
    """Evidence vector (raw, NaN = missing) -> logit. Standardisation is inside (buffers), so the
    same raw vector goes in at training and scoring time."""

    def __init__(self, n_in: int = len(EVIDENCE), hidden: int = 0, dropout: float = 0.1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.n_flags = N_STAT + 1  # one flag per statistic, one for isolation
        # hidden=0: a linear model (logistic regression on the standardised evidence), which
        # generalises across data sets better than an MLP trained on a few hundred classes
        self.net = nn.Linear(n_in + self.n_flags, 1) if not hidden else nn.Sequential(
            nn.Linear(n_in + self.n_flags, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.config = {"n_in": n_in, "hidden": hidden, "dropout": dropout}

    def encode(self, raw: torch.Tensor) -> torch.Tensor:
        raw = raw.float()
        missing = torch.isnan(raw)
        z = ((raw - self.mean) / self.std).clamp(-6, 6)
        z = torch.where(missing, torch.zeros_like(z), z)
        flags = torch.cat([missing[:, :N_STAT], missing[:, _ISO].any(1, keepdim=True)], 1).float()
        return torch.cat([z, flags], 1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.net(self.encode(raw))[:, 0]


# -- calibration ----------------------------------------------------------------------------------
def fit_platt(logits: np.ndarray, labels: np.ndarray, l2: float = 1e-3) -> dict[str, Any]:
    """p = sigmoid(a * logit + b), fitted on the log-loss with Platt's target smoothing (labels
    1 -> (n+ + 1)/(n+ + 2), 0 -> 1/(n- + 2)), which keeps a and b finite on separable data."""
    from scipy.optimize import minimize

    x = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    npos, nneg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0.5, (npos + 1) / (npos + 2), 1 / (nneg + 2))

    def loss(ab):
        z = ab[0] * x + ab[1]
        # -[t log s(z) + (1-t) log(1-s(z))] = logaddexp(0, z) - t z, stable for any z
        val = np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * l2 * ab[0] ** 2
        s = 0.5 * (1 + np.tanh(0.5 * z))
        return val, np.array([np.sum((s - t) * x) + l2 * ab[0], np.sum(s - t)])

    scale = 1.0 / max(np.std(x), 1e-6)
    res = minimize(loss, np.array([scale, -scale * np.mean(x)]), jac=True, method="L-BFGS-B")
    return {"kind": "platt", "a": float(res.x[0]), "b": float(res.x[1]), "n": int(len(y))}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(z, np.float64)))


def fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Isotonic regression (pool adjacent violators) of the labels on the logit; the step function
    is stored as knots (block centres) and interpolated linearly between them."""
    order = np.argsort(logits, kind="stable")
    x = np.asarray(logits, np.float64)[order]
    y = np.asarray(labels, np.float64)[order]
    vals, wts, xs = [], [], []
    for xi, yi in zip(x, y):
        vals.append(yi), wts.append(1.0), xs.append([xi])
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            v, w = vals.pop(), wts.pop()
            xx = xs.pop()
            vals[-1] = (vals[-1] * wts[-1] + v * w) / (wts[-1] + w)
            wts[-1] += w
            xs[-1] += xx
    kx = np.array([np.mean(b) for b in xs])
    ky = np.array(vals)
    # keep the extremes away from exactly 0/1: a handful of held-out classes cannot prove certainty
    n = len(y)
    ky = np.clip(ky, 0.5 / n, 1 - 0.5 / n)
    return {"kind": "isotonic", "x": torch.tensor(kx), "y": torch.tensor(ky), "n": int(n)}


def apply_calibration(cal: dict[str, Any] | None, logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    if cal is None:
        return _sigmoid(x)
    if cal["kind"] == "platt":
        return _sigmoid(cal["a"] * x + cal["b"])
    if cal["kind"] == "isotonic":
        kx, ky = np.asarray(cal["x"], np.float64), np.asarray(cal["y"], np.float64)
        return np.interp(x, kx, ky)
    raise InputError(f"unknown calibration {cal['kind']!r}")


def fit_calibration(logits: np.ndarray, labels: np.ndarray, min_isotonic: int = 300) -> dict[str, Any]:
    labels = np.asarray(labels)
    if len(labels) >= min_isotonic and 0 < labels.sum() < len(labels):
        return fit_isotonic(logits, labels)
    return fit_platt(logits, labels)


def auroc(score: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both kinds."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    r = rankdata(score)
    npos, nneg = y.sum(), (~y).sum()
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: |mean label - mean probability| per equal-width probability bin, weighted by the bin's share."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(y[idx == b].mean() - p[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))


# -- the model ------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per class (ClassSet order): calibrated probability, the combiner's logit, the evidence."""

    probability: np.ndarray
    logit: np.ndarray
    evidence: np.ndarray
    mode: str
    seconds: float = 0.0


@dataclass
class RankModel:
    image: ImageScorer
    combiner: Combiner
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # -- evidence and scores
    @torch.no_grad()
    def image_evidence(self, images, batch: int = 256, device="cpu") -> tuple[np.ndarray, np.ndarray]:
        """(CNN logits (K,), embeddings (K, D)) of class averages (K, b, b)."""
        from .images import fourier_resize

        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        x = torch.nan_to_num(x)
        size = self.image.in_size
        self.image.eval()
        self.image.to(device)
        logits, embs = [], []
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            if xb.shape[-1] != size:
                xb = fourier_resize(xb, size)
            lg, e = self.image.logit_and_embed(xb.to(device))
            embs.append(e.cpu())
            logits.append(lg.cpu())
        if not logits:
            return np.zeros(0), np.zeros((0, self.image.embed_dim))
        return torch.cat(logits).double().numpy(), torch.cat(embs).double().numpy()

    def evidence(self, cs: ClassSet, stats: bool = True, device="cpu") -> np.ndarray:
        """(K, len(EVIDENCE)) raw evidence; NaN where missing. ``stats=False`` hides the statistics."""
        if cs.images is None:
            raise InputError("ranking needs the class average images (the stack was not found or not read)",
                             cs.source)
        st = stat_features(cs) if stats else np.full((len(cs), N_STAT), np.nan)
        img = image_features(cs.images)
        logit, emb = self.image_evidence(cs.images, device=device)
        iso = isolation_features(emb)
        return np.concatenate([st, img, iso, logit[:, None]], 1)

    @torch.no_grad()
    def combine(self, evidence: np.ndarray, device="cpu") -> np.ndarray:
        self.combiner.eval()
        self.combiner.to(device)
        x = torch.as_tensor(evidence, dtype=torch.float32, device=device)
        return self.combiner(x).double().cpu().numpy() if len(x) else np.zeros(0)

    def score(self, cs: ClassSet, device="cpu") -> Scores:
        """Calibrated probabilities that each class is good (ClassSet order)."""
        t0 = time.perf_counter()
        ev = self.evidence(cs, device=device)
        mode = "stats" if np.isfinite(ev[:, :N_STAT]).any() else "image"
        logit = self.combine(ev, device)
        prob = apply_calibration(self.calibration.get(mode), logit)
        n = class_counts(cs)
        prob = np.where(np.isfinite(n) & (n <= 0), 0.0, prob)  # an empty class has nothing to keep
        return Scores(np.clip(prob, 0.0, 1.0), logit, ev, mode, time.perf_counter() - t0)

    # -- persistence
    def state(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "evidence": list(EVIDENCE),
                "image_config": self.image.config, "image_state": self.image.state_dict(),
                "combiner_config": self.combiner.config, "combiner_state": self.combiner.state_dict(),
                "calibration": self.calibration, "info": self.info}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        state = {k: v for k, v in self.state().items()}
        state["image_state"] = {k: v.detach().cpu().clone() for k, v in state["image_state"].items()}
        state["combiner_state"] = {k: v.detach().cpu().clone() for k, v in state["combiner_state"].items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "RankModel":
        """A saved model (default: the shipped weights); InputError naming the file when it is not one."""
        if path is None or str(path) == "":
            from .weights import default_weights

            path = default_weights("rank")
            if not Path(path).exists():
                raise InputError("the shipped ranker weights are missing (reinstall cryolens, or give --model)", path)
        path = Path(path)
        if not path.is_file():
            raise InputError("model file not found", path)
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputError(f"cannot read the ranker model ({type(err).__name__}: {err})", path) from err
        if not isinstance(st, dict) or st.get("format") != MODEL_FORMAT:
            raise InputError(f"not a cryolens rank model (format {st.get('format') if isinstance(st, dict) else '?'!r})",
                             path)
        if st.get("version") != MODEL_VERSION:
            raise InputError(f"rank model format version {st.get('version')!r} is not supported (this cryolens "
                             f"reads version {MODEL_VERSION})", path)
        if list(st.get("evidence", [])) != list(EVIDENCE):
            raise InputError("the model was trained on a different feature set than this cryolens computes", path)
        image = ImageScorer(st["image_config"]["encoder"], int(st["image_config"].get("members", 1)))
        image.load_state_dict(st["image_state"])
        comb = Combiner(**st["combiner_config"])
        comb.load_state_dict(st["combiner_state"])
        return cls(image.eval(), comb.eval(), dict(st.get("calibration") or {}), dict(st.get("info") or {}))


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
    from .nn.augment import Compose, RandomRotation, RandomTranslation

    return Compose([RandomRotation(180.0), RandomTranslation(0.03)])


def _resized(images, size: int) -> torch.Tensor:
    from .images import fourier_resize

    x = torch.nan_to_num(torch.as_tensor(np.asarray(images), dtype=torch.float32))
    return fourier_resize(x, size) if x.shape[-1] != size else x


def train_image_scorer(model: ImageScorer, images: torch.Tensor, labels: np.ndarray, weights: np.ndarray,
                       steps: int, lr: float = 2e-3, batch: int = 32, seed: int = 0, device="cpu",
                       log: Callable[[str], None] | None = None, should_stop=None) -> None:
    """Train the CNN with balanced, weighted sampling (``core.train.train``)."""
    from .train import TrainConfig, train

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
    from .train import TrainConfig, train

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
        model.calibration[mode] = fit_calibration(logit, y)
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
        m = RankModel(copy.deepcopy(base.image), copy.deepcopy(base.combiner), dict(base.calibration), dict(base.info))
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
