"""Evidence for ranking 2D classes: per-class statistics and RELION-ranker-style image features.

Statistics come from the class table (``ClassSet.table``) where the source has them, and are NaN
where it does not (a bare stack of class averages has none): particle count and share, estimated
resolution (``inf`` for empty classes), rotational/translational accuracy (NaN where RELION wrote
999), ESS and posterior. Some are also expressed relative to the rest of the data set (count
relative to the median class, resolution relative to the best class), because absolute values
move with the data set (box, pixel size, number of particles) while the ordering within a data
set carries over.

Image features follow the idea of RELION's class ranker (Kimanius et al. 2021, peers.md 1.1):
moments of the class average inside a protein mask, a solvent mask and a ring mask, plus the
shape of the protein mask (area, centring, fragmentation), the power spectrum (fall-off,
anisotropy of streaks and carbon edges, Bragg-like peaks of crystalline ice), and how much of the
image a rotational average explains (ring artefacts). Every image is resampled to ``FEATURE_BOX``
pixels first, so features do not depend on the box.

The isolation of a class in an embedding space (how far it sits from the other classes) is
computed by ``isolation_features`` from embeddings the ranker provides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..images import fourier_resize, normalize_in_mask, radial_frequency_grid, radius_grid
from ..particles import ClassSet

FEATURE_BOX = 64
WORST_ACC_ROT = 180.0  # an unconverged class's rotational accuracy (degrees): RELION writes 999
DISK = 0.46  # radius of the analysed disk, fraction of the box (class averages are masked near 0.5)

# Column orders of the feature tables: the shipped rank model (core/weights/rank.pt) was trained
# on them, so a new feature is appended, never inserted.
STAT_FEATURES = ("log_count", "rel_count", "rel_share", "inv_res", "nyquist_frac", "rel_res", "weighted_res",
                 "empty", "log_acc_rot", "rel_acc_rot", "acc_trans_px", "ess", "posterior", "completeness")
IMAGE_FEATURES = (
    "prot_area", "prot_mean", "prot_sd", "prot_skew", "prot_kurt",
    "solv_mean", "solv_sd", "solv_skew", "solv_kurt",
    "ring_mean", "ring_sd", "ring_skew", "ring_kurt",
    "contrast", "otsu_sep", "centroid_off", "gyration", "n_blobs", "largest_blob", "edge_prot",
    "spec_slope", "spec_high", "spec_aniso", "spec_peak", "rot_r2", "grad_ratio", "outside_sd", "flatness",
)
ISOLATION_FEATURES = ("knn_dist", "rel_knn_dist")
# the direction in which a statistic makes a class better (0: no fixed direction): a model's weights
# on the statistics must follow it (``core.rank.train.constrain_statistics``)
STAT_SIGNS = {"log_count": 1, "rel_count": 1, "rel_share": 1, "inv_res": 1, "nyquist_frac": 1, "rel_res": 1,
              "weighted_res": -1, "empty": -1, "log_acc_rot": -1, "rel_acc_rot": -1, "acc_trans_px": -1,
              "ess": 0, "posterior": 0, "completeness": 1}


# -- feature tables --------------------------------------------------------------------------
def _columns(named: dict, names: tuple[str, ...], k: int) -> np.ndarray:
    """(k, len(names)) float64 with the column of each name in ``names`` order, the order the
    shipped rank model was trained on (scalars are broadcast); non-finite values become NaN."""
    if set(named) != set(names):
        raise RuntimeError(f"features computed {sorted(set(named) - set(names))} are not named, "
                           f"named {sorted(set(names) - set(named))} are not computed")
    cols = [named[name].numpy() if isinstance(named[name], torch.Tensor) else named[name] for name in names]
    out = np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), (k,)) for c in cols], 1)
    out[~np.isfinite(out)] = np.nan
    return out


# -- statistics --------------------------------------------------------------------------------
def _col(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)


def class_counts(cs: ClassSet) -> np.ndarray:
    """Particles per class, NaN where unknown (bare stacks, model stars without their data star)."""
    counts = cs.known_counts()
    return np.full(len(cs), np.nan) if counts is None else counts.to_numpy(np.float64)


def stat_features(cs: ClassSet) -> np.ndarray:
    """(K, len(STAT_FEATURES)) float64; NaN where the source does not say."""
    t = cs.table
    n = class_counts(cs)
    share = _col(t, "distribution")
    if np.isnan(share).all() and np.isfinite(n).any() and np.nansum(n) > 0:
        share = n / np.nansum(n)
    res = _col(t, "resolution")
    px = float(cs.pixel_size) if cs.pixel_size else np.nan
    feats: dict[str, np.ndarray | float] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        feats["log_count"] = np.log1p(n)
        med = np.nanmedian(n) if np.isfinite(n).any() else np.nan
        feats["rel_count"] = np.log1p(n) - np.log1p(med)
        feats["rel_share"] = np.log(np.clip(share * len(t), 1e-4, None))
        # inf resolution (empty class, or no signal) is "no resolution": 0 in the inverse
        finite = np.isfinite(res) & (res > 0)
        inv = np.where(finite, 1.0 / np.where(finite, res, 1.0), np.where(np.isnan(res), np.nan, 0.0))
        feats["inv_res"] = 10.0 * inv
        feats["nyquist_frac"] = 2.0 * px * inv if np.isfinite(px) else np.nan
        best = np.nanmax(inv) if np.isfinite(inv).any() else np.nan
        feats["rel_res"] = inv / best if best and best > 0 else np.where(np.isnan(inv), np.nan, 0.0)
        # RELION's "weighted resolution" d^2 / ln N: resolution that many particles should have reached
        r = np.where(finite, res, 200.0)
        feats["weighted_res"] = np.where(np.isfinite(n) & ~np.isnan(res),
                                         2 * np.log(np.minimum(r, 200.0)) - np.log(np.log(np.maximum(n, 1) + 2)),
                                         np.nan)
        empty = np.where(np.isfinite(n), (n <= 0).astype(float), np.nan)
        feats["empty"] = np.where(np.isinf(res), 1.0, empty)
        acc = _col(t, "acc_rot")
        if np.isfinite(acc).any():  # the source gives accuracies: a missing one is RELION's 999 (unconverged)
            acc = np.where(np.isfinite(acc), acc, WORST_ACC_ROT)
        log_acc = np.log1p(np.clip(acc, 0, WORST_ACC_ROT))
        feats["log_acc_rot"] = log_acc
        feats["rel_acc_rot"] = log_acc - np.nanmedian(log_acc) if np.isfinite(acc).any() else np.nan
        tr = _col(t, "acc_trans")
        if np.isfinite(tr).any():
            tr = np.where(np.isfinite(tr), tr, np.inf)  # clipped to the worst value below
        feats["acc_trans_px"] = np.log1p(np.clip(tr / px, 0, 100)) if np.isfinite(px) else np.nan
        for name in ("ess", "posterior", "completeness"):
            feats[name] = _col(t, name)
    return _columns(feats, STAT_FEATURES, len(t))


# -- image features ------------------------------------------------------------------------------
def prepare_images(images, box: int = FEATURE_BOX) -> torch.Tensor:
    """(K, b, b) -> (K, box, box) float32, resampled and standardised inside the analysed disk."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.dim() != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected (K, box, box) class averages, got {tuple(x.shape)}")
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if x.shape[-1] != box:
        x = fourier_resize(x, box)
    return normalize_in_mask(x, (radius_grid(box) <= DISK * box).float(), eps=1e-6, zero_outside=False)


