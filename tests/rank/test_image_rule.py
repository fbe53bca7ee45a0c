"""The bare-stack score (``core.rank.image_rule``): features measured within the stack, directions
chosen on the training sets only, weights bound to them, kept in the model file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryolens.core.particles import ClassSet
from cryolens.core.rank.features import IMAGE_FEATURES
from cryolens.core.rank.image_rule import ImageRule, within_stack

F = len(IMAGE_FEATURES)
GOOD_UP = IMAGE_FEATURES.index("contrast")  # larger in good classes, in these made-up sets
GOOD_DOWN = IMAGE_FEATURES.index("spec_high")  # smaller in good classes


def _sets(n: int, seed: int, flip: bool = False):
    """Data sets whose absolute feature values move from set to set (as they do between generators)
    while the ordering within a set carries the label."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = (rng.random(20) < 0.4).astype(int)
        y[:2] = [0, 1]
        x = rng.normal(size=(20, F)) * rng.uniform(0.5, 3.0, F) + rng.normal(0, 20, F)
        d = (1 if not flip else -1) * 1.5 * (y - 0.5)
        x[:, GOOD_UP] += d * abs(x[:, GOOD_UP]).mean() * 0.2 + d
        x[:, GOOD_DOWN] -= d
        out.append((x, y))
    return out


def test_within_stack_scores_ignore_the_scale_and_offset_of_each_feature():
    x = np.random.default_rng(0).normal(size=(12, F))
    shifted = x * np.linspace(0.1, 50, F) + np.linspace(-100, 100, F)
    np.testing.assert_allclose(within_stack(x), within_stack(shifted), rtol=1e-4, atol=1e-4)
    x[3, 4] = np.nan  # a missing value sits at the stack's median
    assert within_stack(x)[3, 4] == 0.0


def test_the_rule_keeps_the_training_directions_and_scores_a_shifted_generator():
    rule = ImageRule.fit(_sets(30, 1))
    assert "contrast" in rule.features and "spec_high" in rule.features
    for f, s, w in zip(rule.features, rule.signs, rule.weights):
        assert s * w >= 0, f  # never used against its direction
    test = _sets(10, 2)
    auc = [np.mean([(a > b) for a in rule.logit(x)[y == 1] for b in rule.logit(x)[y == 0]]) for x, y in test]
    assert np.median(auc) > 0.8
    # other things equal, moving a class along a chosen direction never lowers its logit
    x, _ = test[0]
    better = x.copy()
    better[0, GOOD_UP] += 1.0
    assert rule.logit(better)[0] >= rule.logit(x)[0]


def test_a_feature_whose_direction_flips_between_training_sets_is_not_used():
    try:
        used = ImageRule.fit(_sets(15, 3) + _sets(15, 4, flip=True)).features
    except ValueError as err:  # nothing keeps its direction: said, not fitted
        assert "direction" in str(err)
        used = []
    assert "contrast" not in used and "spec_high" not in used
    with pytest.raises(ValueError):
        ImageRule.fit([(np.zeros((5, F)), np.zeros(5, int))])


def test_a_bare_stack_is_scored_by_the_shipped_image_rule_and_it_survives_a_round_trip(tmp_path):
    from cryolens.core.rank import RankModel

    model = RankModel.load()
    assert model.image_rule is not None and model.image_rule.features
    rng = np.random.default_rng(5)
    images = rng.normal(size=(8, 48, 48)).astype(np.float32)
    images[:4, 16:32, 16:32] += 3.0  # a bright object in half the classes
    bare = ClassSet(pd.DataFrame({"class_id": np.arange(1, 9)}), images, 3.0, None, "rule test")
    sc = model.score(bare)
    assert sc.mode == "image" and np.isfinite(sc.probability).all()
    path = model.save(tmp_path / "m.pt")
    back = RankModel.load(path)
    assert back.image_rule.to_dict() == model.image_rule.to_dict()
    np.testing.assert_allclose(back.score(bare).probability, sc.probability)


def test_the_shipped_model_with_statistics_stays_monotone_with_the_images_stacked():
    """The image rule is stacked with the statistics model (non-negative weights): more particles,
    a finer resolution and a better accuracy still never lower a class's score."""
    from cryolens.core.rank import RankModel

    model = RankModel.load()
    assert model.image_rule.stack is not None and min(model.image_rule.stack[1:]) >= 0
    rng = np.random.default_rng(7)
    k = 12
    table = pd.DataFrame({"class_id": np.arange(1, k + 1), "n_particles": rng.integers(5, 500, k).astype(float),
                          "resolution": rng.uniform(12, 60, k), "acc_rot": rng.uniform(2, 20, k)})
    images = rng.standard_normal((k, 40, 40)).astype(np.float32)
    images[:6, 14:26, 14:26] += 2.0
    cs = ClassSet(table, images, 3.0, None, "monotone test")
    base = model.score(cs).probability
    for col, step in (("n_particles", 50.0), ("resolution", -3.0), ("acc_rot", -2.0)):
        for i in range(k):
            t = table.copy()
            t.loc[i, col] += step
            p = model.score(ClassSet(t, images, 3.0)).probability
            assert p[i] >= base[i] - 1e-9, (col, i, p[i], base[i])
