"""Identity retrieval: library embeddings, the training recipe (determinism, torchrun), open-set
answers of the shipped model, and the identify job from the shell, RELION and cryoSPARC."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryolens.core.identify import (IdentityModel, embed_library, identify, prepare_library, prepare_queries,
                                    score_entries, shortlist_entries)
from cryolens.core.identify.train import RecipeConfig, calibrate_identity, simulated_queries, train_identity
from cryolens.core.identify.library import Library
from cryolens.core.mrc import write_stack
from cryolens.core.simulate.proteins import phantom_library
from cryolens.core.weights import default_weights

REPO = Path(__file__).resolve().parents[2]
BOX, PX = 48, 4.0
# every test here builds phantoms, libraries or models: the slow loop
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")]


def tiny_config(**kw) -> RecipeConfig:
    base = dict(n_proteins=6, n_clusters=4, per_cluster=2, steps=3, groups=4, n_val=3, n_unknown=2, box=32,
                pixel_size=6.0, in_size=32, embed_dim=16, val_every=3, seed=5)
    base.update(kw)
    return RecipeConfig(**base)


@pytest.fixture(scope="module")
def proteins():
    """Library proteins (first 6) and proteins the library does not have (last 2)."""
    return phantom_library(8, seed=4242, box=BOX, pixel_size=PX)


@pytest.fixture(scope="module")
def library(proteins):
    lib = Library(BOX, PX, n_views=60)
    for ph in proteins[:6]:
        lib.add_volume(ph.density, ph.name, accession=f"EMD-{len(lib) + 1:05d}", source="phantom")
    prepare_library(lib, None)
    return lib


@pytest.fixture(scope="module")
def shipped():
    return IdentityModel.load()


def test_shipped_model_is_small_calibrated_and_documented(shipped):
    path = default_weights("identify")
    assert path.stat().st_size < 3_000_000
    assert set(shipped.calibration) == {"embedding", "correlation", "combined"}
    assert np.isfinite(shipped.meta["shortlist_z"])
    assert shipped.meta.get("command", "").startswith("cryolens train identify")
    card = (REPO / "docs" / "models" / "identify.md").read_text()
    assert shipped.meta["command"] in card
    if "calibration_command" in shipped.meta:  # recalibrated after training: that command too
        assert shipped.meta["calibration_command"] in card


def test_combined_shortlist_keeps_every_entry_above_the_calibrated_bar():
    rng = np.random.default_rng(0)
    decoy = rng.normal(0.0, 0.1, (3, 16))
    decoy -= decoy.mean(1, keepdims=True)
    decoy /= decoy.std(1, keepdims=True) / 0.1  # mean 0, sd 0.1 per class
    scores = np.array([[0.9, 0.5, 0.25, 0.1, -0.2],   # three entries clear z 2 (score 0.2)
                       [0.1, 0.0, -0.1, 0.05, 0.15],  # none does: the best `at_least`
                       [0.3, 0.3, 0.3, 0.3, 0.3]])   # all of them
    got = shortlist_entries(scores, decoy, 2, 2.0)
    assert [sorted(g.tolist()) for g in got] == [[0, 1, 2], [0, 4], [0, 1, 2, 3, 4]]
    assert [g.tolist() for g in shortlist_entries(scores, decoy, 2, None)] == [[0, 1], [4, 0], [0, 1]]


def test_combined_scores_its_shortlist_exactly_as_correlation_does(library, open_set_queries, shipped):
    q = prepare_queries(open_set_queries[0][:6], PX, library)
    comb = score_entries(q, library, "combined", shipped, shortlist=2, keep_refs=True)
    corr = score_entries(q, library, "correlation", shipped)
    on = np.isfinite(comb.scores)
    assert (on.sum(1) >= 2).all() and not on.all()  # the bar passes some entries, not all of them
    np.testing.assert_allclose(comb.scores[on], corr.scores[on], atol=1e-5)
    assert (comb.best_ref[~on] == -1).all() and np.isnan(comb.psi[~on]).all()
    np.testing.assert_array_equal(comb.best_ref[on], corr.best_ref[on])
    np.testing.assert_allclose(comb.decoy, corr.decoy, atol=1e-6)


def test_query_blocks_do_not_change_the_scores(library, open_set_queries):
    from cryolens.core.identify.score import _ncc_groups

    q = prepare_queries(open_set_queries[0][:5], PX, library)
    ent = library.entry_of_reference()
    one = _ncc_groups(q, library.references, ent, len(library), library, 12, max_pairs=len(ent))  # 1 a block
    all_ = _ncc_groups(q, library.references, ent, len(library), library, 12)
    for a, b in zip(one, all_):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_library_embeddings_are_stored_and_only_new_maps_are_embedded(library, proteins, shipped, tmp_path):
    lib = Library(BOX, PX, n_views=20)
    lib.add_volume(proteins[0].density, "a")
    emb1 = embed_library(lib, shipped).copy()
    lib.save(tmp_path / "lib.npz")
    back = Library.load(tmp_path / "lib.npz")
    assert back.embedding_model == shipped.fingerprint() and np.array_equal(back.embeddings, emb1)
    back.add_volume(proteins[1].density, "b")
    calls = []
    emb2 = embed_library(back, shipped, log=calls.append)
    assert calls == ["embedding 20 library references"]  # only the new map's views
    assert np.array_equal(emb2[:20], emb1) and emb2.shape == (40, emb1.shape[1])
    # another model: everything is embedded again under its fingerprint
    other = IdentityModel(torch.nn.Module(), {}, {})
    other.encoder = type(shipped.encoder)(**{k: v for k, v in shipped.encoder.config.items()})
    calls.clear()
    embed_library(back, other, log=calls.append)
    assert calls == ["embedding 40 library references"] and back.embedding_model == other.fingerprint()


def test_prepare_library_adds_decoys_and_embeddings_once_and_saves_them(library, proteins, shipped, tmp_path):
    from cryolens.core.errors import CryolensError

    lib = Library(BOX, PX, n_views=6)
    lib.add_volume(proteins[0].density, "a")
    with pytest.raises(CryolensError, match="prepare_library"):
        score_entries(torch.zeros(1, BOX, BOX), lib, "correlation")
    path = tmp_path / "lib.npz"
    logs = []
    assert prepare_library(lib, shipped, path, log=logs.append)
    back = Library.load(path)
    assert np.array_equal(back.decoys.references, library.decoys.references)  # the same decoys at one sampling
    assert back.embedding_model == back.decoys.embedding_model == shipped.fingerprint()
    assert back.embeddings.shape[0] == 6 and back.decoys.embeddings.shape[0] == len(back.decoys.references)
    assert len(logs) == 3  # decoys rendered, references and decoys embedded
    before = path.stat().st_mtime_ns
    assert not prepare_library(back, shipped, path) and path.stat().st_mtime_ns == before


def test_scoring_does_not_load_the_simulator():
    code = ("import sys, cryolens.core.identify; "
            "print(sorted(m for m in sys.modules if m.startswith('cryolens.core.simulate')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_fast_search_is_exhaustive_ncc_on_the_pairs_it_keeps(library, open_set_queries, shipped):
    from cryolens.core.identify.score import FAST_VIEWS

    q = prepare_queries(open_set_queries[0], PX, library)
    fast = score_entries(q, library, "correlation", shipped, keep_refs=True, search="fast")
    full = score_entries(q, library, "correlation", shipped, keep_refs=True, search="exhaustive")
    kept = np.isfinite(fast.refs)
    assert (kept.reshape(len(q), len(library), -1).sum(-1) == FAST_VIEWS).all()  # 6 entries: all, 8 views each
    np.testing.assert_allclose(fast.refs[kept], full.refs[kept], atol=1e-5)  # NCC itself, not an estimate
    assert (fast.scores <= full.scores + 1e-5).all() and (fast.decoy <= full.decoy + 1e-5).all()
    same = fast.scores.argmax(1) == full.scores.argmax(1)
    assert same.mean() >= 0.9, (fast.scores, full.scores)
    # where NCC's best view was kept, the entry's score is NCC's to the digit
    best_kept = kept[np.arange(len(q))[:, None], full.best_ref]
    np.testing.assert_allclose(fast.scores[best_kept], full.scores[best_kept], atol=1e-5)
    assert best_kept[np.arange(len(q)), full.scores.argmax(1)].mean() >= 0.9


def test_fast_search_keeps_to_the_embedding_shortlist_and_the_best_entries(library, open_set_queries):
    from cryolens.core.identify.score import polar_coefficients, polar_need, polar_refs, _max_freq

    q = prepare_queries(open_set_queries[0][:4], PX, library)
    mf = _max_freq(library)
    pq, pr = polar_coefficients(q, mf), polar_refs(library, library.references, mf)
    allowed = np.zeros((4, len(library)), bool)
    allowed[:, [1, 4]] = True
    need, best = polar_need(pq, pr, len(library), library.n_views, 3, allowed)
    per_entry = need.reshape(4, len(library), -1).sum(-1)
    assert (per_entry[:, [1, 4]] == 8).all() and per_entry.sum() == 4 * 16  # never off the list, even to fill 3
    need, best = polar_need(pq, pr, len(library), library.n_views, 2)
    chosen = need.reshape(4, len(library), -1).any(-1)
    assert (chosen.sum(1) == 2).all()
    assert (np.sort(best, 1)[:, -2:] == np.sort(np.where(chosen, best, -np.inf), 1)[:, -2:]).all()


def test_polar_coefficients_are_made_once_per_library_and_again_when_it_grows(proteins):
    from cryolens.core.identify.score import polar_refs

    lib = Library(BOX, PX, n_views=6)
    lib.add_volume(proteins[0].density, "a")
    first = polar_refs(lib, lib.references, 0.3)
    assert polar_refs(lib, lib.references, 0.3) is first
    lib.add_volume(proteins[1].density, "b")
    again = polar_refs(lib, lib.references, 0.3)
    assert again is not first and len(again) == 12
    np.testing.assert_allclose(again[:6], first, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_searches_on_cuda_answer_as_on_the_cpu(library, open_set_queries, shipped):
    images = open_set_queries[0]
    for mode in ("correlation", "combined"):
        cpu = identify(images, PX, library, shipped, mode=mode).table
        gpu = identify(images, PX, library, shipped, mode=mode, device="cuda").table
        assert (cpu["identity"] == gpu["identity"]).all() and (cpu["match1"] == gpu["match1"]).all()
        np.testing.assert_allclose(cpu["score1"], gpu["score1"], atol=1e-3)


def test_sparse_and_blocked_ncc_paths_agree(library, open_set_queries, monkeypatch):
    from cryolens.core.identify import score

    q = prepare_queries(open_set_queries[0][:3], PX, library)
    ent = library.entry_of_reference()
    need = np.zeros((3, len(ent)), bool)
    need[:, ::17] = True
    need[1, 5:9] = True
    sparse = score._ncc_groups(q, library.references, ent, len(library), library, 12, need=need)
    monkeypatch.setattr(score, "SPARSE", 0.0)  # force the blocked path
    blocked = score._ncc_groups(q, library.references, ent, len(library), library, 12, need=need)
    for a, b in zip(sparse, blocked):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def open_set_queries(proteins):
    known, names_k = simulated_queries(proteins[:6], 12, BOX, PX, seed=3)
    strange, _ = simulated_queries(proteins[6:], 4, BOX, PX, seed=4, junk=4)
    return np.concatenate([known, strange]), names_k


@pytest.mark.parametrize("mode", ["correlation", "combined"])
def test_open_set_known_classes_are_named_and_strangers_are_unknown(library, open_set_queries, shipped, mode):
    images, names_k = open_set_queries
    table = identify(images, PX, library, shipped, mode=mode).table
    tk, tu = table.iloc[:12], table.iloc[12:]
    right = (tk["identity"] == names_k).mean()
    wrong = ((tk["identity"] != names_k) & (tk["identity"] != "unknown")).mean()
    assert right >= 0.75 and wrong <= 0.1, table
    assert (tu["identity"] == "unknown").mean() >= 0.75, tu
    assert tk["confidence"].mean() > tu["confidence"].mean() + 0.3
    assert (table["match1"] != "").all() and np.isfinite(table["score1"]).all()


def test_embedding_mode_ranks_above_chance_and_is_not_confidently_wrong(library, open_set_queries, shipped):
    """The CPU-trained embedding alone is a weak identifier (docs/models/identify.md): its calibrated
    confidence must say so (unknown rather than a wrong name), while its ranking still carries the
    signal the combined mode's shortlist relies on."""
    images, names_k = open_set_queries
    table = identify(images, PX, library, shipped, mode="embedding").table
    tk = table.iloc[:12]
    in_top3 = np.mean([n in set(r) for n, r in zip(names_k, tk[["match1", "match2", "match3"]].to_numpy())])
    assert in_top3 >= 0.75, tk  # chance: 0.5
    wrong = ((tk["identity"] != names_k) & (tk["identity"] != "unknown")).mean()
    assert wrong <= 0.1, tk


