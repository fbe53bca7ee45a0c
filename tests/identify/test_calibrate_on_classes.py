"""Calibration of identify's confidence on labelled class averages from elsewhere
(``core.identify.train.calibrate_on_classes``): fitted on some proteins' classes, measured on other
proteins' classes, and kept in the model file."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cryolens.core.calibration import logistic
from cryolens.core.identify import (IdentityModel, Library, confidence_features, prepare_library, prepare_queries,
                                    score_entries)
from cryolens.core.identify.train import calibrate_on_classes, simulated_queries
from cryolens.core.simulate.proteins import phantom_library

BOX, PX = 32, 6.0
MODES = ("embedding", "correlation")
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


@pytest.fixture(scope="module")
def setting():
    """10 proteins, the first 5 in the library; 3 class averages of each (a different simulation
    setting from the model's calibration: fewer members, lower SNR). Calibration classes: proteins
    0-2 (in the library) and 5-7 (missing); held-out classes: proteins 3-4 and 8-9."""
    torch.set_num_threads(1)
    ph = phantom_library(10, seed=515, box=BOX, pixel_size=PX)
    lib = Library(BOX, PX, n_views=24)
    for p in ph[:5]:
        lib.add_volume(p.density, p.name, source="phantom")
    model = IdentityModel.load()
    prepare_library(lib, model)
    images, truth = simulated_queries(ph, 30, BOX, PX, seed=3, members=(15, 40), snr=(0.03, 0.06))
    protein = np.array([[p.name for p in ph].index(t) for t in truth])
    fit = np.isin(protein, [0, 1, 2, 5, 6, 7])
    q = prepare_queries(images, PX, lib)
    scores = {m: score_entries(q, lib, m, model) for m in MODES}
    return lib, model, images, truth, fit, scores


def confidently_wrong(model, lib, es, truth, rows, mode) -> float:
    names = lib.entries["name"].astype(str).to_numpy()
    conf = logistic(confidence_features(es), model.calibration[mode])[rows]
    return float(((conf >= 0.5) & (names[es.scores.argmax(1)][rows] != truth[rows])).mean())


def sub(es, rows):
    return type(es)(es.scores[rows], es.best_ref[rows], es.psi[rows], es.decoy[rows])


@pytest.mark.parametrize("start", ["overconfident", "shipped"])
def test_calibration_on_labelled_classes_lowers_confident_errors_on_other_proteins(setting, start, tmp_path):
    lib, shipped, images, truth, fit, scores = setting
    # "overconfident": a calibration that names everything, as the shipped one did on RELION classes
    cal = {m: [4.0, 0.0, 0.0, 0.0] for m in MODES} if start == "overconfident" else dict(shipped.calibration)
    model = IdentityModel(shipped.encoder, dict(cal), copy.deepcopy(shipped.meta))
    held = ~fit
    before = {m: confidently_wrong(model, lib, scores[m], truth, held, m) for m in MODES}
    labels = np.where(np.isin(truth, lib.entries["name"]), truth, "unknown")  # missing proteins: "unknown"
    report = calibrate_on_classes(model, lib, images[fit], PX, labels[fit], modes=MODES, log=lambda s: None,
                                  scores={m: sub(scores[m], fit) for m in MODES}, note="test")
    assert report["n_known"] == 9 and report["n_unknown"] == 9
    after = {m: confidently_wrong(model, lib, scores[m], truth, held, m) for m in MODES}
    print(start, "confidently wrong on held-out classes, before", before, "after", after)
    for m in MODES:
        assert report[m]["fitted"], report[m]
        assert after[m] <= before[m], (m, before, after)
    if start == "overconfident":
        assert before["correlation"] >= 0.5  # every missing protein named
        assert after["correlation"] < before["correlation"]
    # the model file keeps the new calibration and says how it was made
    model.save(tmp_path / "m.pt")
    back = IdentityModel.load(tmp_path / "m.pt")
    for m in MODES:
        np.testing.assert_allclose(back.calibration[m], model.calibration[m])
    assert back.calibration.get("combined") == cal.get("combined")  # a mode not refitted is as it was
    stage = back.meta["stages"][-1]
    assert stage["stage"] == "calibration on labelled classes" and stage["modes"] == list(MODES)
    assert stage["classes"] == int(fit.sum()) and stage["note"] == "test"


def test_a_mode_whose_classes_are_all_wrong_keeps_its_calibration(setting):
    lib, shipped, images, truth, _, scores = setting
    model = IdentityModel(shipped.encoder, dict(shipped.calibration), copy.deepcopy(shipped.meta))
    said = []
    report = calibrate_on_classes(model, lib, images, PX, np.full(len(truth), ""), modes=("correlation",),
                                  scores=scores, log=said.append)
    assert not report["correlation"]["fitted"] and report["correlation"]["right"] == 0
    assert model.calibration["correlation"] == shipped.calibration["correlation"]
    assert any("is kept" in s for s in said)
    with pytest.raises(ValueError, match="labels"):
        calibrate_on_classes(model, lib, images, PX, truth[:3], modes=("correlation",), scores=scores)


def test_margin_floor_is_the_smallest_margin_that_keeps_named_classes_right():
    from cryolens.core.identify.score import margin_floor

    margin = np.array([0.30, 0.20, 0.15, 0.10, 0.05, 0.02, 0.01])
    correct = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    named = np.ones(7, bool)
    assert margin_floor(margin, named, correct) == pytest.approx(0.10)  # below it, 1 wrong in 5 named
    assert margin_floor(margin, named, correct, max_wrong=0.25) == pytest.approx(0.02)
    assert margin_floor(margin, named & (margin > 0.06), correct) == pytest.approx(0.10)
    # nothing named is right: the floor sits above every margin seen, so nothing like them is named
    assert margin_floor(margin, named, np.zeros(7, bool)) > 0.30
    assert margin_floor(margin, np.zeros(7, bool), correct) == 0.0


def test_identify_leaves_a_confident_but_ambiguous_class_unknown(setting):
    """A class whose best entry barely leads the next is unknown, whatever the logistic says: the
    margin floor stored with the calibration, and the log says why."""
    from cryolens.core.identify import identify

    lib, shipped, images, truth, _, _ = setting
    named_all = {m: [30.0, 0.0, 0.0, 0.0] for m in MODES}  # a calibration that is sure of everything
    model = IdentityModel(shipped.encoder, named_all, copy.deepcopy(shipped.meta))
    model.meta["min_margin"] = {}  # no floor fitted: the logistic alone decides
    free = identify(images, PX, lib, model, mode="correlation").table
    named = (free["identity"] != "unknown").to_numpy()
    assert named.sum() >= len(free) // 2 and not free["ambiguous"].any()
    floor = float(np.median(free["margin"][named]))
    model.meta["min_margin"] = {"correlation": floor}
    said = []
    guarded = identify(images, PX, lib, model, mode="correlation", log=said.append).table
    low = (guarded["margin"].to_numpy() < floor) & named
    assert low.any() and (guarded["identity"][low] == "unknown").all() and guarded["ambiguous"][low].all()
    assert (guarded["identity"][~low] == free["identity"][~low]).all()
    assert any("left unknown although confident" in s for s in said)
