"""The neutral data model: subset, concat and join by identity; ClassSet membership."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryolens.core.errors import InputError
from cryolens.core.particles import ClassSet, ParticleSet


def make(n=6, stack="s.mrcs", extra=True, start=0):
    t = pd.DataFrame({"image_stack": stack, "image_index": np.arange(start, start + n),
                      "defocus_u": 10000.0 + np.arange(n), "class_id": 1 + np.arange(n) % 3})
    if extra:
        t["rlnMyScore"] = np.linspace(0, 1, n)
    return ParticleSet(t, source="mem.star")


def test_subset_by_mask_and_positions_keeps_order():
    ps = make()
    assert ps.subset(ps.table.class_id.eq(2).to_numpy()).table.image_index.tolist() == [1, 4]
    assert ps.subset([5, 0, 3]).table.image_index.tolist() == [5, 0, 3]
    with pytest.raises(ValueError):
        ps.subset(np.array([True, False]))


def test_concat_and_identity():
    a, b = make(3), make(3, stack="t.mrcs", extra=False)
    c = ParticleSet.concat([a, b])
    assert len(c) == 6 and c.image_keys().tolist()[3] == "0@t.mrcs"
    assert c.table["rlnMyScore"].isna().sum() == 3  # passthrough kept, missing where absent
    sel = c.select_identities(["2@s.mrcs", "0@t.mrcs"])
    assert sel.image_keys().tolist() == ["2@s.mrcs", "0@t.mrcs"]


def test_join_matches_by_identity_not_position():
    a = make(5)
    scores = make(5, extra=False).subset([4, 2, 0])
    scores.table["rlnClassScore"] = [0.4, 0.2, 0.0]
    j = a.join(scores, on="image", how="left")
    np.testing.assert_allclose(j.table["rlnClassScore"].to_numpy()[[0, 2, 4]], [0.0, 0.2, 0.4])
    assert np.isnan(j.table["rlnClassScore"].iloc[1]) and np.isnan(j.table["rlnClassScore"].iloc[3])
    assert j.table["defocus_u"].tolist() == a.table["defocus_u"].tolist()


def test_join_refuses_duplicate_identities():
    a = make(3)
    dup = ParticleSet.concat([make(2), make(2)])
    with pytest.raises(InputError, match="duplicate"):
        a.join(dup)


def test_require_and_check_finite_name_the_source_labels():
    ps = make()
    ps.meta["labels"] = {"defocus_u": "rlnDefocusU", "defocus_v": "rlnDefocusV"}
    with pytest.raises(InputError, match="mem.star: missing column.*rlnDefocusV"):
        ps.require("defocus_v")
    ps.table.loc[2, "defocus_u"] = np.inf
    with pytest.raises(InputError, match="rlnDefocusU has 1 non-finite value"):
        ps.check_finite()


def test_classset_membership_and_counts():
    ps = make(7)
    table = pd.DataFrame({"class_id": [1, 2, 3, 4]})
    cs = ClassSet(table, np.zeros((4, 8, 8), np.float32), 2.0, ps)
    assert cs.counts().tolist() == [3, 2, 2, 0]
    assert cs.members(2).table.image_index.tolist() == [1, 4]
    sub = cs.subset([1, 4])
    assert len(sub) == 2 and sub.images.shape == (2, 8, 8) and len(sub.particles) == 3