def test_recipe_is_deterministic_on_cpu():
    torch.set_num_threads(1)
    ph = phantom_library(11, seed=9, box=32, pixel_size=6.0)
    a, ra = train_identity(tiny_config(), phantoms=ph, log=lambda s: None)
    b, rb = train_identity(tiny_config(), phantoms=ph, log=lambda s: None)
    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.calibration == b.calibration and set(a.calibration) == {"embedding", "correlation", "combined"}
    c, _ = train_identity(tiny_config(seed=6), phantoms=ph, log=lambda s: None)
    assert not all(torch.equal(sa[k], c.encoder.state_dict()[k]) for k in sa)


def test_calibrate_only_refits_confidence_and_shortlist_without_touching_weights(shipped):
    ph = phantom_library(11, seed=9, box=32, pixel_size=6.0)
    before = {k: v.clone() for k, v in shipped.encoder.state_dict().items()}
    init = IdentityModel(shipped.encoder, {}, {"stages": [{"stage": "I"}]})
    model, report = calibrate_identity(tiny_config(), init, log=lambda s: None, phantoms=ph)
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert set(model.calibration) == {"embedding", "correlation", "combined"}
    assert model.meta["shortlist_z"] == report["calibration"]["shortlist_z"]
    assert [s["stage"] for s in model.meta["stages"]] == ["I", "calibration"]
    assert 0.0 <= report["calibration"]["combined"]["shortlist_recall"] <= 1.0
    assert "train" not in report


