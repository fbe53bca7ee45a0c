"""Which protein is each 2D class? Retrieval of class averages against a map library.

Three ways to score a class against every library entry (a map rendered at many views):

- ``embedding``: cosine similarity in a learned embedding space (``IdentityModel``), best over
  the entry's reference projections;
- ``correlation``: brute-force NCC with in-plane rotation and shift search (``core.correlate``);
- ``combined``: the embedding shortlists entries per class (at least ``shortlist``, and every
  entry whose embedding score clears the model's calibrated bar, ``shortlist_entries``), NCC
  re-ranks them: NCC's answers for a fraction of its time.

NCC is searched ``fast`` by default: polar rotational correlation (``core.polar``) ranks every
reference first, and NCC runs on the best views of each class's best entries only
(``score_entries``); ``exhaustive`` runs it on every reference.

Confidence and "unknown". A class is compared in the same way with a fixed set of decoy proteins
(phantoms made with a fixed seed at the library's sampling, never part of any library). From the
best library score, the best competitor (second entry or best decoy) and the decoy scores' mean
and spread, a logistic model fitted on held-out proteins at training time gives P(the top-1
entry is right). Below ``min_confidence`` the answer is "unknown", so a contaminant or a protein
missing from the library is not forced onto a wrong name; the decoy scores make this independent
of how many entries the user's library has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..calibration import logistic
from ..correlate import ncc_search
from ..polar import polar_coefficients, polar_correlation
from ..errors import CryolensError
from ..images import normalize_in_mask, resample_images, soft_circular_mask
from ..index import EmbeddingIndex, group_max
from .library import Library
from .model import MODES, SHORTLIST, IdentityModel, embed_decoys, embed_images, embed_library


# ---------------------------------------------------------------------------------------- queries


def prepare_queries(images, pixel_size: float | None, library: Library) -> torch.Tensor:
    """Class averages brought to the library's pixel size and box, zero mean and unit variance
    inside the references' mask (what ``render_references`` does to the references)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.dim() != 3 or x.shape[-1] != x.shape[-2]:
        raise CryolensError(f"class averages must be a stack of square images, got shape {tuple(x.shape)}")
    if pixel_size is None or not pixel_size > 0:
        raise CryolensError("the class averages have no pixel size: give --pixel_size")
    x = resample_images(x, float(pixel_size), library.pixel_size, library.box)
    return normalize_in_mask(x, soft_circular_mask(library.box, 0.45 * library.box, max(2.0, 0.05 * library.box)))


# ---------------------------------------------------------------------------------------- scoring


@dataclass
class EntryScores:
    """Scores of Q classes against E library entries (-inf: not scored, e.g. off the shortlist)."""

    scores: np.ndarray  # (Q, E)
    best_ref: np.ndarray  # (Q, E) library reference index that gave the score (-1 if none)
    psi: np.ndarray  # (Q, E) in-plane angle from the NCC search (NaN for embedding scores)
    decoy: np.ndarray  # (Q, N_DECOYS) the same score against each decoy protein
    refs: np.ndarray | None = None  # (Q, R) per-reference scores, when asked for (kNN metrics)


SPARSE = 0.05  # below this share of (query, reference) pairs wanted, each query is searched alone


