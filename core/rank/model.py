"""The 2D class ranker: a calibrated probability that a class is good.

Evidence per class (``core.rank.features``): statistics where the source has them, RELION-ranker-
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
saved as plain tensors and dicts (``core.artifacts``, format ``cryolens.rank``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..artifacts import RANK_MODEL, load_torch, save_torch
from ..calibration import apply_calibration
from ..errors import InputError, JobAborted
from ..nn.embed import run_batched
from ..particles import ClassSet
from .features import (IMAGE_FEATURES, ISOLATION_FEATURES, STAT_FEATURES, class_counts, image_features,
                            isolation_features, stat_features)
from .image_rule import ImageRule
from .rules import (MIN_PARTICLES, RULE_FEATURES, Domain, RuleModel, apply_guard, blank_images, class_statistics,
                    rule_features)

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
        from ..nn.encoders import encoder_from_config

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


# -- the model ------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per class (ClassSet order): calibrated probability, the logit behind it, the evidence;
    ``source`` says what scored it (``learned``, ``rule``: the inputs lie outside the model's
    training domain), ``notes`` why, in words for the log."""

    probability: np.ndarray
    logit: np.ndarray
    evidence: np.ndarray
    mode: str
    seconds: float = 0.0
    source: str = "learned"
    notes: list[str] = field(default_factory=list)


@dataclass
class RobustHead:
    """How a model with class statistics holds on data it was not trained on (``core.rank.rules``):
    p = sigmoid(b + w_rule * rule_logit + w_image * image_logit), w >= 0, where the rule is the
    monotone classical rule and the image logit is the combiner's with the statistics hidden (it
    never sees them), so the score is monotone in particle count, resolution and accuracy by
    construction; unconverged, empty and tiny classes never score above the rule; inputs outside
    ``domain`` are scored by the rule alone. Fitted by ``core.rank.train.fit_robust_head``."""

    rule: RuleModel
    stack: list[float]  # [bias, w_rule, w_image]
    domain: Domain
    trained_on: dict[str, Any] = field(default_factory=dict)
    image_calibration: dict[str, Any] | None = None  # Platt on the same runs' classes as a bare stack

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "stack": list(self.stack), "domain": self.domain.to_dict(),
                "trained_on": self.trained_on, "image_calibration": self.image_calibration}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RobustHead":
        return cls(RuleModel.from_dict(d["rule"]), [float(v) for v in d["stack"]], Domain.from_dict(d["domain"]),
                   dict(d.get("trained_on") or {}), d.get("image_calibration"))


def domain_evidence(evidence: np.ndarray, rule_feats: np.ndarray) -> np.ndarray:
    """What the training domain is measured on: the image evidence (features, isolation, CNN logit)
    and the rule's statistics."""
    return np.concatenate([evidence[:, N_STAT:], rule_feats], 1)


DOMAIN_NAMES = list(EVIDENCE[N_STAT:]) + list(RULE_FEATURES)


FEATURE_CHUNK = 256  # classes per image-feature pass: the features are per class, an abort waits < 1 s


def _features(images, should_stop) -> np.ndarray:
    if should_stop is not None and should_stop():
        raise JobAborted()
    return image_features(images)


