"""A fixed slice of the foreign-generator corpus (bench/corpus.py): one relion_refine Class2D run on
relion_project particles and one on cryolens's particles, with their truth per class. The ranker's
robust head is fitted on one generator and scores the other, as the benchmark's protocol does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryolens.core.calibration import auroc
from cryolens.core.rank import RankModel
from cryolens.core.rank.rules import class_statistics
from cryolens.core.rank.train import Labelled, fit_robust_head
from cryolens.recipes.corpus import load_corpus

SLICE = Path(__file__).resolve().parents[1] / "data" / "corpus_slice"


@pytest.fixture(scope="module")
def runs():
    return {r.generator: r for r in load_corpus(SLICE)}


def test_the_slice_holds_one_run_of_each_generator_with_truth_per_class(runs):
    assert set(runs) == {"relion_project", "cryolens"}
    for r in runs.values():
        assert len(r.truth) == len(r.classes) and (r.truth["class_id"].to_numpy() == r.classes.class_ids).all()
        counts = r.classes.counts().to_numpy()
        assert (r.truth["n_particles"].to_numpy() == counts).all()
    assert 0 < runs["relion_project"].labels.sum() < len(runs["relion_project"].labels)


def test_a_head_fitted_on_one_generator_scores_the_other_within_the_guard(runs):
    model = RankModel.load()
    model.robust = fit_robust_head(model, [Labelled(runs["cryolens"].classes, runs["cryolens"].labels)],
                                   log=lambda s: None)
    test = runs["relion_project"]
    sc = model.score(test.classes)
    p = sc.probability
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    st = class_statistics(test.classes)
    rule = model.robust.rule.score(test.classes)
    assert (p[st.guarded] <= rule[st.guarded] + 1e-12).all()
    assert (p[test.classes.counts().to_numpy() == 0] == 0).all()
    assert sc.source in ("learned", "rule") and (sc.source == "learned" or sc.notes)
    assert np.isfinite(auroc(p, test.labels))


@pytest.mark.slow
def test_the_image_rule_is_fitted_on_relion_made_averages_of_one_generator(tmp_path, capsys):
    from cryolens.cli import main
    from cryolens.core.errors import CryolensError

    out = tmp_path / "rank.pt"
    args = ["train", "rank", "--image-rule", "--synthetic-sets", "20", "--cache", str(tmp_path / "cache"),
            "--threads", "1", "--out", str(out), "--image-corpus", str(SLICE)]
    assert main(args) == 0
    rule = RankModel.load(out).image_rule
    assert rule.trained_on["corpus_runs"] == ["run_0005"] and rule.trained_on["corpus_generator"] == "cryolens"
    assert "1 cryolens corpus runs (run_0005)" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CryolensError, match="no finished relion_project runs"):
        from cryolens.commands.train import _image_corpus
        import argparse
        _image_corpus(argparse.Namespace(image_corpus=str(empty), image_corpus_generator="relion_project"))
