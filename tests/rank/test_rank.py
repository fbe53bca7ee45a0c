"""The 2D class ranker: features, calibration, selection, bare stacks, empty classes, retraining."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cryolens.core.errors import InputError
from cryolens.core.particles import ClassSet
from cryolens.core.rank.features import (IMAGE_FEATURES, STAT_FEATURES, image_features, isolation_features,
                                         stat_features)
from cryolens.core.calibration import apply_calibration, auroc, expected_calibration_error, fit_isotonic, fit_platt
from cryolens.core.rank import RankModel, auto_threshold
from cryolens.core.weights import default_weights

HELD_OUT_POOL = (777_777, 4)  # phantoms used neither by the shipped model (100000) nor by the benchmark


@pytest.fixture(scope="module")
def held_out():
    """Six fast synthetic Class2D results of held-out phantoms (seeds unused in training)."""
    torch.set_num_threads(2)
    from cryolens.recipes.rank_data import phantom_pool, synthetic_dataset

    pool = phantom_pool(*HELD_OUT_POOL)
    return [synthetic_dataset(70_000 + i, pool) for i in range(6)]


@pytest.fixture(scope="module")
def model():
    return RankModel.load()


# -- features -------------------------------------------------------------------------------------------
def _classes(table: dict, k: int = 6, box: int = 40, seed: int = 0) -> ClassSet:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((k, box, box)).astype(np.float32)
    return ClassSet(pd.DataFrame({"class_id": np.arange(1, k + 1), **table}), images, 2.0)


def test_statistics_handle_empty_classes_inf_resolution_and_unknown_accuracy():
    cs = _classes({"n_particles": [0, 10, 200, 50, 0, 80], "resolution": [np.inf, 20.0, 8.0, 12.0, np.inf, np.nan],
                   "acc_rot": [np.nan, 5.0, 2.0, 3.0, np.nan, 4.0]})
    f = stat_features(cs)
    col = {n: f[:, i] for i, n in enumerate(STAT_FEATURES)}
    assert f.shape == (6, len(STAT_FEATURES)) and not np.isinf(f).any()
    assert col["empty"].tolist() == [1, 0, 0, 0, 1, 0]
    assert col["inv_res"][0] == 0 and np.isnan(col["inv_res"][5])  # inf = no resolution; NaN = unknown
    assert col["rel_res"][2] == pytest.approx(1.0) and col["rel_res"][1] == pytest.approx(8 / 20)
    # RELION's 999 (NaN after reading) among real accuracies is an unconverged class: the worst value,
    # never "missing" (a missing statistic sits at the mean and let tiny unconverged classes score high)
    assert col["log_acc_rot"][0] == pytest.approx(np.log1p(180.0)) and np.isfinite(col["log_acc_rot"][1])
    assert np.isnan(col["ess"]).all() and np.isnan(col["posterior"]).all()  # not in this source


def test_a_bare_stack_has_no_statistics_but_full_image_features():
    cs = ClassSet(pd.DataFrame({"class_id": np.arange(1, 5)}), np.zeros((4, 32, 32), np.float32), None)
    assert np.isnan(stat_features(cs)).all()
    f = image_features(np.random.default_rng(0).standard_normal((4, 100, 100)))
    assert f.shape == (4, len(IMAGE_FEATURES)) and np.isfinite(f).all()
    flat = image_features(np.zeros((2, 64, 64)))  # an empty class's blank average must not crash
    assert flat[:, IMAGE_FEATURES.index("flatness")].tolist() == [1.0, 1.0]


def test_image_features_see_what_they_are_meant_to():
    from cryolens.core.images import radius_grid

    r = radius_grid(64).numpy()
    yy, xx = np.mgrid[:64, :64] - 32
    blob = np.exp(-r ** 2 / (2 * 6.0 ** 2))
    off = np.exp(-((xx - 18) ** 2 + yy ** 2) / (2 * 6.0 ** 2))
    rings = np.cos(r * 1.2) * np.exp(-r / 30)
    streak = np.exp(-yy ** 2 / 2.0) * (np.abs(xx) < 28)
    f = image_features(np.stack([blob, off, rings, streak]).astype(np.float32))
    get = lambda name: f[:, IMAGE_FEATURES.index(name)]  # noqa: E731
    assert get("centroid_off")[1] > 0.5 > get("centroid_off")[0]
    assert get("rot_r2")[2] > 0.85 and get("rot_r2")[3] < 0.5
    assert get("spec_aniso")[3] > get("spec_aniso")[0] + 1.0  # log(max sector / mean sector)


def test_isolation_is_large_for_the_odd_class_out():
    e = np.array([[1, 0, 0], [0.99, 0.1, 0], [0.98, 0, 0.1], [0.97, 0.1, 0.1], [0, 0, 1.0]])
    iso = isolation_features(e, k=2)
    assert iso[:, 0].argmax() == 4 and iso[4, 1] > 1
    assert np.isnan(isolation_features(e[:2], k=2)).all()  # too few classes to say


# -- calibration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fit", [fit_platt, fit_isotonic])
def test_calibrators_recover_known_probabilities(fit):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, 4000)  # an overconfident logit: the true probability is sigmoid(x / 3 - 0.5)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(x / 3 - 0.5)))).astype(int)
    grid = np.linspace(-6, 6, 13)
    p = apply_calibration(fit(x, y), grid)
    assert np.abs(p - 1 / (1 + np.exp(-(grid / 3 - 0.5)))).max() < 0.08
    assert expected_calibration_error(1 / (1 + np.exp(-x)), y) > 0.05  # uncalibrated is visibly off


@pytest.mark.slow
def test_shipped_model_is_calibrated_on_held_out_data(held_out, model):
    """Reliability on classes of proteins and seeds the model never saw: a class scored p is good
    about p of the time (ECE), and the ranking is sound."""
    p = np.concatenate([model.score(d.classes).probability for d in held_out])
    y = np.concatenate([d.labels for d in held_out])
    assert len(y) >= 100 and 0 < y.sum() < len(y)
    assert expected_calibration_error(p, y) < 0.15  # 0.04 on the 30 held-out sets of bench/bench_rank.py
    assert abs(p.mean() - y.mean()) < 0.12
    for lo, hi in ((0.0, 0.2), (0.8, 1.0)):  # the confident ends must be right most of the time
        m = (p >= lo) & (p <= hi)
        if m.sum() >= 5:
            assert abs(y[m].mean() - p[m].mean()) < 0.2, (lo, hi, y[m].mean(), p[m].mean())
    assert auroc(p, y) > 0.85


def test_the_shipped_weights_load_with_weights_only_and_are_small():
    path = default_weights("rank")
    assert path.stat().st_size < 3e6
    st = torch.load(path, map_location="cpu", weights_only=True)
    assert st["format"] == "cryolens.rank" and {"stats", "image"} <= set(st["calibration"])


def test_a_wrong_model_file_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "not_a_model.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(InputError, match="not_a_model.pt.*not a cryolens rank model"):
        RankModel.load(bad)
    st = torch.load(default_weights("rank"), weights_only=True)
    st["version"] = 99
    torch.save(st, tmp_path / "future.pt")
    with pytest.raises(InputError, match="version 99"):
        RankModel.load(tmp_path / "future.pt")


# -- selection --------------------------------------------------------------------------------------------
def test_auto_cut_sits_in_the_valley_of_a_two_mode_data_set():
    p = np.array([0.02, 0.04, 0.05, 0.08, 0.1, 0.85, 0.9, 0.93, 0.95, 0.97])
    cut, why = auto_threshold(p, np.full(10, 100.0))
    assert 0.1 < cut < 0.85 and "valley" in why


def test_auto_cut_is_lowered_to_keep_the_expected_good_particles_but_not_below_the_floor():
    p = np.array([0.95, 0.9, 0.3, 0.25, 0.05, 0.02, 0.02, 0.01])
    n = np.array([100, 100, 2000, 2000, 10, 10, 10, 10.0])  # big, uncertain classes hold most expected particles
    cut, why = auto_threshold(p, n, recall=0.95, min_probability=0.1)
    assert cut == pytest.approx(0.25) and "lowered" in why
    cut, why = auto_threshold(np.array([0.09, 0.08, 0.02, 0.01, 0.005]), None, min_probability=0.1)
    assert cut == pytest.approx(0.1) and "floor" in why  # all junk: nothing is kept


# -- the job from the shell: bare stack, empty classes, retraining round trip -------------------------------
def _write_stack(path, images, px=3.0):
    from cryolens.core.mrc import write_stack

    write_stack(path, np.asarray(images, np.float32), px)
    return path


def test_bare_stack_through_the_shell_ranks_images_alone(tmp_path, held_out):
    from cryolens.cli import main

    d = held_out[0]
    stack = _write_stack(tmp_path / "averages.mrcs", d.classes.images)
    out = tmp_path / "out"
    assert main(["run", "rank", "--classes-in", str(stack), "--out", str(out)]) == 0
    scores = pd.read_csv(out / "rank_scores.csv")
    assert len(scores) == len(d.labels) and set(scores["evidence"]) == {"image"}
    assert sorted(scores["rank"]) == list(range(1, len(scores) + 1))
    assert not (out / "particles.star").exists()  # a bare stack has no particles to write
    assert (out / "rank_gallery.pdf").read_bytes()[:4] == b"%PDF"
    from cryolens.relion_ext.star import read_blocks

    model_star = read_blocks(out / "rank_model.star")["model_classes"]
    np.testing.assert_allclose(model_star["rlnClassScore"], scores["score"], atol=1e-6)
    assert model_star["rlnReferenceImage"].iloc[2].startswith("000003@")


def test_bare_stack_as_a_relion_external_job_writes_the_selection(tmp_path, held_out, monkeypatch):
    from cryolens.relion_ext.external import main
    from cryolens.relion_ext.star import read_blocks

    monkeypatch.chdir(tmp_path)
    d = held_out[1]
    _write_stack(tmp_path / "averages.mrcs", d.classes.images)
    assert main(["--job", "rank", "--o", "External/job002/", "--in_parts", "averages.mrcs", "--select", "threshold",
                 "--threshold", "0.5", "--j", "1"]) == 0
    job = tmp_path / "External" / "job002"
    sel = read_blocks(job / "backup_selection.star")[""]["rlnSelected"].to_numpy()
    scores = read_blocks(job / "rank_scores.star")["rank_scores"]
    assert sel.tolist() == (scores["score"].to_numpy() >= 0.5).astype(int).tolist()
    if sel.any():
        kept = read_blocks(job / "class_averages.star")[""]
        assert len(kept) == sel.sum() and kept["rlnReferenceImage"].str.endswith("averages.mrcs").all()


def test_empty_classes_score_zero_and_are_never_selected(held_out, model, tmp_path):
    from cryolens.core.jobs import JobContext, get_job, run_job

    d = held_out[2]
    cs = d.classes
    t = cs.table.copy()
    t.loc[0, ["n_particles", "distribution", "resolution", "acc_rot", "acc_trans"]] = [0, 0.0, np.inf, np.nan, np.nan]
    images = cs.images.copy()
    images[0] = 0.0  # RELION writes a blank average for a class that lost all its particles
    empty = ClassSet(t, images, cs.pixel_size, None, "empty-class test")
    sc = model.score(empty)
    assert sc.probability[0] == 0.0 and np.isfinite(sc.probability).all()
    res = run_job(get_job("rank"), {"classes": empty}, {"select": "threshold", "threshold": "0"},
                  JobContext(out_dir=tmp_path))
    assert res.class_selection["class_averages"][0] == 1  # threshold 0 keeps everything, even an empty class
    res = run_job(get_job("rank"), {"classes": empty}, {}, JobContext(out_dir=tmp_path))
    assert res.class_selection["class_averages"][0] == 0


def test_blank_averages_in_a_bare_stack_score_zero_and_the_real_classes_are_kept(held_out, model, tmp_path):
    """Issue 18 defect 2: constant images (RELION's average of an emptied class) scored 0.998 and were
    the only ones kept; they carry nothing, whatever an image model makes of them."""
    from cryolens.core.jobs import JobContext, get_job, run_job
    from cryolens.core.rank.rules import blank_images

    d = held_out[3]
    good = np.flatnonzero(d.labels == 1)[:6]
    box = d.classes.images.shape[-1]
    images = np.concatenate([d.classes.images[good], np.zeros((2, box, box), np.float32),
                             np.full((1, box, box), 3.5, np.float32)])
    assert blank_images(images).tolist() == [False] * 6 + [True] * 3
    bare = ClassSet(pd.DataFrame({"class_id": np.arange(1, 10)}), images, d.classes.pixel_size, None, "blank test")
    sc = model.score(bare)
    assert (sc.probability[6:] == 0).all() and any("3 blank" in n for n in sc.notes)
    res = run_job(get_job("rank"), {"classes": bare}, {}, JobContext(out_dir=tmp_path))
    kept = np.asarray(res.class_selection["class_averages"])
    assert not kept[6:].any() and kept[:6].any()


@pytest.mark.slow
def test_retraining_round_trip_moves_scores_toward_the_users_labels(tmp_path, held_out):
    """train rank from a backup_selection.star -> model file -> the job uses it via --model."""
    from cryolens.cli import main
    from cryolens.relion_ext.class2d import write_backup_selection

    d = held_out[0]
    stack = _write_stack(tmp_path / "mine.mrcs", d.classes.images)
    base = tmp_path / "base"
    assert main(["run", "rank", "--classes-in", str(stack), "--out", str(base)]) == 0
    before = pd.read_csv(base / "rank_scores.csv")["score"].to_numpy()
    # this user rejects every class of the first species too (a contaminant they do not want)
    truth = d.labels.copy()
    user = truth.copy()
    good_idx = np.flatnonzero(truth == 1)
    flipped = good_idx[: max(2, len(good_idx) // 3)]
    user[flipped] = 0
    write_backup_selection(user.tolist(), tmp_path / "backup_selection.star")
    out_model = tmp_path / "facility_rank.pt"
    rc = main(["train", "rank", "--classes", str(stack), "--selection", str(tmp_path / "backup_selection.star"),
               "--out", str(out_model), "--steps", "60", "--folds", "2", "--threads", "2"])
    assert rc == 0 and out_model.exists()
    after_dir = tmp_path / "after"
    assert main(["run", "rank", "--classes-in", str(stack), "--out", str(after_dir), "--model", str(out_model)]) == 0
    after = pd.read_csv(after_dir / "rank_scores.csv")["score"].to_numpy()
    assert auroc(after, user) > auroc(before, user)  # the ranking now follows the user
    assert after[flipped].mean() < before[flipped].mean() - 0.1
    info = torch.load(out_model, weights_only=True)["info"]["fine_tuned"]
    assert info["classes"] == len(user) and info["accepted"] == int(user.sum())


def test_selection_files_are_checked_against_the_classes(tmp_path, held_out):
    from cryolens.formats import read_selection
    from cryolens.relion_ext.class2d import write_backup_selection

    cs = held_out[0].classes
    write_backup_selection([1, 0, 1], tmp_path / "short.star")
    with pytest.raises(InputError, match="3 rows in the selection"):
        read_selection(str(tmp_path / "short.star"), cs)
