"""Embedding library and cosine nearest-neighbour search in torch, plus retrieval metrics.

``EmbeddingIndex`` stores L2-normalised embeddings (float32 or float16) with one metadata row per
entry (a pandas DataFrame). Search is exact and chunked over both the library and the queries,
so memory stays bounded (query_chunk x library_chunk scores at a time) for millions of entries.

On disk: one ``.npz`` of ``core.artifacts`` (format ``cryolens.index``) holding ``embeddings`` and
the metadata as JSON (pandas ``orient="table"``, which keeps dtypes).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import INDEX, array_text, load_npz, save_npz, text_array
from .errors import InputError


def _as_metadata(meta: Any, n: int) -> pd.DataFrame:
    if meta is None:
        return pd.DataFrame(index=range(n))
    if isinstance(meta, pd.DataFrame):
        df = meta.reset_index(drop=True)
    elif isinstance(meta, dict):
        df = pd.DataFrame(meta)
    else:  # a sequence / array / tensor of labels
        if isinstance(meta, torch.Tensor):
            meta = meta.cpu().numpy()
        df = pd.DataFrame({"label": np.asarray(meta)})
    if len(df) != n:
        raise ValueError(f"{len(df)} metadata rows for {n} embeddings")
    return df


def group_max(scores: torch.Tensor, groups: torch.Tensor, n_groups: int, offset: int = 0):
    """Max of each row of ``scores`` (Q, N) within each group of columns (``groups`` (N,) ids
    0..n_groups-1) and the column giving it, first on ties, plus ``offset``: ((Q, G), (Q, G));
    -inf and -1 for empty groups and for groups whose columns are all -inf (not scored)."""
    q, n = scores.shape
    g = groups.to(scores.device).expand(q, -1)
    best = torch.full((q, n_groups), float("-inf"), device=scores.device).scatter_reduce(1, g, scores, "amax")
    col = torch.arange(offset, offset + n, device=scores.device).expand_as(scores)
    none = offset + n
    hit = (scores == best.gather(1, g)) & (scores > float("-inf"))
    pos = torch.where(hit, col, torch.full_like(col, none))
    arg = torch.full((q, n_groups), none, dtype=torch.long, device=scores.device).scatter_reduce(1, g, pos, "amin")
    return best, arg.masked_fill(arg == none, -1)


class EmbeddingIndex:
    def __init__(self, dim: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 chunk_size: int = 65536):
        if dtype not in (torch.float32, torch.float16):
            raise ValueError("dtype must be torch.float32 or torch.float16")
        self.dim, self.dtype, self.device, self.chunk_size = int(dim), dtype, torch.device(device), int(chunk_size)
        self._parts: list[torch.Tensor] = []      # pending adds, merged on first read
        self._meta: list[pd.DataFrame] = []
        self._emb = torch.empty(0, self.dim, dtype=dtype, device=self.device)
        self._df = pd.DataFrame()

    # ---------------------------------------------------------------------------------- content

    def __len__(self) -> int:
        return int(self._emb.shape[0]) + sum(int(p.shape[0]) for p in self._parts)

    def add(self, embeddings: torch.Tensor, metadata: Any = None) -> None:
        """Append (N, dim) embeddings (normalised here) with N metadata rows (a DataFrame, a dict of
        columns, or a sequence of labels which becomes column ``label``)."""
        e = torch.as_tensor(embeddings)
        if e.dim() != 2 or e.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) embeddings, got {tuple(e.shape)}")
        e = F.normalize(e.detach().float(), dim=1).to(self.device, self.dtype)
        self._parts.append(e)
        self._meta.append(_as_metadata(metadata, e.shape[0]))

    def _consolidate(self) -> None:
        if self._parts:
            self._emb = torch.cat([self._emb, *self._parts], 0)
            metas = ([self._df] if len(self._df) else []) + self._meta
            self._df = pd.concat(metas, ignore_index=True)
            self._parts, self._meta = [], []

    @property
    def embeddings(self) -> torch.Tensor:
        self._consolidate()
        return self._emb

    @property
    def metadata(self) -> pd.DataFrame:
        self._consolidate()
        return self._df

    def labels(self, column: str = "label") -> np.ndarray:
        return self.metadata[column].to_numpy()

    # ----------------------------------------------------------------------------------- search

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int = 5, *, query_chunk: int = 1024,
               library_chunk: int | None = None, exclude: torch.Tensor | None = None):
        """Top-``k`` cosine neighbours: (scores (Q, k) float32, indices (Q, k) int64), best first.

        ``exclude``: optional (Q,) library index per query to skip (-1: none), e.g. the query itself
        for leave-one-out evaluation. Where fewer than k entries exist, indices are -1, scores -inf.
        """
        lib = self.embeddings
        q_all = F.normalize(torch.as_tensor(queries).detach().float(), dim=1)
        if q_all.dim() != 2 or q_all.shape[1] != self.dim:
            raise ValueError(f"expected (Q, {self.dim}) queries, got {tuple(q_all.shape)}")
        nq, nl = q_all.shape[0], lib.shape[0]
        lc = int(library_chunk or self.chunk_size)
        scores_out = torch.full((nq, k), float("-inf"))
        idx_out = torch.full((nq, k), -1, dtype=torch.long)
        if exclude is not None:
            exclude = torch.as_tensor(exclude, dtype=torch.long).reshape(-1)
        for qs in range(0, nq, query_chunk):
            q = q_all[qs:qs + query_chunk].to(self.device)
            best_s = torch.full((q.shape[0], k), float("-inf"), device=self.device)
            best_i = torch.full((q.shape[0], k), -1, dtype=torch.long, device=self.device)
            ex = None if exclude is None else exclude[qs:qs + query_chunk].to(self.device)
            for ls in range(0, nl, lc):
                chunk = lib[ls:ls + lc].float()
                s = q @ chunk.T
                if ex is not None:
                    col = ex - ls
                    hit = (col >= 0) & (col < chunk.shape[0])
                    rows = torch.nonzero(hit).squeeze(1)
                    s[rows, col[hit]] = float("-inf")
                kk = min(k, chunk.shape[0])
                cs, ci = s.topk(kk, dim=1)
                ms = torch.cat([best_s, cs], 1)
                mi = torch.cat([best_i, ci + ls], 1)
                best_s, order = ms.topk(k, dim=1)
                best_i = mi.gather(1, order)
            best_i = best_i.masked_fill(torch.isinf(best_s), -1)
            scores_out[qs:qs + query_chunk] = best_s.cpu()
            idx_out[qs:qs + query_chunk] = best_i.cpu()
        return scores_out, idx_out

    @torch.no_grad()
    def group_max(self, queries: torch.Tensor, groups, n_groups: int | None = None, *,
                  query_chunk: int = 1024, library_chunk: int | None = None):
        """Best cosine of every query within each group of entries (e.g. all projections of one
        map): (scores (Q, G) float32, -inf for empty groups; argmax entry index (Q, G) int64).
        ``groups`` (N,) int group id per entry, 0..G-1. Chunked like ``search``."""
        lib = self.embeddings
        grp = torch.as_tensor(np.array(groups, dtype=np.int64), device=self.device)
        if grp.shape != (lib.shape[0],):
            raise ValueError(f"{grp.shape[0]} group ids for {lib.shape[0]} entries")
        G = int(n_groups if n_groups is not None else (int(grp.max()) + 1 if len(grp) else 0))
        q_all = F.normalize(torch.as_tensor(queries).detach().float(), dim=1)
        nq, nl, lc = q_all.shape[0], lib.shape[0], int(library_chunk or self.chunk_size)
        best = torch.full((nq, G), float("-inf"))
        arg = torch.full((nq, G), -1, dtype=torch.long)
        for qs in range(0, nq, query_chunk):
            q = q_all[qs:qs + query_chunk].to(self.device)
            b = torch.full((q.shape[0], G), float("-inf"), device=self.device)
            a = torch.full((q.shape[0], G), -1, dtype=torch.long, device=self.device)
            for ls in range(0, nl, lc):
                m, ai = group_max(q @ lib[ls:ls + lc].float().T, grp[ls:ls + lc], G, offset=ls)
                better = m > b
                b = torch.where(better, m, b)
                a = torch.where(better, ai, a)
            best[qs:qs + query_chunk], arg[qs:qs + query_chunk] = b.cpu(), a.cpu()
        return best, arg

    def neighbour_labels(self, indices: torch.Tensor, column: str = "label") -> np.ndarray:
        """Labels of the entries at ``indices`` (Q, k); -1 (no neighbour) gives None."""
        lab = self.labels(column)
        idx = np.asarray(indices)
        out = np.empty(idx.shape, dtype=object)
        valid = idx >= 0
        out[valid] = lab[idx[valid]]
        out[~valid] = None
        return out

    # ------------------------------------------------------------------------------------- disk

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.npz`` (format ``cryolens.index``, see ``core.artifacts``), written atomically."""
        header = {"dim": self.dim, "n": len(self), "dtype": "float16" if self.dtype == torch.float16 else "float32"}
        meta = self.metadata.to_json(orient="table", index=False)
        return save_npz(path, INDEX, header, {"embeddings": self.embeddings.cpu().numpy(), "metadata": text_array(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", chunk_size: int = 65536) -> "EmbeddingIndex":
        header, arrays = load_npz(path, INDEX)
        try:
            emb = arrays["embeddings"]
            df = pd.read_json(io.StringIO(array_text(arrays["metadata"])), orient="table")
            dtype = torch.float16 if header["dtype"] == "float16" else torch.float32
            dim = int(header["dim"])
        except Exception as err:  # a damaged table or header
            raise InputError(f"damaged embedding index ({type(err).__name__}: {err})", path) from None
        idx = cls(dim, dtype, device, chunk_size)
        if len(df) == 0 and emb.shape[0]:
            df = pd.DataFrame(index=range(emb.shape[0]))
        idx._emb = torch.from_numpy(emb).to(idx.device, dtype)
        idx._df = df.reset_index(drop=True)
        return idx


# ------------------------------------------------------------------------------------- metrics


def _hits(neighbour_labels, query_labels) -> np.ndarray:
    nl = np.asarray(neighbour_labels, dtype=object)
    ql = np.asarray(query_labels, dtype=object).reshape(-1, 1)
    return nl == ql


def recall_at_k(neighbour_labels, query_labels, k: int) -> float:
    """Fraction of queries with the right label among their first ``k`` neighbours."""
    return float(_hits(neighbour_labels, query_labels)[:, :k].any(1).mean())


def mean_reciprocal_rank(neighbour_labels, query_labels) -> float:
    """Mean of 1 / rank of the first correct neighbour (0 when none within the retrieved k)."""
    h = _hits(neighbour_labels, query_labels)
    first = np.where(h.any(1), h.argmax(1) + 1, np.inf)
    return float((1.0 / first).mean())


def knn_vote(neighbour_labels, k: int = 5) -> np.ndarray:
    """Majority label among the first ``k`` neighbours; a tie goes to the label ranked first."""
    nl = np.asarray(neighbour_labels, dtype=object)[:, :k]
    counts = (nl[:, :, None] == nl[:, None, :]).sum(2)
    counts[np.equal(nl, None)] = 0
    return nl[np.arange(nl.shape[0]), counts.argmax(1)]


def knn_accuracy(neighbour_labels, query_labels, k: int = 5) -> float:
    return float((knn_vote(neighbour_labels, k) == np.asarray(query_labels, dtype=object)).mean())


def retrieval_metrics(neighbour_labels, query_labels, k: int = 5) -> dict[str, float]:
    """top1 (= R@1), top5 (= R@5), mrr and knn (k-NN majority-vote accuracy)."""
    return {"top1": recall_at_k(neighbour_labels, query_labels, 1),
            "top5": recall_at_k(neighbour_labels, query_labels, 5),
            "mrr": mean_reciprocal_rank(neighbour_labels, query_labels),
            "knn": knn_accuracy(neighbour_labels, query_labels, k)}
