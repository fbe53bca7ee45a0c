"""core.index: exact chunked cosine search, incremental add, versioned save/load, metrics."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cryolens.core.errors import InputError
from cryolens.core.index import (EmbeddingIndex, group_max, knn_accuracy, knn_vote, mean_reciprocal_rank, recall_at_k,
                                 retrieval_metrics)


def _data(n=500, q=37, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(q, d, generator=g)


def _brute(lib, q, k):
    s = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(lib, dim=1).T
    return s.topk(k, dim=1)


def test_exact_topk_vs_brute_force_and_chunking():
    lib, q = _data()
    idx = EmbeddingIndex(16)
    idx.add(lib, {"label": np.arange(500) % 7})
    s_ref, i_ref = _brute(lib, q, 10)
    s, i = idx.search(q, 10)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=0)
    assert torch.equal(i, i_ref)
    s2, i2 = idx.search(q, 10, query_chunk=5, library_chunk=33)
    assert torch.equal(i2, i) and torch.allclose(s2, s, atol=1e-6)


def test_float16_storage_close():
    lib, q = _data()
    idx = EmbeddingIndex(16, dtype=torch.float16)
    idx.add(lib)
    assert idx.embeddings.dtype == torch.float16
    s, i = idx.search(q, 5, library_chunk=64)
    s_ref, i_ref = _brute(lib, q, 5)
    torch.testing.assert_close(s, s_ref, atol=2e-3, rtol=0)
    assert (i[:, 0] == i_ref[:, 0]).float().mean() > 0.95


def test_incremental_add_and_metadata():
    lib, q = _data()
    a = EmbeddingIndex(16)
    a.add(lib)
    b = EmbeddingIndex(16)
    b.add(lib[:200], pd.DataFrame({"label": ["x"] * 200, "id": range(200)}))
    b.search(q, 3)                       # a search between adds
    b.add(lib[200:], pd.DataFrame({"label": ["y"] * 300, "id": range(200, 500)}))
    assert len(b) == 500 and list(b.metadata["id"]) == list(range(500))
    sa, ia = a.search(q, 8)
    sb, ib = b.search(q, 8, library_chunk=50)
    assert torch.equal(ia, ib)
    lab = b.neighbour_labels(ib)
    assert lab.shape == (37, 8) and set(np.unique(lab)) <= {"x", "y"}
    with pytest.raises(ValueError):
        b.add(torch.randn(3, 16), ["a"])


def test_exclude_self_and_short_library():
    lib, _ = _data(n=20)
    idx = EmbeddingIndex(16)
    idx.add(lib)
    s, i = idx.search(lib, 3, exclude=torch.arange(20), library_chunk=7)
    assert not (i == torch.arange(20)[:, None]).any()
    s, i = idx.search(lib[:2], 25)
    assert (i[:, 20:] == -1).all() and torch.isinf(s[:, 20:]).all()
    assert idx.neighbour_labels(i).shape == (2, 25) if "label" in idx.metadata else True


def test_save_load_round_trip(tmp_path):
    lib, q = _data()
    idx = EmbeddingIndex(16, dtype=torch.float16)
    meta = pd.DataFrame({"label": [f"p{i % 5}" for i in range(500)], "angle": np.linspace(0, 1, 500),
                         "n": np.arange(500)})
    idx.add(lib, meta)
    p = idx.save(tmp_path / "lib.npz")
    back = EmbeddingIndex.load(p)
    assert back.dtype == torch.float16 and back.dim == 16 and len(back) == 500
    assert torch.equal(back.embeddings, idx.embeddings)
    pd.testing.assert_frame_equal(back.metadata, idx.metadata)
    assert torch.equal(back.search(q, 4)[1], idx.search(q, 4)[1])
    back.add(lib[:3], meta.iloc[:3])
    assert len(back) == 503


def test_version_check_names_the_file(tmp_path):
    idx = EmbeddingIndex(4)
    idx.add(torch.randn(3, 4), [1, 2, 3])
    p = idx.save(tmp_path / "lib.npz")
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    hdr = json.loads(bytes(arrays["header"]).decode())
    hdr["version"] = 99
    arrays["header"] = np.frombuffer(json.dumps(hdr).encode(), np.uint8)
    bad = tmp_path / "future.npz"
    np.savez(bad, **arrays)
    with pytest.raises(InputError, match="version 99") as err:
        EmbeddingIndex.load(bad)
    assert "future.npz" in str(err.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        EmbeddingIndex.load(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="not found"):
        EmbeddingIndex.load(tmp_path / "missing.npz")


def test_metrics_hand_example():
    nl = np.array([["a", "b", "b", "b", "c"],     # query a: hit at rank 1, vote b
                   ["a", "b", "c", "d", "e"],     # query b: hit at rank 2, vote (all tie) a
                   ["a", "a", "c", "c", "b"],     # query c: hit at rank 3, vote tie a/c -> a (ranked first)
                   ["a", "a", "a", "b", "b"]],    # query d: no hit
                  dtype=object)
    ql = ["a", "b", "c", "d"]
    assert recall_at_k(nl, ql, 1) == 0.25
    assert recall_at_k(nl, ql, 2) == 0.5
    assert recall_at_k(nl, ql, 5) == 0.75
    assert mean_reciprocal_rank(nl, ql) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    assert list(knn_vote(nl, 5)) == ["b", "a", "a", "a"]
    assert knn_accuracy(nl, ql, 5) == 0.0
    assert knn_accuracy(nl, ["b", "a", "a", "a"], 5) == 1.0
    m = retrieval_metrics(nl, ql)
    assert m["top1"] == 0.25 and m["top5"] == 0.75
    # integer labels work too
    assert knn_accuracy(np.array([[1, 1, 2]]), [1], 3) == 1.0


def test_group_max_of_unscored_columns_is_empty():
    s = torch.tensor([[0.5, -float("inf"), -float("inf"), 0.2]])
    best, arg = group_max(s, torch.tensor([0, 1, 1, 0]), 3)
    assert best.tolist() == [[0.5, -float("inf"), -float("inf")]] and arg.tolist() == [[0, -1, -1]]


def test_an_index_written_by_the_previous_cryolens_loads(tmp_path):
    """Format name cryolens.embedding_index (before core.artifacts): read as cryolens.index."""
    idx = EmbeddingIndex(4)
    idx.add(torch.randn(3, 4), [1, 2, 3])
    header = {"format": "cryolens.embedding_index", "version": 1, "dim": 4, "n": 3, "dtype": "float32"}
    meta = idx.metadata.to_json(orient="table", index=False)
    np.savez(tmp_path / "old.npz", embeddings=idx.embeddings.numpy(),
             header=np.frombuffer(json.dumps(header).encode(), np.uint8), metadata=np.frombuffer(meta.encode(), np.uint8))
    back = EmbeddingIndex.load(tmp_path / "old.npz")
    assert torch.equal(back.embeddings, idx.embeddings) and back.labels().tolist() == [1, 2, 3]