def _gauss_smooth(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    k = radial_frequency_grid(x.shape[-1], True, None, x.device)
    return torch.fft.irfft2(torch.fft.rfft2(x) * torch.exp(-2 * (math.pi * sigma_px * k) ** 2), s=x.shape[-2:])


def _moments(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(K, 4) mean, sd, skewness, kurtosis of x within masks m (K, b, b); NaN for empty masks."""
    n = m.sum((-2, -1))
    safe = n.clamp_min(1)
    mean = (x * m).sum((-2, -1)) / safe
    d = (x - mean[:, None, None]) * m
    var = (d ** 2).sum((-2, -1)) / safe
    sd = var.sqrt()
    s = sd.clamp_min(1e-6)
    skew = (d ** 3).sum((-2, -1)) / safe / s ** 3
    kurt = (d ** 4).sum((-2, -1)) / safe / s ** 4 - 3.0
    out = torch.stack([mean, sd, skew, kurt], 1)
    out[n < 3] = float("nan")
    return out


def _otsu(values: torch.Tensor, weights: torch.Tensor, bins: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: Otsu threshold over the weighted pixels and the separability (between-class / total variance)."""
    k = values.shape[0]
    v = values.reshape(k, -1)
    w = weights.reshape(1, -1).expand(k, -1)
    lo = torch.where(w > 0, v, torch.full_like(v, float("inf"))).min(1).values
    hi = torch.where(w > 0, v, torch.full_like(v, float("-inf"))).max(1).values
    span = (hi - lo).clamp_min(1e-6)
    idx = ((v - lo[:, None]) / span[:, None] * (bins - 1)).round().long().clamp(0, bins - 1)
    hist = torch.zeros(k, bins).scatter_add_(1, idx, w)
    p = hist / hist.sum(1, keepdim=True).clamp_min(1e-12)
    centres = lo[:, None] + (torch.arange(bins) + 0.5)[None] / bins * span[:, None]
    w0 = p.cumsum(1)
    mu = (p * centres).cumsum(1)
    mu_t = mu[:, -1:]
    between = (mu_t * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    between[:, -1] = 0
    best = between.argmax(1)
    total = (p * (centres - mu_t) ** 2).sum(1).clamp_min(1e-12)
    thr = lo + (best.float() + 1.0) / bins * span
    return thr, between.gather(1, best[:, None])[:, 0] / total


@dataclass(frozen=True)
class _Regions:
    """Where image features are measured, on the ``FEATURE_BOX`` grid."""

    r: torch.Tensor  # (b, b) distance from the box centre, px
    R: float  # radius of the analysed disk, px
    disk: torch.Tensor  # (b, b) the analysed disk
    ring: torch.Tensor  # (b, b) its outer quarter, (0.75 R, R]
    outside: torch.Tensor  # (b, b) between the disk and the box's inscribed circle
    smooth: torch.Tensor  # (K, b, b) the images smoothed (Gaussian, sd 1.2 px)
    prot: torch.Tensor  # (K, b, b) protein mask: smoothed pixels of the disk above the Otsu threshold
    solv: torch.Tensor  # (K, b, b) solvent mask: the rest of the disk
    otsu_sep: torch.Tensor  # (K,) Otsu separability of the smoothed disk


def _regions(x: torch.Tensor) -> _Regions:
    box = x.shape[-1]
    r = radius_grid(box)
    R = DISK * box
    disk = (r <= R).float()
    sm = _gauss_smooth(x, 1.2)
    thr, sep = _otsu(sm, disk)
    prot = ((sm > thr[:, None, None]) & (disk[None] > 0)).float()
    return _Regions(r, R, disk, ((r > 0.75 * R) & (r <= R)).float(), ((r > R) & (r <= 0.5 * box)).float(),
                    sm, prot, disk[None] * (1 - prot), sep)


def _mask_features(x: torch.Tensor, reg: _Regions) -> dict[str, torch.Tensor]:
    """Protein-mask area, moments of the protein, solvent and ring pixels, how well the masks
    separate (Otsu separability, protein-solvent contrast, edge sharpness)."""
    k = x.shape[0]
    feats = {"prot_area": reg.prot.sum((-2, -1)) / reg.disk.sum()}
    moments = {"prot": _moments(x, reg.prot), "solv": _moments(x, reg.solv),
               "ring": _moments(x, reg.ring.expand(k, -1, -1))}
    for region, m in moments.items():
        for j, stat in enumerate(("mean", "sd", "skew", "kurt")):
            feats[f"{region}_{stat}"] = m[:, j]
    feats["contrast"] = moments["prot"][:, 0] - moments["solv"][:, 0]
    feats["otsu_sep"] = reg.otsu_sep
    # mean gradient magnitude on the protein relative to the solvent: sharp particle vs blur
    gy, gx = torch.gradient(reg.smooth, dim=(-2, -1))
    g = torch.sqrt(gx ** 2 + gy ** 2)
    feats["grad_ratio"] = torch.log(((g * reg.prot).sum((-2, -1)) / reg.prot.sum((-2, -1)).clamp_min(1) + 1e-3)
                                    / ((g * reg.solv).sum((-2, -1)) / reg.solv.sum((-2, -1)).clamp_min(1) + 1e-3))
    return feats


def _shape_features(reg: _Regions) -> dict[str, torch.Tensor]:
    """Centring and spread of the positive (protein-like) mass of the smoothed image, and the
    share of the protein mask in the outer ring (particles cut by the mask)."""
    box = reg.smooth.shape[-1]
    pos = reg.smooth.clamp_min(0) * reg.disk
    mass = pos.sum((-2, -1)).clamp_min(1e-6)
    c = torch.arange(box, dtype=torch.float32) - box // 2
    cy = (pos.sum(-1) * c).sum(-1) / mass
    cx = (pos.sum(-2) * c).sum(-1) / mass
    return {"centroid_off": torch.sqrt(cx ** 2 + cy ** 2) / reg.R,
            "gyration": torch.sqrt((pos * reg.r ** 2).sum((-2, -1)) / mass) / reg.R,
            "edge_prot": (reg.prot * reg.ring).sum((-2, -1)) / reg.prot.sum((-2, -1)).clamp_min(1)}


def _fragmentation_features(reg: _Regions) -> dict[str, torch.Tensor]:
    """Connected components of the protein mask: log(1 + number of blobs of >= 4 px) and the
    largest blob's share (few images, so scipy on the CPU)."""
    from scipy import ndimage

    prot = reg.prot.numpy() > 0
    k = len(prot)
    blobs = np.zeros(k)
    largest = np.zeros(k)
    for i in range(k):
        lab, nlab = ndimage.label(prot[i])
        if nlab:
            sizes = np.bincount(lab.ravel())[1:]
            blobs[i] = np.log1p((sizes >= 4).sum())
            largest[i] = sizes.max() / max(sizes.sum(), 1)
    return {"n_blobs": torch.as_tensor(blobs, dtype=torch.float32),
            "largest_blob": torch.as_tensor(largest, dtype=torch.float32)}


def _spectrum_features(x: torch.Tensor, reg: _Regions) -> dict[str, torch.Tensor]:
    """Power spectrum of the disk: fall-off (log-log slope), high-frequency share, directionality
    (streaks, carbon edges: strongest of 12 angular sectors over their mean, log) and the highest
    peak over its shell's mean (log; Bragg-like spots of crystalline ice)."""
    k, box = x.shape[0], x.shape[-1]
    F = torch.fft.rfft2(x * reg.disk)
    P = F.real ** 2 + F.imag ** 2
    kk = radial_frequency_grid(box, True, None)
    shells = (kk * box).round().long().clamp(max=box // 2)
    nb = box // 2 + 1
    prof = torch.zeros(k, nb).scatter_add_(1, shells.reshape(1, -1).expand(k, -1), P.reshape(k, -1))
    cnt = torch.zeros(nb).scatter_add_(0, shells.reshape(-1), torch.ones(shells.numel())).clamp_min(1)
    prof = prof / cnt
    lk = torch.log(torch.arange(3, box // 3, dtype=torch.float32))
    lp = torch.log(prof[:, 3:box // 3].clamp_min(1e-12))
    lkc = lk - lk.mean()
    slope = ((lp - lp.mean(1, keepdim=True)) * lkc).sum(1) / (lkc ** 2).sum()
    high = prof[:, box // 4:].sum(1) / prof[:, 1:].sum(1).clamp_min(1e-12)
    ky = torch.fft.fftfreq(box)[:, None].expand(-1, nb)
    kx = torch.fft.rfftfreq(box)[None, :].expand(box, -1)
    ang = torch.atan2(ky, kx) % math.pi  # rfft half-plane: direction mod 180 degrees
    band = ((kk > 0.06) & (kk < 0.45)).float()
    sector = (ang / math.pi * 12).long().clamp(max=11)
    sec = torch.zeros(k, 12).scatter_add_(1, sector.reshape(1, -1).expand(k, -1), (P * band).reshape(k, -1))
    aniso = sec.max(1).values / sec.mean(1).clamp_min(1e-12)
    hb = ((kk > 0.15) & (kk < 0.48))
    rel = P / prof.gather(1, shells.reshape(1, -1).expand(k, -1)).reshape(k, box, nb).clamp_min(1e-12)
    peak = torch.log(torch.where(hb[None], rel, torch.zeros_like(rel)).reshape(k, -1).max(1).values.clamp_min(1))
    return {"spec_slope": slope, "spec_high": high, "spec_aniso": torch.log(aniso), "spec_peak": peak}


def _symmetry_features(x: torch.Tensor, reg: _Regions) -> dict[str, torch.Tensor]:
    """Share of the disk's variance that the rotational average explains (ring artefacts, blobs)."""
    k, box = x.shape[0], x.shape[-1]
    nb = box // 2 + 1
    ri = reg.r.round().long().clamp(max=box // 2)
    rc = torch.zeros(nb).scatter_add_(0, ri.reshape(-1), reg.disk.reshape(-1)).clamp_min(1)
    rp = torch.zeros(k, nb).scatter_add_(1, ri.reshape(1, -1).expand(k, -1), (x * reg.disk).reshape(k, -1)) / rc
    resid = (x - rp.gather(1, ri.reshape(1, -1).expand(k, -1)).reshape(k, box, box)) * reg.disk
    return {"rot_r2": 1 - (resid ** 2).sum((-2, -1)) / ((x * reg.disk) ** 2).sum((-2, -1)).clamp_min(1e-6)}


def _background_features(x: torch.Tensor, reg: _Regions) -> dict[str, torch.Tensor]:
    """Signal outside the analysed disk (rms) and whether the image is flat (an empty class)."""
    k = x.shape[0]
    return {"outside_sd": torch.sqrt((x ** 2 * reg.outside).sum((-2, -1)) / reg.outside.sum().clamp_min(1)),
            "flatness": (x.reshape(k, -1).std(1) < 1e-3).float()}


def image_features(images) -> np.ndarray:
    """(K, len(IMAGE_FEATURES)) float64 from class averages (K, b, b) of any box."""
    x = prepare_images(images)
    reg = _regions(x)
    named = {**_mask_features(x, reg), **_shape_features(reg), **_fragmentation_features(reg),
             **_spectrum_features(x, reg), **_symmetry_features(x, reg), **_background_features(x, reg)}
    return _columns(named, IMAGE_FEATURES, x.shape[0])


def isolation_features(embeddings: np.ndarray, k: int = 3) -> np.ndarray:
    """(K, 2): mean cosine distance of each class to its k nearest other classes, and that
    distance relative to the data set's median (log). NaN with fewer than k + 1 classes."""
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(e)
    out = np.full((n, len(ISOLATION_FEATURES)), np.nan)
    if n < k + 1:
        return out
    e = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)
    d = 1.0 - e @ e.T
    np.fill_diagonal(d, np.inf)
    knn = np.sort(d, axis=1)[:, :k].mean(1)
    out[:, 0] = knn
    out[:, 1] = np.log((knn + 1e-3) / (np.median(knn) + 1e-3))
    return out


def ranker_style_features(cs: ClassSet) -> tuple[np.ndarray, list[str]]:
    """Statistics + image features (what a RELION-class-ranker-style model sees), NaN where missing."""
    if cs.images is None:
        from ..errors import InputError

        raise InputError("ranking needs the class average images (the stack was not found or not read)", cs.source)
    return np.concatenate([stat_features(cs), image_features(cs.images)], 1), list(STAT_FEATURES + IMAGE_FEATURES)