@dataclass
class RankModel:
    image: ImageScorer
    combiner: Combiner
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    robust: RobustHead | None = None
    image_rule: ImageRule | None = None  # the bare-stack score (``core.rank.image_rule``)

    # -- evidence and scores
    def image_evidence(self, images, batch: int = 64, device="cpu",
                       should_stop=None) -> tuple[np.ndarray, np.ndarray]:
        """(CNN logits (K,), embeddings (K, D)) of class averages (K, b, b). Batches of 64 keep
        an abort (``should_stop``, polled per batch) under a second on two CPU cores."""
        from ..images import fourier_resize

        x = torch.nan_to_num(torch.as_tensor(np.asarray(images), dtype=torch.float32))
        if not len(x):
            return np.zeros(0), np.zeros((0, self.image.embed_dim))
        size = self.image.in_size
        self.image.eval()
        self.image.to(device)
        logits, embs = run_batched(self.image, x, self.image.logit_and_embed, batch, device,
                                   prepare=lambda xb: fourier_resize(xb, size) if xb.shape[-1] != size else xb,
                                   should_stop=should_stop)
        return logits.double().numpy(), embs.double().numpy()

    def evidence(self, cs: ClassSet, stats: bool = True, device="cpu", should_stop=None) -> np.ndarray:
        """(K, len(EVIDENCE)) raw evidence; NaN where missing. ``stats=False`` hides the statistics."""
        if cs.images is None:
            raise InputError("ranking needs the class average images (the stack was not found or not read)",
                             cs.source)
        st = stat_features(cs) if stats else np.full((len(cs), N_STAT), np.nan)
        img = np.concatenate([_features(cs.images[i:i + FEATURE_CHUNK], should_stop)
                              for i in range(0, len(cs.images), FEATURE_CHUNK)] or [image_features(cs.images)])
        logit, emb = self.image_evidence(cs.images, device=device, should_stop=should_stop)
        iso = isolation_features(emb)
        return np.concatenate([st, img, iso, logit[:, None]], 1)

    @torch.no_grad()
    def combine(self, evidence: np.ndarray, device="cpu") -> np.ndarray:
        self.combiner.eval()
        self.combiner.to(device)
        x = torch.as_tensor(evidence, dtype=torch.float32, device=device)
        return self.combiner(x).double().cpu().numpy() if len(x) else np.zeros(0)

    def score(self, cs: ClassSet, device="cpu", should_stop=None) -> Scores:
        """Calibrated probabilities that each class is good (ClassSet order); ``should_stop`` is
        polled between image batches."""
        t0 = time.perf_counter()
        ev = self.evidence(cs, device=device, should_stop=should_stop)
        mode = "stats" if np.isfinite(ev[:, :N_STAT]).any() else "image"
        if self.robust is not None and mode == "stats":
            sc = self._robust_score(cs, ev, device)
        else:
            rule = self.image_rule
            if mode == "image" and rule is not None:  # within-stack monotone rule: holds across generators
                logit = rule.logit(ev[:, N_STAT:N_STAT + len(IMAGE_FEATURES)])
                cal = rule.calibration
            elif rule is not None and rule.stack is not None:  # statistics: the combiner and the rule, stacked
                logit = rule.stacked(self.combine(ev, device), ev[:, N_STAT:N_STAT + len(IMAGE_FEATURES)])
                cal = rule.stack_calibration
            else:
                logit = self.combine(ev, device)
                cal = self.calibration.get(mode)
                if self.robust is not None and self.robust.image_calibration and mode == "image":
                    cal = self.robust.image_calibration  # calibrated on RELION-made averages
            sc = Scores(apply_calibration(cal, logit), logit, ev, mode)
            if self.robust is not None:  # a bare stack: no rule to fall back on, but say so
                why = self.robust.domain.check(domain_evidence(ev, rule_features(class_statistics(cs))),
                                               cs.pixel_size, None if cs.images is None else cs.images.shape[-1])
                if why:
                    sc.notes.append("the class averages lie outside what the image model was trained on ("
                                    + "; ".join(why) + "): its scores are a weak guide")
        n = class_counts(cs)
        blank = blank_images(cs.images)
        if blank.any():
            sc.notes.append(f"{int(blank.sum())} blank class averages (constant images, as RELION writes for "
                            "empty classes) scored 0")
        sc.probability = np.clip(np.where((np.isfinite(n) & (n <= 0)) | blank, 0.0, sc.probability), 0.0, 1.0)
        sc.seconds = time.perf_counter() - t0
        return sc

    def _robust_score(self, cs: ClassSet, ev: np.ndarray, device) -> Scores:
        head = self.robust
        st = class_statistics(cs)
        rf = rule_features(st)
        rule_logit = head.rule.logit(rf)
        rule_p = 1.0 / (1.0 + np.exp(-rule_logit))
        hidden = ev.copy()
        hidden[:, :N_STAT] = np.nan
        image_logit = self.combine(hidden, device)
        logit = head.stack[0] + head.stack[1] * rule_logit + head.stack[2] * image_logit
        why = head.domain.check(domain_evidence(ev, rf), cs.pixel_size,
                                None if cs.images is None else cs.images.shape[-1])
        sc = Scores(1.0 / (1.0 + np.exp(-logit)), logit, ev, "stats")
        if why:
            sc.probability, sc.logit, sc.source = rule_p, rule_logit, "rule"
            sc.notes.append("inputs outside what the model was trained on (" + "; ".join(why)
                            + "): scored by the classical rule (resolution, particles, accuracy)")
        sc.probability = apply_guard(sc.probability, rule_p, st)
        if st.guarded.any():
            sc.notes.append(f"{int(st.unconverged.sum())} unconverged (999/inf) and {int(st.tiny.sum())} tiny "
                            f"(< {MIN_PARTICLES} particles) classes scored no higher than the rule")
        return sc

    # -- persistence
    def state(self) -> dict[str, Any]:
        """What the model file holds besides its format and version."""
        return {"evidence": list(EVIDENCE),
                "image_config": self.image.config, "image_state": self.image.state_dict(),
                "combiner_config": self.combiner.config, "combiner_state": self.combiner.state_dict(),
                "calibration": self.calibration, "info": self.info,
                **({"robust": self.robust.to_dict()} if self.robust is not None else {}),
                **({"image_rule": self.image_rule.to_dict()} if self.image_rule is not None else {})}

    def save(self, path: str | os.PathLike) -> Path:
        """A ``.pt`` of plain tensors and dicts (format ``cryolens.rank``, ``core.artifacts``)."""
        state = self.state()
        state["image_state"] = {k: v.detach().cpu().clone() for k, v in state["image_state"].items()}
        state["combiner_state"] = {k: v.detach().cpu().clone() for k, v in state["combiner_state"].items()}
        return save_torch(path, RANK_MODEL, state)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "RankModel":
        """A saved model (default: the shipped weights); InputError naming the file when it is not one."""
        if path is None or str(path) == "":
            from ..weights import default_weights

            path = default_weights("rank")
            if not Path(path).exists():
                raise InputError("the shipped ranker weights are missing (reinstall cryolens, or give --model)", path)
        st = load_torch(path, RANK_MODEL)
        if list(st.get("evidence", [])) != list(EVIDENCE):
            raise InputError("the model was trained on a different feature set than this cryolens computes", path)
        image = ImageScorer(st["image_config"]["encoder"], int(st["image_config"].get("members", 1)))
        image.load_state_dict(st["image_state"])
        comb = Combiner(**st["combiner_config"])
        comb.load_state_dict(st["combiner_state"])
        robust = RobustHead.from_dict(st["robust"]) if st.get("robust") else None
        try:
            rule = ImageRule.from_dict(st["image_rule"]) if st.get("image_rule") else None
        except ValueError as err:
            raise InputError(str(err), path) from None
        return cls(image.eval(), comb.eval(), dict(st.get("calibration") or {}), dict(st.get("info") or {}), robust,
                   rule)