def _ncc_groups(q: torch.Tensor, refs: np.ndarray, groups: np.ndarray, n: int, library: Library,
                n_psi: int, keep: list | None = None, need: np.ndarray | None = None,
                should_stop: Callable[[], bool] | None = None,
                max_pairs: int = 20_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best NCC per (query, group) over the group's references, in blocks of queries so that the
    (queries, references) work arrays (~50 bytes a pair) stay under ``max_pairs`` pairs. ``need``
    (Q, R) bool: only these pairs are searched (-inf elsewhere); when few are (the fast search's
    shortlist), each query is searched against its own references gathered into one batch, since
    ``ncc_search`` pays for every reference of a chunk that any query wants. ``keep`` receives the
    per-reference scores."""
    kw = dict(n_psi=n_psi, max_shift_px=max(2, int(round(0.05 * library.box))), max_freq=_max_freq(library),
              should_stop=should_stop)
    Q, R = len(q), len(refs)
    sparse = need is not None and need.mean() < SPARSE
    refs_t = None if sparse else torch.from_numpy(np.ascontiguousarray(refs, np.float32))
    groups_t = torch.from_numpy(np.array(groups, np.int64))
    block = int(np.clip(max_pairs // max(R, 1), 1, 32))
    best, arg, psi, full = [], [], [], []
    for start in range(0, Q, block):
        sl = slice(start, min(start + block, Q))
        score = np.full((sl.stop - start, R), -np.inf, np.float32)
        angle = np.zeros((sl.stop - start, R), np.float32)
        if sparse:
            for k, i in enumerate(range(start, sl.stop)):
                idx = np.flatnonzero(need[i])
                if len(idx):
                    m = ncc_search(q[i:i + 1], torch.from_numpy(np.asarray(refs[idx], np.float32)), **kw)
                    score[k, idx], angle[k, idx] = m.score[0], m.psi[0]
        else:
            m = ncc_search(q[sl], refs_t, need=None if need is None else torch.from_numpy(need[sl]), **kw)
            score[:], angle[:] = m.score, m.psi
        b, a = (t.numpy() for t in group_max(torch.from_numpy(score), groups_t, n))
        best.append(b)
        arg.append(a)
        psi.append(np.where(a >= 0, np.take_along_axis(angle, np.maximum(a, 0), 1), np.nan))
        if keep is not None:
            full.append(score)
    if keep is not None:
        keep.append(np.concatenate(full))
    return np.concatenate(best), np.concatenate(arg), np.concatenate(psi)


SEARCHES = ("fast", "exhaustive")
FAST_ENTRIES = 24  # fast search: entries per class that NCC searches (the best by polar correlation)
FAST_VIEWS = 8  # ... and views per such entry


def _max_freq(library: Library) -> float:
    return min(0.5, library.pixel_size / library.resolution_A)


def polar_refs(holder, references: np.ndarray, max_freq: float, should_stop=None) -> torch.Tensor:
    """The polar coefficients of a library's (or its decoys') references, made once per object
    and kept on it in memory (``core.polar``; not saved: they are cheaper to make than to read)."""
    arr = np.asarray(references)
    key = (arr.__array_interface__["data"][0], arr.shape, round(float(max_freq), 6))  # new references: new key
    cached = getattr(holder, "_polar_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, polar_coefficients(torch.from_numpy(arr), max_freq, should_stop=should_stop))
        holder._polar_cache = cached
    return cached[1]


def polar_need(pq: torch.Tensor, pr: torch.Tensor, n_entries: int, n_views: int, n_keep: int,
               allowed: np.ndarray | None = None, should_stop=None,
               keep_views: int = FAST_VIEWS) -> tuple[np.ndarray, np.ndarray]:
    """Which (query, reference) pairs the fast search gives to NCC: per query, the ``n_keep``
    entries with the best polar correlation (among ``allowed`` (Q, E) when given: the embedding's
    shortlist), and within each the ``keep_views`` best views. References are ``n_entries`` blocks
    of ``n_views`` consecutive views (how libraries and decoys are built). Returns (need (Q, R)
    bool, best polar score per entry (Q, E))."""
    c = polar_correlation(pq, pr, should_stop=should_stop).reshape(len(pq), n_entries, n_views)
    best = c.amax(-1)
    if allowed is not None:
        best = best.masked_fill(~torch.from_numpy(np.asarray(allowed, bool)), -float("inf"))
    k = min(n_keep, n_entries)
    top = best.topk(k, dim=1).indices  # (Q, k)
    views = c.gather(1, top[..., None].expand(-1, -1, n_views)).topk(min(keep_views, n_views), dim=-1).indices
    need = torch.zeros((len(pq), n_entries, n_views), dtype=torch.bool)
    qi = torch.arange(len(pq))[:, None, None].expand_as(views)
    need[qi, top[..., None].expand_as(views), views] = True
    if allowed is not None:  # an entry off the allowed list is never searched, even to fill k
        need &= torch.from_numpy(np.asarray(allowed, bool))[..., None]
    return need.reshape(len(pq), -1).numpy(), best.numpy()


def _blocks_of_views(groups: np.ndarray, n_groups: int) -> int | None:
    """The views per entry when every entry's references are one consecutive block of the same
    length (else None: the fast search then falls back to the exhaustive one)."""
    if n_groups == 0 or len(groups) % n_groups:
        return None
    v = len(groups) // n_groups
    return v if np.array_equal(groups, np.repeat(np.arange(n_groups), v)) else None


def score_entries(queries: torch.Tensor, library: Library, mode: str = "combined",
                  model: IdentityModel | None = None, shortlist: int = SHORTLIST, n_psi: int = 36,
                  log: Callable[[str], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, keep_refs: bool = False,
                  search: str = "fast") -> EntryScores:
    """Score prepared queries (``prepare_queries``) against every entry, and against the library's
    decoys (``decoys.prepare_library`` puts them in; embeddings under another model than the
    library holds are made here, in memory). ``keep_refs``: also return every per-reference score
    (-inf where not computed).

    ``search`` (correlation and combined modes): ``exhaustive`` runs NCC on every reference (of
    the shortlisted entries in combined mode); ``fast`` first ranks every reference by polar
    rotational correlation (``core.polar``, no shifts: a few percent of NCC's time) and runs NCC
    only on the ``FAST_VIEWS`` best views of each class's ``FAST_ENTRIES`` best entries, and of
    every decoy. The scores are NCC's wherever NCC's best view is among those kept
    (``bench/bench_identify_speed.py`` measures how often)."""
    if search not in SEARCHES:
        raise CryolensError(f"unknown search {search!r} (one of {', '.join(SEARCHES)})")
    if mode not in MODES:
        raise CryolensError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    if mode != "correlation" and model is None:
        raise CryolensError(f"mode {mode} needs an identity model")
    decoys = library.decoys
    if decoys is None:
        raise CryolensError("the library has no decoys: run prepare_library (core.identify.decoys) on it first")
    E = len(library)
    ent = library.entry_of_reference()
    dent = decoys.entry_of_reference()
    Q = queries.shape[0]
    if mode in ("embedding", "combined"):
        lib_emb = embed_library(library, model, log, should_stop)
        q_emb = embed_images(model.encoder, queries, should_stop=should_stop)
        index = EmbeddingIndex(lib_emb.shape[1])
        index.add(torch.from_numpy(lib_emb.astype(np.float32)))
        emb_s, emb_arg = (t.numpy() for t in index.group_max(q_emb, ent, E))
        d_index = EmbeddingIndex(lib_emb.shape[1])
        d_index.add(torch.from_numpy(embed_decoys(decoys, model, log, should_stop)))
        emb_d = d_index.group_max(q_emb, dent, len(decoys))[0].numpy()
        if mode == "embedding":
            full = (q_emb @ torch.from_numpy(lib_emb.astype(np.float32)).T).numpy() if keep_refs else None
            return EntryScores(emb_s, emb_arg, np.full((Q, E), np.nan), emb_d, full)
    refs = library.references
    on_list = None
    if mode == "combined":  # NCC on each class's shortlist only, all classes in one batched pass
        top = shortlist_entries(emb_s, emb_d, shortlist, (model.meta or {}).get("shortlist_z"))
        if log:
            log(f"combined: {np.mean([len(t) for t in top]):.1f} of {E} entries per class on the embedding's "
                f"shortlist (mean)")
        on_list = np.zeros((Q, E), bool)
        for i, t in enumerate(top):
            on_list[i, t] = True
    need = None if on_list is None else on_list[:, ent]
    d_need = None
    v, dv = _blocks_of_views(ent, E), _blocks_of_views(dent, len(decoys))
    if search == "fast" and v is not None and dv is not None:
        mf = _max_freq(library)
        pq = polar_coefficients(queries, mf)
        need = polar_need(pq, polar_refs(library, refs, mf, should_stop), E, v, FAST_ENTRIES, on_list,
                          should_stop)[0]
        d_need = polar_need(pq, polar_refs(decoys, decoys.references, mf, should_stop), len(decoys), dv,
                            len(decoys), should_stop=should_stop)[0]
        if log:
            log(f"fast search: NCC on the {FAST_VIEWS} best views of the {min(FAST_ENTRIES, E)} entries with the "
                f"best polar correlation per class ({int(need.sum(1).mean())} of {len(refs)} references)")
    kept: list = []
    s, arg, psi = _ncc_groups(queries, refs, ent, E, library, n_psi, kept if keep_refs else None, need, should_stop)
    full = kept[0] if keep_refs else None
    d = _ncc_groups(queries, decoys.references, dent, len(decoys), library, n_psi, need=d_need,
                    should_stop=should_stop)[0]
    return EntryScores(s, arg, psi, d, full)


def decoy_z(scores: np.ndarray, decoy: np.ndarray) -> np.ndarray:
    """Scores (Q, ...) in standard deviations above the mean of each class's decoy scores (Q, D)."""
    mu, sd = decoy.mean(1), decoy.std(1) + 1e-3
    shape = (-1,) + (1,) * (np.ndim(scores) - 1)
    return (scores - mu.reshape(shape)) / sd.reshape(shape)


def shortlist_entries(emb_scores: np.ndarray, emb_decoy: np.ndarray, at_least: int,
                      z_min: float | None) -> list[np.ndarray]:
    """Entries passed from the embedding to NCC, per class: the ``at_least`` best, and every entry
    whose embedding score stands ``z_min`` decoy standard deviations above the decoys' mean.
    ``z_min`` is calibrated with the model (far in the tail of the true entry's z on held-out
    proteins), so the true entry is kept however many entries the library has; a class the
    embedding cannot place gets a long list rather than a wrong short one."""
    E = emb_scores.shape[1]
    order = np.argsort(-emb_scores, 1, kind="stable")
    z = decoy_z(emb_scores, emb_decoy)
    n = np.full(len(emb_scores), max(1, min(at_least, E)))
    if z_min is not None:
        n = np.maximum(n, (z >= z_min).sum(1))
    return [order[i, :n[i]] for i in range(len(emb_scores))]


MAX_WRONG = 0.02  # the share of named classes allowed to be wrong, above the margin floor


def margin_floor(margin: np.ndarray, named: np.ndarray, correct: np.ndarray, max_wrong: float = MAX_WRONG) -> float:
    """The smallest margin m such that, of the classes ``named`` (confident) with margin >= m, at most
    ``max_wrong`` are wrong. The margin (best entry over the best competitor, library or decoy) is
    the part of the evidence that carries across data generators: a small blob matches every small
    entry with a high score, but only a class that resembles one entry more than all others leads
    by much. Fitted with the calibration; ``identify`` names no class below it."""
    m = np.asarray(margin, np.float64)[np.asarray(named, bool)]
    ok = np.asarray(correct, bool)[np.asarray(named, bool)]
    order = np.argsort(-m, kind="stable")
    wrong = np.cumsum(~ok[order]) / np.arange(1, len(order) + 1)
    good = np.flatnonzero(wrong <= max_wrong)
    if not len(order):
        return 0.0
    if not len(good):
        return float(m[order[0]] + 1e-6)  # nothing named is right often enough: name nothing seen
    # the longest prefix (largest margins first) that stays under max_wrong; ties at the cut stay in
    return float(m[order[good[-1]]])


def min_margin(model: IdentityModel | None, mode: str) -> float:
    """The margin floor the model's calibration set for ``mode`` (-inf: none fitted, or no model)."""
    if model is None:
        return -np.inf
    return float(((model.meta or {}).get("min_margin") or {}).get(mode, -np.inf))


def confidence_features(es: EntryScores) -> np.ndarray:
    """(Q, 3): best entry score, its z-score against the decoys, margin over the best competitor."""
    s = np.where(np.isfinite(es.scores), es.scores, -np.inf)
    order = np.sort(s, 1)[:, ::-1]
    top = order[:, 0]
    second = order[:, 1] if s.shape[1] > 1 else np.full(len(s), -np.inf)
    comp = np.maximum(second, es.decoy.max(1))
    return np.stack([top, decoy_z(top, es.decoy), top - comp], 1).astype(np.float64)


# ------------------------------------------------------------------------------------ the answer


@dataclass
class Identification:
    """What ``identify`` found: the per-class answer table, the entry scores behind it, and the
    queries as they were matched (resampled to the library's box and pixel size)."""

    table: pd.DataFrame
    scores: EntryScores
    queries: torch.Tensor


def identify(images, pixel_size: float | None, library: Library, model: IdentityModel | None,
             mode: str = "combined", top_k: int = 5, shortlist: int = SHORTLIST, min_confidence: float = 0.5,
             log: Callable[[str], None] | None = None,
             should_stop: Callable[[], bool] | None = None, search: str = "fast",
             device: str | torch.device | None = None) -> Identification:
    """Per class: the top-k entries with scores, the calibrated confidence of the first, and the
    identity (its name, or "unknown"). ``device``: where the polar and NCC searches run (the
    queries go there, references follow them chunk by chunk); the embedding runs where the
    model's encoder is."""
    q = prepare_queries(images, pixel_size, library)
    es = score_entries(q if device is None else q.to(device), library, mode, model, shortlist, log=log,
                       should_stop=should_stop, search=search)
    feats = confidence_features(es)
    weights = (model.calibration.get(mode) if model is not None else None)
    if weights is None:
        raise CryolensError(f"the identity model has no calibration for mode {mode!r}")
    conf = logistic(feats, weights)
    floor = min_margin(model, mode)
    ambiguous = (conf >= min_confidence) & (feats[:, 2] < floor)
    if ambiguous.any() and log:
        log(f"{int(ambiguous.sum())} classes left unknown although confident: their best entry leads the next "
            f"(or a decoy) by less than {floor:.3f}, the margin below which the calibration data named more than "
            f"{100 * MAX_WRONG:.0f}% wrong (several entries fit as well)")
    names = library.entries["name"].astype(str).to_numpy()
    acc = library.entries["accession"].fillna("").astype(str).to_numpy()
    k = min(top_k, len(library))
    order = np.argsort(-np.where(np.isfinite(es.scores), es.scores, -np.inf), 1, kind="stable")[:, :k]
    rows = []
    for i in range(len(q)):
        top = order[i]
        known = conf[i] >= min_confidence and not ambiguous[i] and np.isfinite(es.scores[i, top[0]])
        row = {"identity": names[top[0]] if known else "unknown", "accession": acc[top[0]] if known else "",
               "confidence": float(conf[i]), "score": float(es.scores[i, top[0]]),
               "decoy_z": float(feats[i, 1]), "margin": float(feats[i, 2]), "ambiguous": bool(ambiguous[i])}
        for j in range(k):
            sc = es.scores[i, top[j]]
            row[f"match{j + 1}"] = names[top[j]] if np.isfinite(sc) else ""
            row[f"score{j + 1}"] = float(sc) if np.isfinite(sc) else np.nan
        rows.append(row)
    return Identification(pd.DataFrame(rows), es, q)  # the queries on the CPU (figures)
