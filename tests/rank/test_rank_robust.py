"""The robust head of the ranker: monotone in the class statistics, capped at the rule for
unconverged and tiny classes, and the rule's score (said in words) outside the training domain."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryolens.core.particles import ClassSet
from cryolens.core.rank import RankModel
from cryolens.core.rank.train import Labelled, fit_robust_head


def _run(seed: int, k: int = 16, pixel_size: float = 3.0) -> tuple[ClassSet, np.ndarray]:
    """Classes with RELION-like statistics: good ones have many particles, fine resolution, good accuracy."""
    rng = np.random.default_rng(seed)
    good = rng.random(k) < 0.5
    n = np.where(good, rng.integers(80, 600, k), rng.integers(5, 120, k)).astype(float)
    res = np.where(good, rng.uniform(12, 25, k), rng.uniform(22, 60, k))
    acc = np.where(good, rng.uniform(2, 6, k), rng.uniform(5, 20, k))
    table = pd.DataFrame({"class_id": np.arange(1, k + 1), "n_particles": n, "resolution": res, "acc_rot": acc})
    images = rng.standard_normal((k, 32, 32)).astype(np.float32)
    return ClassSet(table, images, pixel_size), good.astype(np.int64)


@pytest.fixture(scope="module")
def model():
    m = RankModel.load()
    m.robust = fit_robust_head(m, [Labelled(*_run(s)) for s in range(6)], log=lambda s: None)
    return m


def test_more_particles_finer_resolution_better_accuracy_never_lower_the_score(model):
    cs, _ = _run(100)
    base = model.score(cs).probability
    assert model.score(cs).source == "learned"
    for col, step in (("n_particles", 40.0), ("resolution", -2.0), ("acc_rot", -1.0)):
        for i in range(len(cs)):
            t = cs.table.copy()
            t.loc[i, col] += step
            p = model.score(ClassSet(t, cs.images, cs.pixel_size)).probability
            assert p[i] >= base[i] - 1e-9, (col, i, p[i], base[i])


def test_unconverged_and_tiny_classes_never_score_above_the_rule(model):
    cs, _ = _run(101)
    t = cs.table.copy()
    t.loc[0, ["n_particles", "resolution", "acc_rot"]] = [3, np.inf, np.nan]  # RELION's 999 reads as NaN
    t.loc[1, "n_particles"] = 4
    cs = ClassSet(t, cs.images, cs.pixel_size)
    sc = model.score(cs)
    rule = model.robust.rule.score(cs)
    assert sc.probability[0] <= rule[0] + 1e-12 and sc.probability[1] <= rule[1] + 1e-12
    assert any("unconverged" in n for n in sc.notes)


def test_outside_the_training_domain_the_rule_scores_and_the_job_says_why(model):
    cs, _ = _run(102, pixel_size=40.0)
    sc = model.score(cs)
    assert sc.source == "rule"
    np.testing.assert_allclose(sc.probability, np.where(cs.table["n_particles"] > 0,
                                                        model.robust.rule.score(cs), 0.0), atol=1e-12)
    assert any("outside what the model was trained on" in n and "pixel size" in n for n in sc.notes)


def test_the_robust_head_survives_saving(model, tmp_path):
    model.save(tmp_path / "m.pt")
    back = RankModel.load(tmp_path / "m.pt")
    cs, _ = _run(103)
    np.testing.assert_allclose(back.score(cs).probability, model.score(cs).probability, atol=1e-6)
