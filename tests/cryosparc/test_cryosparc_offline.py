"""Offline mode (.cs in -> job -> .cs + .csg out) and RELION <-> cryoSPARC conversion of the same particles."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from conftest import shared_path
from cryosparc_standin import same_values as _same
from cryolens.cli import main as cryolens_main
from cryolens.core.jobs import REGISTRY, Input, JobResult, JobSpec, Output, register
from cryolens.cryosparc_ext import external
from cryolens.cryosparc_ext.csfile import read_particles
from cryolens.cryosparc_ext.offline import write_csg

J2 = ("cryosparc", "cryosparc_J2_particles_exported.cs")
EMPIAR_STAR = ("real-particles", "empiar_10076_7.star")
EMPIAR_CS = ("real-particles", "empiar_10076_7.cs")
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def _block_yaml(text: str) -> dict:
    """A strict reader of the block-YAML subset a .csg uses (2-space nesting, 'quoted' or plain
    scalars); used where PyYAML is not installed, and checked against PyYAML where it is."""
    root: dict = {}
    stack = [(-1, root)]
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(": ") if ": " in line else (line.strip().rstrip(":"), ":", "")
        assert sep and indent % 2 == 0 and line.rstrip() == line, f"not block YAML: {line!r}"
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        if value == "":
            parent[key] = {}
            stack.append((indent, parent[key]))
        elif value.startswith("'"):
            assert value.endswith("'") and "'" not in value[1:-1].replace("''", ""), value
            parent[key] = value[1:-1].replace("''", "'")
        else:
            parent[key] = int(value) if value.isdigit() else value
    return root


def _csg_lines(path):
    """The .csg read back: by PyYAML (what CryoSPARC's tooling uses) when installed, else strictly."""
    text = path.read_text()
    parsed = _block_yaml(text)
    try:
        import yaml
    except ImportError:
        return parsed
    real = yaml.safe_load(text)
    assert {k: v for k, v in real.items() if k != "created"} == {k: v for k, v in parsed.items() if k != "created"}
    assert real["created"] == dt.datetime.strptime(parsed["created"], "%Y-%m-%d %H:%M:%S.%f")  # a YAML timestamp
    return real


def offline(*args):
    return external.main([args[0], "--offline", *args[1:]])


# -- .cs in -> job -> .cs + .csg out ----------------------------------------------------------------
def test_offline_round_trip_keeps_every_field_of_kept_rows(tmp_path, capsys):
    src_path = shared_path(*J2)
    out = tmp_path / "out"
    assert offline("select", "--particles", str(src_path), "--out", str(out), "--classes", "1,2",
                   "--write_rejected") == 0
    src = Dataset.load(src_path)
    sel, rej = Dataset.load(out / "particles_selected.cs"), Dataset.load(out / "particles_excluded.cs")
    keep = np.isin(np.asarray(src["alignments2D/class"]), [0, 1])
    assert np.array_equal(sel["uid"], np.asarray(src["uid"])[keep])  # same rows, same order, same uids
    assert np.array_equal(rej["uid"], np.asarray(src["uid"])[~keep])
    for part, mask in ((sel, keep), (rej, ~keep)):
        assert part.descr() == src.descr()  # every field, dtype and order of the input
        for f in src.fields():
            assert _same(part[f], np.asarray(src[f])[mask]), f
    assert np.load(out / "particles_selected.cs").shape == (13,)  # plain numpy format, as CryoSPARC writes

    csg = _csg_lines(out / "particles_selected.csg")
    assert csg["group"]["name"] == "particles_selected" and csg["group"]["type"] == "particle"
    assert "--classes 1,2" in csg["group"]["description"] and str(csg["version"]).startswith("v5.")
    assert sorted(csg["results"]) == ["alignments2D", "blob", "ctf"]
    for slot, r in csg["results"].items():
        assert r["type"] == f"particle.{slot}" and r["num_items"] == 13
        assert r["metafile"] == ">particles_selected.cs"  # '>' = next to the .csg
        assert slot in Dataset.load(out / r["metafile"][1:]).prefixes()
    # blob/path '>J1/imported/...' (an export) stays as it was; the stacks are not here: said so
    assert all(p.startswith(">J1/imported/") for p in sel["blob/path"])
    assert "not found: put it at" in capsys.readouterr().out


def test_offline_links_the_stacks_an_exported_group_refers_to(tmp_path):
    src = Dataset.load(shared_path(*J2))
    proj = tmp_path / "export"
    stacks = sorted({p[1:] for p in src["blob/path"]})
    for s in stacks:
        (proj / s).parent.mkdir(parents=True, exist_ok=True)
        (proj / s).write_bytes(b"")  # stand-ins for the exported stacks (select never reads images)
    src.save(proj / "P1_J2_particles_exported.cs")
    out = tmp_path / "out"
    assert offline("select", "--particles", str(proj / "P1_J2_particles_exported.cs"), "--out", str(out),
                   "--classes", "3") == 0
    kept = {p[1:] for p in Dataset.load(out / "particles_selected.cs")["blob/path"]}
    for s in kept:
        assert (out / s).is_symlink() and (out / s).resolve() == (proj / s).resolve()


def test_offline_joins_a_jobs_passthrough_file(tmp_path):
    """A job directory in CryoSPARC's layout: the job's own slot + *_passthrough_*.cs (joined on uid)."""
    full = Dataset.load(shared_path(*J2))
    job = tmp_path / "J7"
    job.mkdir()
    order = np.random.default_rng(3).permutation(len(full))
    full.filter_prefixes(["alignments2D"], copy=True).save(job / "J7_particles_selected.cs")
    full.filter_prefixes(["blob", "ctf"], copy=True).take(order).save(job / "J7_passthrough_particles_selected.cs")
    out = tmp_path / "out"
    assert offline("select", "--particles", str(job / "J7_particles_selected.cs"), "--out", str(out),
                   "--classes", "2") == 0
    back = Dataset.load(out / "particles_selected.cs")
    keep = np.asarray(full["alignments2D/class"]) == 1
    assert sorted(back.fields()) == sorted(full.fields()) and len(back) == keep.sum() == 7
    idx = {int(u): i for i, u in enumerate(full["uid"])}
    rows = np.array([idx[int(u)] for u in back["uid"]])
    for f in full.fields():
        assert _same(back[f], np.asarray(full[f])[rows]), f


def test_offline_failure_leaves_no_output(tmp_path, capsys):
    out = tmp_path / "out"
    # 2 = bad input in the ExitCode table (core/errors.py)
    assert offline("select", "--particles", str(shared_path(*J2)), "--out", str(out), "--classes", "1,x") == 2
    assert "parameter --classes: cannot read 'x'" in capsys.readouterr().err
    assert not list(out.glob("*.cs")) and not list(out.glob("*.csg"))
    assert offline("select", "--particles", str(tmp_path / "missing.cs"), "--out", str(out), "--classes", "1") == 2
    assert "missing.cs: file not found" in capsys.readouterr().err


@pytest.fixture
def scoring_job():
    def run_it(inputs, params, ctx):
        ps = inputs["particles"].copy()
        ps.table["cryolens/quality"] = np.where(np.arange(len(ps)) % 3 == 0, np.nan, np.arange(len(ps)) / 10.0)
        return JobResult(particles={"particles": ps})

    spec = register(JobSpec("standin_score", "test job: a score", (Input("particles", "particles", "p"),), (),
                            (Output("particles", "particles", "scored"),), run_it))
    yield spec
    REGISTRY.pop(spec.name, None)


@pytest.mark.parametrize("slot", ["pick_stats", "none"])
def test_scores_offline_go_to_pick_stats_and_the_side_car(tmp_path, scoring_job, slot):
    out = tmp_path / "out"
    assert offline("standin_score", "--particles", str(shared_path(*J2)), "--out", str(out),
                   "--score-slot", slot) == 0
    back = Dataset.load(out / "particles_selected.cs")
    assert "cryolens" not in back.prefixes()  # no field cryoSPARC would not know
    side = pd.read_csv(out / "cryolens_scores_particles_selected.csv")
    assert side["uid"].astype(np.uint64).tolist() == np.asarray(back["uid"]).tolist()
    assert side["cryolens/quality"].isna().sum() == 8
    csg = _csg_lines(out / "particles_selected.csg")
    if slot == "none":
        assert "pick_stats" not in back.prefixes() and "pick_stats" not in csg["results"]
        return
    score = np.asarray(back["pick_stats/ncc_score"])
    expected = side["cryolens/quality"].fillna(side["cryolens/quality"].min()).to_numpy(np.float32)
    np.testing.assert_array_equal(score, expected)  # unscored rows sort as the worst
    assert back["pick_stats/ncc_score"].dtype == np.float32 and back["pick_stats/template_idx"].dtype == np.uint32
    assert csg["results"]["pick_stats"]["type"] == "particle.pick_stats"


def test_csg_for_templates_and_a_custom_prefix(tmp_path):
    d = Dataset.allocate(3, [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/res_A", "<f4"), ("mine/x", "<f4")])
    d.save(tmp_path / "templates_selected.cs")
    csg = _csg_lines(write_csg(tmp_path / "templates_selected.cs", "templates_selected", "template",
                               "cryolens select: it's", "a 'quoted'\ndescription"))
    assert csg["group"] == {"name": "templates_selected", "type": "template", "title": "cryolens select: it's",
                            "description": "a 'quoted' description"}
    assert csg["results"] == {"blob": {"metafile": ">templates_selected.cs", "num_items": 3, "type": "template.blob"}}


# -- RELION <-> cryoSPARC: the same particles --------------------------------------------------------
CANON = ("image_index", "pixel_size", "voltage", "cs", "amp_contrast", "defocus_u", "defocus_v", "defocus_angle")


def test_star_to_cs_to_star_keeps_canonical_values_and_identity(tmp_path):
    from cryolens.relion_ext.star import read_particles as read_star

    star = shared_path(*EMPIAR_STAR)
    assert cryolens_main(["convert", str(star), str(tmp_path / "a.cs")]) == 0
    assert cryolens_main(["convert", str(tmp_path / "a.cs"), str(tmp_path / "b.star"),
                          "--project-dir", str(star.parent)]) == 0
    orig, back = read_star(star).table, read_star(tmp_path / "b.star").table
    assert back["image_stack"].tolist() == orig["image_stack"].tolist()
    for col in CANON:
        np.testing.assert_allclose(back[col].astype(float), orig[col].astype(float), rtol=2e-7, err_msg=col)
    # the converted .cs describes the particles as cryoSPARC's own import of them does (empiar_10076_7.cs)
    ours, theirs = read_particles(tmp_path / "a.cs").table, read_particles(shared_path(*EMPIAR_CS)).table
    assert ours["image_stack"].tolist() == theirs["image_stack"].tolist()
    for col in CANON:
        np.testing.assert_allclose(ours[col].astype(float), theirs[col].astype(float), rtol=2e-7, err_msg=col)


def test_cs_to_star_to_cs_keeps_uids_classes_and_in_plane_poses(tmp_path):
    src = shared_path(*J2)
    assert cryolens_main(["convert", str(src), str(tmp_path / "p.star")]) == 0
    assert cryolens_main(["convert", str(tmp_path / "p.star"), str(tmp_path / "p.cs")]) == 0
    a, b = Dataset.load(src), Dataset.load(tmp_path / "p.cs")
    assert np.array_equal(a["uid"], b["uid"])  # identity survives RELION (cryosparcUid)
    assert np.array_equal(a["alignments2D/class"], b["alignments2D/class"])  # 0-based -> 1-based -> 0-based
    assert np.array_equal(a["blob/idx"], b["blob/idx"])
    assert [p.lstrip(">") for p in a["blob/path"]] == [p.lstrip(">") for p in b["blob/path"]]
    d = np.mod(np.asarray(a["alignments2D/pose"], float) - np.asarray(b["alignments2D/pose"], float) + np.pi,
               2 * np.pi) - np.pi
    assert np.abs(d).max() < 1e-5  # in-plane radians (RELION psi in degrees in between)
    sa = np.asarray(a["alignments2D/shift"], float) * np.asarray(a["alignments2D/psize_A"])[:, None]
    sb = np.asarray(b["alignments2D/shift"], float) * np.asarray(b["alignments2D/psize_A"])[:, None]
    np.testing.assert_allclose(sa, sb, atol=1e-4)  # shifts: pixels at each alignment's psize_A
    np.testing.assert_allclose(a["ctf/df1_A"], b["ctf/df1_A"], rtol=1e-6)


def _templates(tmp_path):
    """A project with the 5 class averages of the real J2 particles (stack + templates .cs)."""
    import mrcfile

    proj = tmp_path / "proj"
    (proj / "J1").mkdir(parents=True)
    with mrcfile.new(proj / "J1" / "J1_020_class_averages.mrc") as m:
        m.set_data(np.zeros((5, 8, 8), dtype=np.float32))
        m.voxel_size = 1.345
    t = Dataset.allocate(5, [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                             ("blob/psize_A", "<f4"), ("blob/res_A", "<f4")])
    t["blob/path"] = np.array(["J1/J1_020_class_averages.mrc"] * 5, dtype=object)
    t["blob/idx"], t["blob/shape"], t["blob/res_A"] = np.arange(5), 8, [8, 12, 25, 9, 30]
    t.save(proj / "J1" / "J1_020_class_averages.cs")
    return proj, t


def test_offline_class_selection_writes_templates_and_their_group(tmp_path):
    proj, t = _templates(tmp_path)
    out = tmp_path / "out"
    assert offline("select", "--particles", str(shared_path(*J2)), "--classes-in",
                   str(proj / "J1" / "J1_020_class_averages.cs"), "--project-dir", str(proj), "--out", str(out),
                   "--classes", "1,5") == 0
    back = Dataset.load(out / "templates_selected.cs")
    assert np.array_equal(back["uid"], np.asarray(t["uid"])[[0, 4]])
    assert np.asarray(back["blob/res_A"]).tolist() == [8, 30]
    csg = _csg_lines(out / "templates_selected.csg")
    assert csg["group"]["type"] == "template" and csg["results"]["blob"]["type"] == "template.blob"
    side = pd.read_csv(out / "cryolens_classes_templates_selected.csv")
    assert side["selected"].tolist() == [1, 0, 0, 0, 1]
    assert len(Dataset.load(out / "particles_selected.cs")) == 6 + 4


@pytest.fixture
def class_scoring_job():
    def run_it(inputs, params, ctx):
        cs = inputs["classes"]
        ranked = cs.subset(cs.class_ids)
        ranked.table["quality"] = [0.9, 0.1, 0.5, np.nan, 0.7]  # class 4 unscored
        return JobResult(particles={"particles": cs.particles}, classes={"class_averages": ranked})

    spec = register(JobSpec("standin_rank", "test job: class scores", (Input("classes", "classes", "c"),), (),
                            (Output("class_averages", "classes", "ranked"),), run_it))
    yield spec
    REGISTRY.pop(spec.name, None)


def test_class_scores_reach_each_particle_and_the_class_side_car(tmp_path, class_scoring_job):
    proj, t = _templates(tmp_path)
    out = tmp_path / "out"
    assert offline("standin_rank", "--particles", str(shared_path(*J2)), "--classes-in",
                   str(proj / "J1" / "J1_020_class_averages.cs"), "--project-dir", str(proj), "--out", str(out)) == 0
    side = pd.read_csv(out / "cryolens_classes_templates_selected.csv")
    assert side["class_id"].tolist() == [1, 2, 3, 4, 5] and side["selected"].tolist() == [1] * 5
    np.testing.assert_allclose(side["quality"], [0.9, 0.1, 0.5, np.nan, 0.7])
    parts = Dataset.load(out / "particles_selected.cs")
    by_class = dict(zip(range(5), np.array([0.9, 0.1, 0.5, 0.1, 0.7], dtype=np.float32)))  # unscored = worst
    expected = np.array([by_class[int(c)] for c in parts["alignments2D/class"]], dtype=np.float32)
    np.testing.assert_array_equal(parts["pick_stats/ncc_score"], expected)
    assert "quality" not in Dataset.load(out / "templates_selected.cs").fields()