def test_stage_two_fine_tunes_on_labelled_real_classes(library, proteins, shipped, tmp_path):
    """cryolens train identify with --real-classes/--labels/--library, starting from a model."""
    images, names = simulated_queries(proteins[:3], 6, BOX, PX, seed=8)
    write_stack(tmp_path / "real.mrcs", images.astype(np.float32), PX)
    pd.DataFrame({"class": np.arange(1, 7), "identity": names}).to_csv(tmp_path / "labels.csv", index=False)
    library.save(tmp_path / "lib.npz")
    out = tmp_path / "tuned.pt"
    small = build_small_model(tmp_path)
    cmd = [sys.executable, "-m", "cryolens.cli", "train", "identify", "--out", str(out), "--init", str(small),
           "--real-classes", str(tmp_path / "real.mrcs"), "--labels", str(tmp_path / "labels.csv"),
           "--library", str(tmp_path / "lib.npz"), "--proteins", "4", "--clusters", "3", "--steps", "3",
           "--groups", "4", "--box", "32", "--pixel-size", "6", "--in-size", "32", "--embed-dim", "16",
           "--val-every", "3", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage II: 6 labelled real classes of 3 identities" in proc.stdout
    tuned = IdentityModel.load(out)
    assert [s["stage"] for s in tuned.meta["stages"]] == ["I (synthetic)", "II (mixed synthetic/real)"]
    before = IdentityModel.load(small).encoder.state_dict()
    assert not all(torch.equal(before[k], v) for k, v in tuned.encoder.state_dict().items())
    # a label that names no library entry is refused with the label in the message
    pd.DataFrame({"class": [1], "identity": ["no-such-protein"]}).to_csv(tmp_path / "bad.csv", index=False)
    cmd[cmd.index(str(tmp_path / "labels.csv"))] = str(tmp_path / "bad.csv")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "no-such-protein" in proc.stderr


def build_small_model(tmp_path) -> Path:
    ph = phantom_library(11, seed=9, box=32, pixel_size=6.0)
    model, _ = train_identity(tiny_config(), phantoms=ph, log=lambda s: None)
    model.meta["command"] = "test"
    return model.save(tmp_path / "small.pt")


def test_torchrun_two_ranks_train_one_model(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "cryolens.cli", "train", "identify", "--out", str(out), "--proteins", "4", "--clusters", "3",
           "--steps", "2", "--groups", "4", "--box", "32", "--pixel-size", "6", "--in-size", "32",
           "--embed-dim", "16", "--val-every", "2", "--device", "cpu", "--report", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["train"]["world"] == 2 and rep["train"]["steps"] == 2
    assert set(IdentityModel.load(out).calibration) == {"embedding", "correlation", "combined"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "r.json"]  # one writer, no temporaries


# -- the job through the adapters -------------------------------------------------------------------
@pytest.fixture(scope="module")
def class_stack(proteins, tmp_path_factory):
    d = tmp_path_factory.mktemp("identify_job")
    images, names = simulated_queries(proteins[:2], 4, BOX, PX, seed=21, junk=1)
    write_stack(d / "classes.mrcs", images.astype(np.float32), PX)
    return d / "classes.mrcs", names


def test_job_from_the_shell_on_a_bare_stack(library, class_stack, tmp_path):
    from cryolens.cli import main

    library.save(tmp_path / "lib.npz")
    stack, names = class_stack
    rc = main(["run", "identify", "--classes-in", str(stack), "--out", str(tmp_path / "out"),
               "--library", str(tmp_path / "lib.npz"), "--top_k", "3"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "out" / "identities.csv", keep_default_na=False)
    assert table["class_id"].tolist() == [1, 2, 3, 4, 5]
    assert {"identity", "confidence", "match1", "match3", "score3"} <= set(table.columns)
    assert (table["identity"].iloc[:4] == names[:4]).mean() >= 0.75
    assert (tmp_path / "out" / "identify_gallery.pdf").stat().st_size > 1000
    # a missing library: a clear error naming it, nothing written
    rc = main(["run", "identify", "--classes-in", str(stack), "--out", str(tmp_path / "out2"),
               "--library", str(tmp_path / "missing.npz")])
    assert rc == 2 and not (tmp_path / "out2" / "identities.csv").exists()


@pytest.mark.relion
def test_job_as_a_relion_external_job_on_class2d(relion_class2d, proteins, tmp_path):
    """From relion_pipeliner: classes of protA identified against a library with protA's map."""
    import shutil

    from conftest import need_relion
    from relion_helpers import add_and_run_external, pipeline_nodes
    from cryolens.relion_ext.star import read_blocks

    need_relion("relion_pipeliner")
    src, data = relion_class2d
    proj = tmp_path / "proj"
    shutil.copytree(src, proj)
    lib = Library(64, 3.0, n_views=60)
    lib.add_map_file(proj / "Synthetic" / "protA.mrc", name="protA", accession="EMD-0001")
    for ph in phantom_library(3, seed=77, box=64, pixel_size=3.0):
        lib.add_volume(ph.density, ph.name)
    prepare_library(lib, None)
    lib.save(proj / "lib.npz")
    exe = shutil.which("cryolens-relion-identify") or str(REPO / ".venv/bin/cryolens-relion-identify")
    job_dir, status = add_and_run_external(proj, {
        "fn_exe": exe, "in_part": str(data.relative_to(src)), "param1_label": "library", "param1_value": "lib.npz",
        "param2_label": "top_k", "param2_value": "2", "nr_threads": "1"})
    assert status == 2, (job_dir / "run.err").read_text()
    table = read_blocks(job_dir / "identities.star")["identities"]
    assert table["rlnClassNumber"].tolist() == [1, 2, 3, 4]
    assert set(table["identity"]) <= {"protA", "unknown"} and (table["identity"] == "protA").any()
    nodes = pipeline_nodes(proj)
    rel = job_dir.relative_to(proj)
    assert nodes[f"{rel}/particles_protA.star"] == 3
    assert f"{rel}/identify_gallery.pdf" in nodes


def test_job_through_the_cryosparc_standin_answers_unknown_for_noise(library, tmp_path, standin):
    """The real 2D classification's particles with pure-noise class averages (the stand-in's):
    every class must come back unknown, with its particles in particles_unknown."""
    from cryosparc_standin import client, run

    lib_path = library.save(tmp_path / "lib.npz")
    state, url = standin
    rc = run(url, "identify", "--classes-in", "J1.class_averages", "--particles", "J1.particles",
             "--library", str(lib_path), "--mode", "correlation")
    assert rc == 0, state.events
    job = state.jobs["J2"]
    assert "particles_unknown" in set(job.spec.outputs.root)
    parts = client(url).find_job("P1", "J2").load_output("particles_unknown")
    assert len(parts) == 22
    side = next((state.project_dir / "J2").glob("*identities*.csv"))
    t = pd.read_csv(side, keep_default_na=False)
    assert (t["identity"] == "unknown").all() and len(t) == 5


def test_a_library_built_from_maps_arrives_with_the_outputs_or_not_at_all(proteins, class_stack, tmp_path,
                                                                          monkeypatch, standin):
    import cryolens.core.identify as ident
    from cryolens.cli import main
    from cryolens.core.errors import CryolensError
    from cryosparc_standin import run

    maps = tmp_path / "maps"
    maps.mkdir()
    for ph in proteins[:2]:
        ph.save(maps / f"{ph.name}.mrc")
    stack, _ = class_stack
    args = ["run", "identify", "--classes-in", str(stack), "--maps", str(maps), "--mode", "correlation",
            "--gallery", "no", "--out"]
    assert main(args + [str(tmp_path / "out")]) == 0
    lib = Library.load(tmp_path / "out" / "library.npz")  # decoys included: the next run starts ready
    assert set(lib.entries["name"]) == {ph.name for ph in proteins[:2]} and lib.decoys is not None
    assert "library.npz" in (tmp_path / "out" / ".cryolens-outputs").read_text().split()
    # the cryoSPARC job keeps it in its own folder, beside the side-car tables
    state, url = standin
    assert run(url, "identify", "--classes-in", "J1.class_averages", "--maps", str(maps), "--mode",
               "correlation") == 0, state.events
    job = max(state.jobs, key=lambda j: int(j[1:]))
    assert len(Library.load(state.project_dir / job / "library.npz")) == 2
    # a failure after the library was built: the run leaves nothing, the library neither

    def fail(*a, **k):
        raise CryolensError("stopped on purpose")

    monkeypatch.setattr(ident, "identify", fail)
    assert main(args + [str(tmp_path / "out2")]) == 2
    assert not [p for p in (tmp_path / "out2").iterdir() if not p.name.startswith(".")]


def test_library_build_from_a_csv_then_incrementally(proteins, tmp_path, capsys):
    from cryolens.cli import main

    for i, ph in enumerate(proteins[:3]):
        ph.save(tmp_path / f"m{i}.mrc")
    pd.DataFrame({"path": ["m0.mrc", "m1.mrc"], "name": ["alpha", "beta"],
                  "accession": ["EMD-1111", "EMD-2222"]}).to_csv(tmp_path / "maps.csv", index=False)
    lib = tmp_path / "lib.npz"
    assert main(["library", "build", str(lib), "--csv", str(tmp_path / "maps.csv"), "--box", "48",
                 "--pixel-size", "4", "--views", "12", "--no-embed"]) == 0
    first = Library.load(lib)
    assert first.entries["name"].tolist() == ["alpha", "beta"]
    assert first.entries["accession"].tolist() == ["EMD-1111", "EMD-2222"]
    assert main(["library", "build", str(lib), "--maps", str(tmp_path / "m2.mrc"), "--phantoms", "1",
                 "--no-embed"]) == 0
    second = Library.load(lib)
    assert len(second) == 4 and second.box == 48 and second.n_views == 12
    assert np.array_equal(second.references[:24], first.references)  # the first maps were not redone
    capsys.readouterr()
    assert main(["library", "info", str(lib)]) == 0
    text = capsys.readouterr().out
    assert "4 entries" in text and "EMD-2222" in text and "m2" in text
    # a CSV naming a missing map: an error naming the CSV and the map, the library untouched
    pd.DataFrame({"path": ["nope.mrc"]}).to_csv(tmp_path / "bad.csv", index=False)
    before = lib.read_bytes()
    assert main(["library", "build", str(lib), "--csv", str(tmp_path / "bad.csv"), "--no-embed"]) == 2
    assert "nope.mrc" in capsys.readouterr().err and lib.read_bytes() == before


def test_stage_two_batches_never_hold_one_real_class_twice():
    """Each real class is its own group label: a second copy in the batch would be a 'negative'
    identical to its anchor. Batches draw identities evenly and classes without repeats."""
    from cryolens.core.identify.train import MixedSource, StageOneSource, build_view_clusters

    ph = phantom_library(3, seed=9, box=32, pixel_size=6.0)
    syn = StageOneSource(build_view_clusters([p.density for p in ph], [p.name for p in ph], 2, 2, 3.0, 6.0),
                         groups=4, per_group=4, seed=1, ctf_corrected=True)
    real = torch.randn(5, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = np.array(["a", "a", "a", "b", "b"])
    refs = np.random.default_rng(0).standard_normal((6, 32, 32)).astype(np.float16)
    partners = np.array([[0, 1, 2]] * 3 + [[3, 4, 5]] * 2)
    for groups, n_real in ((4, 2), (12, 5)):
        src = MixedSource(syn, real, labels, partners, refs, groups=groups, seed=3)
        seen_b = 0
        for step in range(20):
            x, y = src(step, 0, 1)
            firsts = x[: 4 * n_real: 4]  # each real group starts with its class
            idx = [int(torch.nonzero((real == f).flatten(1).all(1))[0]) for f in firsts]
            assert len(set(idx)) == n_real, f"step {step}: real classes {idx} repeat"
            seen_b += sum(labels[i] == "b" for i in idx)
            assert len(torch.unique(y)) == groups
        assert seen_b > 0
