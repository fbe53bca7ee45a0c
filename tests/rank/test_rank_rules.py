"""The classical rule, the guard for unconverged/tiny classes, and the training domain check."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cryolens.core.particles import ClassSet
from cryolens.core.rank.rules import (RULE_FEATURES, Domain, RuleModel, apply_guard, class_statistics,
                                      rule_features)


def _classes(counts, res, acc) -> ClassSet:
    k = len(counts)
    table = pd.DataFrame({"class_id": np.arange(1, k + 1), "n_particles": counts, "resolution": res, "acc_rot": acc})
    return ClassSet(table, np.zeros((k, 8, 8), np.float32), 2.0)


def test_unconverged_and_tiny_classes_are_read_as_the_worst_statistics():
    # RELION's 999 accuracy arrives as NaN; inf resolution stays inf
    cs = _classes([800, 3, 400, 0], [29.0, np.inf, 35.0, np.inf], [3.0, np.nan, 4.0, np.nan])
    st = class_statistics(cs)
    assert st.unconverged.tolist() == [False, True, False, True]
    assert st.tiny.tolist() == [False, True, False, True]
    f = rule_features(st)
    acc = RULE_FEATURES.index("log_acc_rot")
    assert f[1, acc] == f[3, acc] == np.log1p(180.0)
    assert f[1, RULE_FEATURES.index("inv_res")] == 0.0


def test_a_statistic_the_source_never_gives_is_missing_not_unconverged():
    cs = _classes([800, 300], [29.0, 35.0], [np.nan, np.nan])
    st = class_statistics(cs)
    assert st.acc_rot is None and not st.unconverged.any()
    assert np.isnan(rule_features(st)[:, RULE_FEATURES.index("log_acc_rot")]).all()


def test_the_rule_is_monotone_even_when_the_labels_pull_the_other_way():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, len(RULE_FEATURES)))
    y = (X[:, 0] < 0).astype(float)  # more particles = worse, in this perverse training set
    rule = RuleModel.fit(X, y)
    assert min(rule.weights[:4]) >= 0 and rule.weights[4] <= 0
    base = rng.normal(size=(50, len(RULE_FEATURES)))
    for i, d in enumerate((1, 1, 1, 1, -1)):
        better = base.copy()
        better[:, i] += d * 0.5
        assert (rule.logit(better) >= rule.logit(base) - 1e-12).all()


def test_guard_caps_unconverged_tiny_and_empty_classes_at_the_rule():
    cs = _classes([800, 3, 400, 0], [29.0, np.inf, 35.0, np.inf], [3.0, np.nan, 4.0, np.nan])
    st = class_statistics(cs)
    learned = np.array([0.04, 0.95, 0.5, 0.9])
    rule = np.array([0.9, 0.05, 0.7, 0.01])
    p = apply_guard(learned, rule, st)
    assert p.tolist() == [0.04, 0.05, 0.5, 0.0]


def test_domain_check_names_what_is_outside():
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d", "e"]
    dom = Domain.fit(names, rng.normal(size=(300, 5)), [2.0, 4.0], [64, 128])
    assert dom.check(rng.normal(size=(20, 5)), 3.0, 96) == []
    far = rng.normal(size=(20, 5))
    far[:, 1] += 50
    assert dom.check(far, 3.0, 96) == []  # one feature of five off: a fifth of the values, under the bar
    far[:, 2] += 50
    far[:, 3] -= 50
    why = dom.check(far, 9.0, 96)
    assert any("pixel size 9.00" in w for w in why)
    assert any("60% of the class features" in w and "b (100%)" in w for w in why)
    assert Domain.from_dict(dom.to_dict()).check(far, 9.0, 96) == why
