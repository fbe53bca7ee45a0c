"""cryolens-cryosparc against a loopback STAND-IN of the CryoSPARC v5 API (tests/helpers/cryosparc_standin.py),
driven by the real, unmodified cryosparc-tools 5.0 client. Not a test against CryoSPARC itself."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import mrcfile
import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

import cryosparc_standin as sd
from conftest import shared_path
from cryosparc_standin import client, run
from cryosparc_standin import same_values as _same
from cryolens.core.geometry import angular_distance_deg, euler_to_matrix, rotvec_to_matrix
from cryolens.core.jobs import REGISTRY, Input, JobResult, JobSpec, Output, Param, register
from cryolens.cryosparc_ext import external
from cryolens.cryosparc_ext.csfile import read_particles

J2 = ("cryosparc", "cryosparc_J2_particles_exported.cs")
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


# -- select on a real 2D classification --------------------------------------------------------------
def test_select_classes_returns_a_passthrough_subset_with_every_upstream_field(standin):
    state, url = standin
    assert run(url, "select", "--particles", "J1.particles", "--classes", "1,2") == 0
    job = state.jobs["J2"]
    assert job.status == "completed" and job.title == "cryolens select (classes=1,2)"
    assert sd.PASSWORD not in job.title + job.description and "--classes 1,2" in job.description
    ops = state.ops("J2")  # inputs connected before the job starts, outputs saved while it runs
    assert ops.index("jobs.connect") < ops.index("jobs.mark_running") < ops.index("jobs.save_output") \
        < ops.index("jobs.mark_completed")

    src = Dataset.load(shared_path(*J2))
    back = client(url).find_job("P1", "J2").load_output("particles_selected")  # joins passthrough on uid
    keep = np.isin(np.asarray(src["alignments2D/class"]), [0, 1])  # classes 1,2 (1-based) = 0,1 in cryoSPARC
    assert len(back) == keep.sum() == 13
    assert set(np.asarray(back["uid"]).tolist()) == set(np.asarray(src["uid"])[keep].tolist())
    rows = {int(u): i for i, u in enumerate(src["uid"])}
    idx = np.array([rows[int(u)] for u in back["uid"]])
    assert sorted(back.fields()) == sorted(src.fields())
    for f in src.fields():  # every upstream field recoverable, bit for bit
        assert _same(back[f], np.asarray(src[f])[idx]), f
    out = job.spec.outputs.root["particles_selected"]
    assert out.type == "particle" and out.passthrough == "particles"
    assert {r.name: r.passthrough for r in out.results} == {"blob": False, "ctf": True, "alignments2D": True}
    main = Dataset.load(state.project_dir / "J2" / "J2_particles_selected.cs")
    assert main.prefixes() == ["blob"]  # only the re-emitted slot is the job's own
    # the job's own directory, read offline: main file + passthrough file joined on uid
    offline = read_particles(state.project_dir / "J2" / "J2_particles_selected.cs", project_dir=state.project_dir)
    assert len(offline) == 13 and "alignments2D/class_posterior" in offline.table.columns
    assert (offline.table["class_id"].isin([1, 2])).all()


def test_select_with_class_averages_downloads_them_and_returns_templates(standin, tmp_path):
    state, url = standin
    rc = run(url, "select", "--particles", "J1.particles", "--classes-in", "J1.class_averages", "--classes", "2,4",
             "--project-dir", str(tmp_path / "not-mounted-here"))
    assert rc == 0
    job = state.jobs["J2"]
    assert set(job.spec.outputs.root) == {"particles_selected", "templates_selected"}
    assert state.ops().count("projects.download_file") >= 1  # class averages fetched: project not mounted
    assert any(e["type"] == "warning" and "not visible" in e["text"] for e in state.events["J2"])
    templ = client(url).find_job("P1", "J2").load_output("templates_selected")
    assert sorted(np.asarray(templ["blob/idx"]).tolist()) == [1, 3]
    assert np.allclose(sorted(np.asarray(templ["blob/res_A"])), [9, 12])
    parts = client(url).find_job("P1", "J2").load_output("particles_selected")
    assert set(np.asarray(parts["alignments2D/class"]).tolist()) == {1, 3}
    side = pd.read_csv(state.project_dir / "J2" / "cryolens_classes_templates_selected.csv")
    assert side["class_id"].tolist() == [1, 2, 3, 4, 5] and side["selected"].tolist() == [0, 1, 0, 1, 0]


def test_split_outputs_get_valid_cryosparc_names(standin):
    state, url = standin
    assert run(url, "select", "--particles", "J1.particles", "--split_by", "class_id") == 0
    names = sorted(state.jobs["J2"].spec.outputs.root)
    assert names == [f"particles_{k}" for k in range(1, 6)]
    sizes = [len(client(url).find_job("P1", "J2").load_output(n)) for n in names]
    assert sizes == [6, 7, 2, 3, 4]


# -- failures --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--classes", "1,x"], "parameter --classes: cannot read 'x'"),
    (["--classes", "9"], "no particles selected"),
    (["--min_quantile", "2", "--column", "class_id"], "parameter --min-quantile: 2.0 is outside [0, 1]"),
])
def test_bad_parameters_mark_the_job_failed_with_a_readable_message(standin, capsys, args, message):
    state, url = standin
    assert run(url, "select", "--particles", "J1.particles", *args) == 1
    assert state.jobs["J2"].status == "failed"
    errors = [e["text"] for e in state.events["J2"] if e["type"] == "error"]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in errors[0]
    assert state.failures["J2"].rstrip().splitlines()[-1].endswith(errors[0])  # run() keeps the same last line
    assert "jobs.save_output" not in state.ops("J2") and not [k for k in state.saved if k[0] == "J2"]
    assert message in capsys.readouterr().err


def test_a_refused_connection_fails_the_job_before_it_starts(standin):
    state, url = standin
    state.add_job("extract_micrographs_multi", status="completed")  # J2: particles without blob
    d = Dataset.load(shared_path(*J2)).filter_prefixes(["ctf"], copy=True)
    state.add_result("J2", "particles", "particle", d, {"ctf": "ctf"})
    assert run(url, "select", "--particles", "J2.particles", "--classes", "1") == 2
    assert state.jobs["J3"].status == "failed" and "mark_running" not in " ".join(state.ops("J3"))
    assert "lacks required slots ['blob']" in state.failures["J3"]


def test_wrong_sources_and_logins_create_no_job(standin, monkeypatch, capsys):
    state, url = standin
    assert run(url, "select", "--particles", "J1.class_averages") == 2  # a template output
    assert "is a template output, not particle" in capsys.readouterr().err
    assert run(url, "select", "--particles", "J1.nothing") == 2
    assert "has no output 'nothing'" in capsys.readouterr().err
    assert run(url, "select", "--particles", "J1-particles") == 2
    monkeypatch.setenv("CRYOSPARC_PASSWORD", "wrong")
    assert run(url, "select", "--particles", "J1.particles", "--classes", "1") == 2
    assert "cannot connect to CryoSPARC" in capsys.readouterr().err
    monkeypatch.setenv("CRYOSPARC_PASSWORD", sd.PASSWORD)
    state.version = "v4.7.1"
    assert run(url, "select", "--particles", "J1.particles", "--classes", "1") == 2
    assert "must share major.minor" in capsys.readouterr().err
    assert list(state.jobs) == ["J1"]


def test_a_saved_login_token_replaces_the_password(standin, monkeypatch, tmp_path, capsys):
    state, url = standin
    monkeypatch.delenv("CRYOSPARC_PASSWORD")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert run(url, "select", "--particles", "J1.particles", "--classes", "1") == 2
    assert "no CryoSPARC login" in capsys.readouterr().err and list(state.jobs) == ["J1"]
    auth = tmp_path / "config" / "cryosparc-tools" / "auth.json"  # what `python -m cryosparc.tools login` saves
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({url: {sd.EMAIL: {"token": {"access_token": sd.TOKEN, "token_type": "bearer"},
                                                 "expires": "2999-01-01T00:00:00Z"}}}))
    assert run(url, "select", "--particles", "J1.particles", "--classes", "1") == 0
    assert state.jobs["J2"].status == "completed" and "login" not in state.ops()


def test_the_standin_enforces_bearer_auth_and_loopback(standin):
    state, url = standin
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/api/cmd/users/me")
    assert err.value.code == 401
    spec = json.load(urllib.request.urlopen(f"{url}/api/cmd/openapi.json"))
    assert "STAND-IN" in spec["info"]["title"]


def test_the_standin_refuses_what_cryosparc_refuses(standin):
    state, url = standin
    cs = client(url)
    job = cs.find_project("P1").create_external_job("W1", title="rules")
    job.add_input("particle", "particles", slots=["blob"])
    job.connect("particles", "J1", "particles")
    job.add_output("particle", "out", slots=["alignments2D"], passthrough="particles")
    d = job.load_input("particles")
    with pytest.raises(Exception, match="must be running"):
        job.save_output("out", d.filter_prefixes(["alignments2D"], copy=True))
    job.start("running")
    with pytest.raises(Exception, match="connect every input before starting"):
        job.connect("particles", "J1", "particles")
    with pytest.raises(Exception, match="undeclared slots"):
        job.save_output("out", d)
    foreign = d.filter_prefixes(["alignments2D"], copy=True)
    foreign["uid"][0] = 12345
    with pytest.raises(Exception, match="not rows of input"):
        job.save_output("out", foreign)
    job.stop()
    with pytest.raises(Exception, match="clear it first"):
        job.add_output("particle", "late", slots=["blob"])


# -- the generic mechanisms: poses, scores, progress, figures, volumes, abort ------------------------
@pytest.fixture
def pose_job():
    """A job registered for this test only: needs a volume, reports progress, returns 3D poses, a
    per-particle score, a text label, a table and a figure."""
    seen = {}

    def run_it(inputs, params, ctx):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        vol, voxel = inputs["volume"]
        seen["volume"] = (vol.shape, voxel)
        ps = inputs["particles"].copy()
        n = len(ps)
        for i in range(n):
            ctx.report(i + 1, n)
            if params["abort_at"] and i + 1 == params["abort_at"]:
                seen["kill"]()
            ctx.check_abort()
        rng = np.random.default_rng(1)
        ps.table["rot"], ps.table["tilt"] = rng.uniform(-180, 180, n), rng.uniform(5, 175, n)
        ps.table["psi"] = rng.uniform(-180, 180, n)
        ps.table["shift_x"], ps.table["shift_y"] = rng.uniform(-5, 5, n), rng.uniform(-5, 5, n)
        ps.table["cryolens/confidence"] = np.linspace(0, 1, n)
        ps.table["label"] = ["a" if i % 2 else "b" for i in range(n)]
        seen["particles"] = ps
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        return JobResult(particles={"particles_posed": ps}, tables={"poses": pd.DataFrame({"n": [n]})},
                         figures={"confidence": fig}, summary=["posed"])

    spec = register(JobSpec("standin_pose", "test job: poses + scores", (
        Input("particles", "particles", "particles"), Input("volume", "volume", "reference map")),
        (Param("abort_at", int, 0, "test hook"),), (Output("particles_posed", "particles", "posed"),), run_it))
    yield spec, seen
    REGISTRY.pop(spec.name, None)


P12 = ("cryosparc", "cryosparc_P12_J24_001_particles.cs")


def _add_volume(state):
    vol = state.add_job("homo_refine_new", "Refinement", status="completed")  # J2
    with mrcfile.new(state.project_dir / vol.uid / "map.mrc") as m:
        m.set_data(np.zeros((8, 8, 8), dtype=np.float32))
        m.voxel_size = 2.0
    v = Dataset.allocate(1, [("map/path", "O"), ("map/shape", "<u4", (3,)), ("map/psize_A", "<f4")])
    v["map/path"] = np.array([f"{vol.uid}/map.mrc"], dtype=object)
    state.add_result(vol.uid, "volume", "volume", v, {"map": "blob"})


@pytest.mark.parametrize("upstream", ["2D", "3D"])
def test_poses_become_alignments3D_and_scores_go_to_pick_stats_and_a_side_car(standin, pose_job, upstream):
    """2D-classified particles gain an alignments3D slot; refined ones (real P12 refinement) get
    theirs re-saved with the new poses. Either way the rest comes back unchanged by passthrough."""
    state, url = standin
    _, seen = pose_job
    _add_volume(state)  # J2
    source = "J1.particles"
    if upstream == "3D":
        state.add_job("homo_refine_new", "Refinement", status="completed")  # J3
        p12 = Dataset.load(shared_path(*P12)).take(np.arange(0, 2019, 40))
        state.add_result("J3", "particles", "particle", p12, {s: s for s in ("blob", "ctf", "alignments3D")})
        source = "J3.particles"
    assert run(url, "standin_pose", "--particles", source, "--volume", "J2.volume") == 0
    assert seen["volume"] == ((8, 8, 8), 2.0)
    uid = list(state.jobs)[-1]
    job = state.jobs[uid]
    out = job.spec.outputs.root["particles_posed"]
    assert sorted(r.name for r in out.results if not r.passthrough) == ["alignments3D", "pick_stats"]
    back = client(url).find_job("P1", uid).load_output("particles_posed")
    src = state.saved[tuple(source.split("."))]
    assert np.array_equal(back["uid"], src["uid"])  # all rows, identities kept
    moved = ("alignments3D/pose", "alignments3D/shift")
    for f in src.fields():  # everything upstream unchanged but the poses
        assert _same(back[f], src[f]) != (f in moved), f
    ps = seen["particles"].table
    n = len(ps)
    err = angular_distance_deg(rotvec_to_matrix(np.asarray(back["alignments3D/pose"], np.float64)),
                               euler_to_matrix(ps[["rot", "tilt", "psi"]].to_numpy(np.float64)))
    assert err.max() < 1e-3  # rotation vectors of the job's RELION angles (float32)
    px = np.asarray(back["alignments3D/shift"], np.float64) * np.asarray(back["alignments3D/psize_A"])[:, None]
    np.testing.assert_allclose(px, ps[["shift_x", "shift_y"]].to_numpy(), atol=1e-5)  # pixels at psize_A
    assert np.allclose(back["alignments3D/psize_A"], src["blob/psize_A"])  # the image pixel size (new slot) or as refined
    np.testing.assert_array_equal(back["pick_stats/ncc_score"], np.linspace(0, 1, n).astype(np.float32))
    side = pd.read_csv(state.project_dir / uid / "cryolens_scores_particles_posed.csv")
    assert list(side.columns) == ["uid", "cryolens/confidence", "label"]
    assert side["uid"].astype(np.uint64).tolist() == np.asarray(src["uid"]).tolist()
    assert (state.project_dir / uid / "cryolens_poses.csv").exists()
    progress = [e for e in state.events[uid] if e["text"].startswith("standin_pose:")]
    assert len(progress) == 1 and progress[0]["updates"] >= 1 and progress[0]["text"].endswith("(100%)")
    images = [e for e in state.events[uid] if e["type"] == "image"]
    assert len(images) == 1 and images[0]["text"] == "confidence" and len(images[0]["imgfiles"]) == 2
    assert any("pick_stats/ncc_score = particle score 'cryolens/confidence'" in e["text"] for e in state.events[uid])


def test_a_job_killed_in_cryosparc_stops_and_saves_nothing(standin, pose_job, monkeypatch):
    state, url = standin
    _, seen = pose_job
    _add_volume(state)
    monkeypatch.setattr(external, "STOP_CHECK_S", 0.0)
    seen["kill"] = lambda: state.set_status("J3", "killed")
    assert run(url, "standin_pose", "--particles", "J1.particles", "--volume", "J2.volume", "--abort_at", "5") == 1
    assert "stopped: the job was killed" in state.failures["J3"]
    assert "jobs.save_output" not in state.ops("J3") and "particles" not in seen


def test_list_and_usage(capsys):
    assert external.main(["--list"]) == 0
    assert "select:" in capsys.readouterr().out
    assert external.main([]) == 2
    assert external.main(["no_such_job"]) == 2
    assert "unknown job" in capsys.readouterr().err
