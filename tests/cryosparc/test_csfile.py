"""cryoSPARC .cs I/O (cryosparc_ext.csfile) on real files: mapping, exact round trips, conventions."""
from __future__ import annotations

import pickle

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from cryosparc.dataset import Dataset

from conftest import shared_path
from cryolens.core.errors import InputError
from cryolens.core.geometry import angular_distance_deg, euler_to_matrix
from cryolens.core.particles import ClassSet, ParticleSet
from cryolens.cryosparc_ext.csfile import (SLOTS, derive_uids, find_passthrough_files, read_classes,
                                           read_particles, write_classes, write_particles)

J2 = ("cryosparc", "cryosparc_J2_particles_exported.cs")
P12 = ("cryosparc", "cryosparc_P12_J24_001_particles.cs")
EMPTY = ("cryosparc", "4k_dataset.cs")
EMPIAR = ("real-particles", "empiar_10076_7.cs")
REAL = {"J2": J2, "P12": P12, "empiar": EMPIAR, "4k": EMPTY}

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def _same_field(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical numbers, identical strings."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and bool((a == b).all())
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_same_by_uid(orig: Dataset, out: Dataset, skip=()) -> None:
    """Every field of ``orig`` is in ``out`` with its dtype; rows matched by uid are identical."""
    assert out.descr() == [f for f in orig.descr()], "fields/dtypes/order differ"
    where = {int(u): i for i, u in enumerate(orig["uid"])}
    rows = np.array([where[int(u)] for u in out["uid"]], dtype=np.int64)
    for f in orig.fields():
        if f in skip:
            continue
        assert _same_field(np.asarray(orig[f])[rows], out[f]), f


# -- reading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REAL))
def test_read_every_real_file(name):
    path = shared_path(*REAL[name])
    ps = read_particles(path)
    n = len(Dataset.load(path))
    assert isinstance(ps, ParticleSet) and len(ps) == n
    assert ps.table["uid"].dtype == np.uint64
    assert np.array_equal(ps.table["uid"].to_numpy(), np.asarray(Dataset.load(path)["uid"]))
    assert ps.meta["cryosparc"]["descr"] == [tuple(f) for f in Dataset.load(path).descr()]
    # array-valued fields never become pandas columns; every scalar column is a 1-D column
    assert not any(f[0] in ps.table.columns for f in Dataset.load(path).descr() if len(f) > 2)


def test_empty_real_header_reads_and_round_trips(tmp_path):
    path = shared_path(*EMPTY)
    ps = read_particles(path)
    assert len(ps) == 0
    for col in ("rot", "tilt", "psi", "shift_x", "class_id", "half_set", "micrograph", "coord_x", "coord_y",
                "pick_stats/ncc_score", "alignments_class_1/class_posterior", "quality_stats/slice_mse"):
        assert col in ps.table.columns, col
    assert ps.table["rot"].dtype == np.float64 and ps.table["pick_stats/ncc_score"].dtype == np.float32
    out = write_particles(ps, tmp_path / "empty.cs")
    assert Dataset.load(out).descr() == Dataset.load(path).descr()
    assert out.read_bytes() == path.read_bytes()  # the 4 KiB regression file, byte for byte


def test_field_mapping_spot_checks():
    cs = Dataset.load(shared_path(*EMPIAR))
    t = read_particles(shared_path(*EMPIAR)).table
    assert t["image_stack"].tolist() == ["empiar_10076_7.mrc"] * 7
    assert t["image_index"].tolist() == list(range(7))
    assert t["box"].tolist() == [320] * 7
    assert t["optics_group"].tolist() == [int(cs["ctf/exp_group_id"][0]) + 1] * 7 == [24] * 7
    assert t["defocus_u"][0] == np.float32(15301.1) and t["defocus_v"][0] == np.float32(14916.4)
    assert t["defocus_angle"][0] == pytest.approx(5.28, abs=1e-5)
    assert (t["voltage"] == 300).all() and (t["cs"] == np.float32(2.7)).all()
    assert t["pixel_size"][0] == pytest.approx(1.31, abs=1e-5)
    assert t["ctf/type"].tolist() == ["imported"] * 7  # unmapped scalar fields: columns by their names

    p12 = Dataset.load(shared_path(*P12))
    t = read_particles(shared_path(*P12)).table
    assert t["half_set"].value_counts().sort_index().tolist() == [1010, 1009]
    assert np.array_equal(t["half_set"], np.asarray(p12["alignments3D/split"]) + 1)
    np.testing.assert_array_equal(t["shift_x"], np.asarray(p12["alignments3D/shift"])[:, 0].astype(float)
                                  * np.asarray(p12["alignments3D/psize_A"]).astype(float))
    assert (t["voltage"] == 200).all() and (t["class_id"] == 1).all()
    assert np.allclose(t["defocus_angle"], np.rad2deg(np.asarray(p12["ctf/df_angle_rad"], dtype=float)))


def test_2d_classification_classes_and_inplane_angles():
    cs = Dataset.load(shared_path(*J2))
    t = read_particles(shared_path(*J2)).table
    assert np.array_equal(t["class_id"], np.asarray(cs["alignments2D/class"]).astype(np.int64) + 1)
    assert t["class_id"].value_counts().sort_index().tolist() == [6, 7, 2, 3, 4]
    psi = np.rad2deg(np.asarray(cs["alignments2D/pose"], dtype=np.float64))
    diff = np.mod(t["psi"].to_numpy() - psi + 180, 360) - 180
    assert np.abs(diff).max() < 1e-9 and t["psi"].between(-180, 180).all()
    shift = np.asarray(cs["alignments2D/shift"], dtype=np.float64) * np.asarray(cs["alignments2D/psize_A"])[:, None]
    np.testing.assert_array_equal(np.c_[t["shift_x"], t["shift_y"]], shift)
    assert not {"rot", "tilt", "half_set"} & set(t.columns)
    assert "alignments2D/class_posterior" in t.columns and "alignments2D/class_ess" in t.columns


# -- exact round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["J2", "P12", "empiar", "4k"])
def test_round_trip_is_exact(name, tmp_path):
    path = shared_path(*REAL[name])
    out = write_particles(read_particles(path), tmp_path / "out.cs")
    orig, back = Dataset.load(path), Dataset.load(out)
    _assert_same_by_uid(orig, back)
    assert np.array_equal(back["uid"], orig["uid"])  # same order too
    assert np.load(out).dtype.names == np.load(path).dtype.names  # numpy format, as CryoSPARC writes
    assert [p.name for p in tmp_path.iterdir()] == ["out.cs"]  # written atomically, nothing left over


@pytest.mark.parametrize("name", ["J2", "P12"])
def test_subset_round_trip_keeps_uids_and_values(name, tmp_path):
    path = shared_path(*REAL[name])
    ps = read_particles(path)
    pick = np.random.default_rng(0).permutation(len(ps))[: max(3, len(ps) // 3)]
    sub = ps.subset(pick)
    out = write_particles(sub, tmp_path / "sub.cs")
    back = Dataset.load(out)
    assert np.array_equal(back["uid"], ps.table["uid"].to_numpy()[pick])
    _assert_same_by_uid(Dataset.load(path), back)


def test_changed_canonical_fields_are_written_into_their_slots(tmp_path):
    path = shared_path(*P12)
    ps = read_particles(path)
    sub = ps.subset(np.arange(len(ps) - 1, 0, -3))
    t = sub.table
    t.loc[0, "rot"] += 10.0
    t.loc[1, "shift_x"] += 2.95  # one pixel
    t.loc[2, "class_id"] = 3
    t.loc[3, "defocus_u"] = 12345.0
    t.loc[4, "half_set"] = 2 if t.loc[4, "half_set"] == 1 else 1
    out = write_particles(sub, tmp_path / "changed.cs")
    orig, back = Dataset.load(path), Dataset.load(out)
    where = {int(u): i for i, u in enumerate(orig["uid"])}
    rows = np.array([where[int(u)] for u in back["uid"]])
    changed = {}
    for f in orig.fields():
        a, b = np.asarray(orig[f])[rows], np.asarray(back[f])
        diff = np.flatnonzero([not np.array_equal(x, y) for x, y in zip(a, b)])
        if len(diff):
            changed[f] = diff.tolist()
    assert changed == {"alignments3D/pose": [0], "alignments3D/shift": [1], "alignments3D/class": [2],
                       "ctf/df1_A": [3], "alignments3D/split": [4]}
    assert np.asarray(back["alignments3D/shift"])[1, 0] == pytest.approx(np.asarray(orig["alignments3D/shift"])[rows[1], 0] + 1)
    assert int(back["alignments3D/class"][2]) == 2 and float(back["ctf/df1_A"][3]) == 12345.0
    re = read_particles(out).table
    ang = angular_distance_deg(euler_to_matrix(re.loc[:0, ["rot", "tilt", "psi"]].to_numpy(float)),
                               euler_to_matrix(t.loc[:0, ["rot", "tilt", "psi"]].to_numpy(float)))
    assert ang.max() < 1e-3  # float32 rotation vector


def test_2d_set_that_gets_3d_poses_gains_an_alignments3D_slot(tmp_path):
    path = shared_path(*J2)
    ps = read_particles(path)
    ps.table["rot"], ps.table["tilt"] = 10.0, 20.0
    back = Dataset.load(write_particles(ps, tmp_path / "p.cs"))
    orig = Dataset.load(path)
    assert [f for f in back.descr() if f[0].startswith("alignments3D/")] == SLOTS["alignments3D"]
    for f in orig.fields():  # the 2D alignment and everything else stays as read
        assert _same_field(orig[f], back[f]), f
    re = read_particles(tmp_path / "p.cs").table
    assert np.allclose(re["rot"], 10, atol=1e-4) and np.allclose(re["tilt"], 20, atol=1e-4)
    assert np.allclose(np.mod(re["psi"] - ps.table["psi"] + 180, 360) - 180, 0, atol=1e-4)
    assert np.allclose(re["shift_x"], ps.table["shift_x"], atol=1e-5)


# -- conventions against real pairs ----------------------------------------------------------------
def test_empiar_cs_and_star_describe_the_same_particles():
    cs = read_particles(shared_path(*EMPIAR)).table
    star = starfile.read(shared_path("real-particles", "empiar_10076_7.star"))
    idx = star["rlnImageName"].str.split("@").str[0].astype(int)
    assert (cs["image_index"] + 1).tolist() == idx.tolist()  # blob/idx + 1 == star index
    assert set(cs["image_stack"]) == set(star["rlnImageName"].str.split("@").str[1])
    np.testing.assert_allclose(cs["defocus_u"], star["rlnDefocusU"], atol=5e-3)  # float32 in the .cs
    np.testing.assert_allclose(cs["defocus_v"], star["rlnDefocusV"], atol=5e-3)
    np.testing.assert_allclose(cs["defocus_angle"], star["rlnDefocusAngle"], atol=1e-4)
    np.testing.assert_allclose(cs["voltage"], star["rlnVoltage"])
    np.testing.assert_allclose(cs["cs"], star["rlnSphericalAberration"], rtol=1e-6)
    np.testing.assert_allclose(cs["amp_contrast"], star["rlnAmplitudeContrast"], rtol=1e-6)
    apix = star["rlnDetectorPixelSize"] * 1e4 / star["rlnMagnification"]
    np.testing.assert_allclose(cs["pixel_size"], apix, rtol=1e-6)
    # Coordinates: this pair carries none (no rlnCoordinateX/Y, rlnMicrographName is "1".."7"; the
    # .cs has no location slot), so the coordinate convention is tested on a location slot below.
    assert "rlnCoordinateX" not in star.columns and "coord_x" not in cs.columns


def test_empiar_cs_and_star_agree_through_the_relion_reader():
    star_mod = pytest.importorskip("cryolens.relion_ext.star")
    rel = star_mod.read_particles(shared_path("real-particles", "empiar_10076_7.star")).table
    cs = read_particles(shared_path(*EMPIAR)).table
    for col, tol in (("image_index", 0), ("defocus_u", 5e-3), ("defocus_v", 5e-3), ("defocus_angle", 1e-4),
                     ("voltage", 0), ("cs", 1e-6), ("amp_contrast", 1e-6), ("pixel_size", 1e-6)):
        np.testing.assert_allclose(cs[col].astype(float), rel[col].astype(float), atol=tol, err_msg=col)
    assert cs["image_stack"].tolist() == rel["image_stack"].tolist()


def test_p12_poses_match_cryodrgn_golden_rotations():
    """RELION Euler angles from the rotation vectors reproduce cryoDRGN's pose.cs.pkl (rot = expmap(pose)^T)."""
    ps = read_particles(shared_path(*P12))
    with open(shared_path("cryosparc", "pose.cs.pkl"), "rb") as fh:
        rot, trans = pickle.load(fh)
    A = euler_to_matrix(ps.table[["rot", "tilt", "psi"]].to_numpy(np.float64))
    err = angular_distance_deg(A, np.asarray(rot, dtype=np.float64))
    assert err.shape == (2019,)
    assert err.max() < 1e-3, f"max angle difference {err.max():.3g} deg"  # measured: 2.7e-5 deg (float32)
    # and a wrong convention (the transpose) is far off: the test can fail
    assert angular_distance_deg(np.swapaxes(A, 1, 2), np.asarray(rot, np.float64)).max() > 10
    px = np.c_[ps.table["shift_x"], ps.table["shift_y"]] / ps.table["pixel_size"].to_numpy()[:, None]
    np.testing.assert_allclose(px / 180, trans, atol=1e-6)  # cryoDRGN trans = shift / D, D = 180


def _location_dataset(n=3) -> Dataset:
    d = Dataset.allocate(n, [("uid", "<u8")] + SLOTS["location"])
    d["uid"][:] = np.arange(1, n + 1, dtype=np.uint64)
    d["location/micrograph_path"] = np.array([f"J3/motion/mic{i}.mrc" for i in range(n)], dtype=object)
    d["location/micrograph_shape"][:] = [4092, 5760]  # [ny, nx]: a K3 micrograph, wider than tall
    d["location/center_x_frac"][:] = np.linspace(0.1, 0.9, n, dtype=np.float32)
    d["location/center_y_frac"][:] = np.linspace(0.2, 0.7, n, dtype=np.float32)
    return d


def test_coordinate_convention_x_times_nx_y_times_ny_no_flip(tmp_path):
    d = _location_dataset()
    d.save(tmp_path / "loc.cs")
    t = read_particles(tmp_path / "loc.cs").table
    x, y = np.asarray(d["location/center_x_frac"], float), np.asarray(d["location/center_y_frac"], float)
    np.testing.assert_array_equal(t["coord_x"], x * 5760)  # shape[1] = nx
    np.testing.assert_array_equal(t["coord_y"], y * 4092)  # shape[0] = ny, not flipped
    assert t["micrograph"].tolist() == list(d["location/micrograph_path"])
    flipped = read_particles(tmp_path / "loc.cs", invert_y=True).table
    np.testing.assert_allclose(flipped["coord_y"], (1 - y) * 4092)
    # moved particles write their fractions back, in the convention they were read in
    for ps, yfrac in ((read_particles(tmp_path / "loc.cs"), 1000 / 4092),
                      (read_particles(tmp_path / "loc.cs", invert_y=True), 1 - 1000 / 4092)):
        ps.table.loc[0, ["coord_x", "coord_y"]] = [2880.0, 1000.0]
        back = Dataset.load(write_particles(ps, tmp_path / "moved.cs"))
        assert float(back["location/center_x_frac"][0]) == pytest.approx(0.5, abs=1e-7)
        assert float(back["location/center_y_frac"][0]) == pytest.approx(yfrac, abs=1e-7)
        assert _same_field(np.asarray(back["location/center_y_frac"])[1:], np.asarray(d["location/center_y_frac"])[1:])


def test_relion_origin_coordinates_need_the_micrographs(tmp_path):
    mic = tmp_path / "MotionCorr" / "m1.mrc"
    mic.parent.mkdir()
    with mrcfile.new(mic) as m:
        m.set_data(np.zeros((60, 90), dtype=np.int8))  # ny = 60, nx = 90
        m.voxel_size = 1.5
    t = pd.DataFrame({"image_stack": ["Extract/p.mrcs"] * 2, "image_index": [0, 1],
                      "micrograph": ["MotionCorr/m1.mrc"] * 2, "coord_x": [45.0, 9.0], "coord_y": [30.0, 6.0],
                      "pixel_size": [1.5, 1.5], "box": [32, 32]})
    back = Dataset.load(write_particles(ParticleSet(t, root=tmp_path), tmp_path / "r.cs"))
    np.testing.assert_array_equal(back["location/micrograph_shape"], [[60, 90], [60, 90]])
    np.testing.assert_allclose(back["location/center_x_frac"], [0.5, 0.1], rtol=1e-6)
    np.testing.assert_allclose(back["location/center_y_frac"], [0.5, 0.1], rtol=1e-6)
    assert float(back["location/micrograph_psize_A"][0]) == pytest.approx(1.5)
    re = read_particles(tmp_path / "r.cs", project_dir=tmp_path).table
    np.testing.assert_allclose(re[["coord_x", "coord_y"]], t[["coord_x", "coord_y"]], rtol=1e-6)
    with pytest.warns(UserWarning, match="coordinates not in cryoSPARC.s location fields"):
        out = write_particles(ParticleSet(t, root=tmp_path / "elsewhere"), tmp_path / "r2.cs")
    assert not any(f.startswith("location/") for f in Dataset.load(out).fields())


# -- RELION-origin particles, uids, the '>' prefix -------------------------------------------------
def test_relion_origin_particles_get_deterministic_uids(tmp_path):
    star_mod = pytest.importorskip("cryolens.relion_ext.star")
    star_path = shared_path("real-particles", "empiar_10076_7.star")
    a = Dataset.load(write_particles(star_mod.read_particles(star_path), tmp_path / "a.cs"))
    b = Dataset.load(write_particles(star_mod.read_particles(star_path), tmp_path / "b.cs"))
    ps = star_mod.read_particles(star_path)
    assert np.array_equal(a["uid"], b["uid"]) and len(set(a["uid"].tolist())) == 7
    assert np.array_equal(a["uid"], derive_uids(ps.image_keys()))
    assert derive_uids(["0@x.mrcs"])[0] != derive_uids(["1@x.mrcs"])[0]
    # the same particles that cryoSPARC itself imported (empiar_10076_7.cs): same CTF, index, box
    real = Dataset.load(shared_path(*EMPIAR))
    for f in ("blob/path", "blob/idx", "blob/shape", "ctf/accel_kv", "ctf/amp_contrast", "ctf/df1_A",
              "ctf/df2_A", "ctf/df_angle_rad", "blob/psize_A", "ctf/type", "blob/sign"):
        assert _same_field(a[f], real[f]), f
    np.testing.assert_allclose(a["ctf/cs_mm"], real["ctf/cs_mm"])
    assert np.load(tmp_path / "a.cs").shape == (7,)  # plain numpy format


def test_blob_path_prefix_round_trip(tmp_path):
    path = shared_path(*J2)
    orig = Dataset.load(path)
    assert all(p.startswith(">") for p in orig["blob/path"])
    ps = read_particles(path)
    assert not ps.table["image_stack"].str.startswith(">").any()
    assert ps.meta["cryosparc"]["blob_path_prefix"] == ">"
    ps.table.loc[0, "image_stack"] = "J9/other.mrcs"
    back = Dataset.load(write_particles(ps, tmp_path / "p.cs"))
    assert back["blob/path"][0] == ">J9/other.mrcs"
    assert list(back["blob/path"][1:]) == list(orig["blob/path"][1:])
    plain = read_particles(shared_path(*EMPIAR))  # no prefix in, none out
    assert not Dataset.load(write_particles(plain, tmp_path / "e.cs"))["blob/path"][0].startswith(">")


def test_uids_that_lost_precision_are_refused(tmp_path):
    ps = read_particles(shared_path(*P12))
    ps.table["uid"] = ps.table["uid"].astype(float)
    with pytest.raises(InputError, match="lost precision"):
        write_particles(ps, tmp_path / "x.cs")


# -- passthrough files ---------------------------------------------------------------------------
def test_passthrough_files_are_found_joined_and_written_back(tmp_path):
    full = Dataset.load(shared_path(*P12))
    job = tmp_path / "J24"
    job.mkdir()
    main_fields = ["uid"] + [f for f in full.fields() if f.startswith("alignments3D/")]
    keep = np.arange(0, len(full), 2)  # the job's own output is a subset; passthrough has everything
    full.filter_fields(main_fields, copy=True).take(keep).save(job / "cryosparc_P12_J24_001_particles.cs")
    pt = full.filter_fields(["uid"] + [f for f in full.fields() if f not in main_fields], copy=True)
    pt.take(np.random.default_rng(1).permutation(len(full))).save(job / "P12_J24_passthrough_particles.cs")
    Dataset.allocate(1, [("uid", "<u8")]).save(job / "J7_passthrough_particles.cs")  # another job's
    assert find_passthrough_files(job / "cryosparc_P12_J24_001_particles.cs") == [job / "P12_J24_passthrough_particles.cs"]
    ps = read_particles(job / "cryosparc_P12_J24_001_particles.cs")
    assert ps.meta["cryosparc"]["passthrough_files"] == [str(job / "P12_J24_passthrough_particles.cs")]
    ref = read_particles(shared_path(*P12)).subset(keep)
    assert sorted(ps.table.columns) == sorted(ref.table.columns)
    pd.testing.assert_frame_equal(ps.table[ref.table.columns], ref.table, check_dtype=True)
    # written back as one file: the joined dataset; as two files: CryoSPARC's layout
    one = Dataset.load(write_particles(ps, tmp_path / "one.cs"))
    assert set(one.fields()) == set(full.fields())
    main, pthru = tmp_path / "main.cs", tmp_path / "pt.cs"
    write_particles(ps, main, passthrough_out=pthru)
    assert Dataset.load(main).fields() == main_fields
    assert Dataset.load(pthru).fields() == pt.fields()
    assert np.array_equal(Dataset.load(pthru)["uid"], Dataset.load(main)["uid"])
    no_pt = read_particles(job / "cryosparc_P12_J24_001_particles.cs", find_passthrough=False)
    assert "blob/sign" not in no_pt.table.columns and "image_stack" not in no_pt.table.columns


def test_passthrough_naming_variants(tmp_path):
    names = ["J61_020_particles.cs", "J61_passthrough_particles.cs", "particles_selected.cs",
             "P88_J181_passthrough_particles_selected.cs", "cryosparc_P25_J14_00000_particles.cs",
             "cryosparc_P25_J14_passthrough_particles_all_classes.cs"]
    for sub, pair in (("a", names[0:2]), ("b", names[2:4]), ("c", names[4:6])):
        (tmp_path / sub).mkdir()
        for n in pair:
            (tmp_path / sub / n).write_bytes(b"")
        assert find_passthrough_files(tmp_path / sub / pair[0]) == [tmp_path / sub / pair[1]]
        assert find_passthrough_files(tmp_path / sub / pair[1]) == []


def test_a_passthrough_file_of_other_particles_is_an_error(tmp_path):
    full = Dataset.load(shared_path(*P12))
    full.filter_fields(["uid", "alignments3D/pose"], copy=True).take(np.arange(10)).save(tmp_path / "m.cs")
    full.filter_fields(["uid", "blob/path"], copy=True).take(np.arange(5, 20)).save(tmp_path / "pt.cs")
    with pytest.raises(InputError, match="5 of 10 particles"):
        read_particles(tmp_path / "m.cs", passthrough=[tmp_path / "pt.cs"])


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(InputError, match="file not found") as err:
        read_particles(tmp_path / "nope.cs")
    assert "nope.cs" in str(err.value)
    (tmp_path / "text.cs").write_text("data_\nloop_\n_rlnImageName #1\n")
    with pytest.raises(InputError, match="not a cryoSPARC particle dataset"):
        read_particles(tmp_path / "text.cs")
    np.save(tmp_path / "plain.npy", np.zeros((3, 3)))  # numpy, but no named fields
    with pytest.raises(InputError, match="not a cryoSPARC particle dataset"):
        read_particles(tmp_path / "plain.npy")
    with open(tmp_path / "nouid.cs", "wb") as fh:
        np.save(fh, np.zeros(2, dtype=[("blob/idx", "<u4")]))
    with pytest.raises(InputError, match="no 'uid' field"):
        read_particles(tmp_path / "nouid.cs")
    with pytest.raises(InputError, match="missing field blob/path"):
        read_classes(shared_path(*EMPTY))
    with pytest.raises(InputError, match="not a file"):
        read_particles(tmp_path)


# -- 2D classes ------------------------------------------------------------------------------------
def _j2_templates(project):
    """A template dataset for the 5 classes of the real J2 particles, with a class-average stack."""
    k, box = 5, 24
    imgs = np.random.default_rng(2).standard_normal((k, box, box)).astype(np.float32)
    (project / "J2").mkdir(parents=True)
    with mrcfile.new(project / "J2" / "J2_020_class_averages.mrc") as m:
        m.set_data(imgs)
        m.voxel_size = 1.345
    d = Dataset.allocate(k, [("uid", "<u8")] + [tuple(f) for f in [("blob/path", "O"), ("blob/idx", "<u4"),
                                                                    ("blob/shape", "<u4", (2,)),
                                                                    ("blob/psize_A", "<f4"), ("blob/res_A", "<f4")]])
    order = np.array([3, 0, 4, 1, 2])  # rows need not be in class order
    d["uid"][:] = np.arange(100, 100 + k, dtype=np.uint64)
    d["blob/path"] = np.array([">J2/J2_020_class_averages.mrc"] * k, dtype=object)
    d["blob/idx"][:] = order
    d["blob/shape"][:] = box
    d["blob/psize_A"][:] = 1.345
    d["blob/res_A"][:] = np.array([12.5, 30.0, 9.0, 15.0, 40.0], dtype=np.float32)
    d.save(project / "J2" / "J2_020_class_averages.cs")
    return project / "J2" / "J2_020_class_averages.cs", imgs, order


def test_read_classes_membership_statistics_and_images(tmp_path):
    tpl, imgs, order = _j2_templates(tmp_path)
    parts = Dataset.load(shared_path(*J2))
    cls = read_classes(tpl, shared_path(*J2), project_dir=tmp_path)
    assert isinstance(cls, ClassSet) and len(cls) == 5 and cls.pixel_size == pytest.approx(1.345)
    assert cls.table["class_id"].tolist() == (order + 1).tolist()
    np.testing.assert_array_equal(cls.images, imgs[order])
    assert cls.table["resolution"].tolist() == [12.5, 30.0, 9.0, 15.0, 40.0]
    assert cls.table["image_stack"].tolist() == ["J2/J2_020_class_averages.mrc"] * 5
    c = np.asarray(parts["alignments2D/class"])
    for _, row in cls.table.iterrows():
        members = c == row["class_id"] - 1
        assert row["n_particles"] == members.sum()
        assert row["distribution"] == pytest.approx(members.sum() / len(c))
        assert row["posterior"] == pytest.approx(np.asarray(parts["alignments2D/class_posterior"])[members].mean())
        assert row["ess"] == pytest.approx(np.asarray(parts["alignments2D/class_ess"])[members].mean())
    assert cls.counts().sort_index().tolist() == [6, 7, 2, 3, 4]
    assert len(cls.members(5)) == 4
    # written back: the same template dataset, bit for bit, '>' included
    out = write_classes(cls, tmp_path / "J2" / "out.cs")
    _assert_same_by_uid(Dataset.load(tpl), Dataset.load(out))
    sel = write_classes(cls.subset([1, 2]), tmp_path / "J2" / "sel.cs")
    assert sorted(Dataset.load(sel)["blob/idx"].tolist()) == [0, 1]


def test_read_classes_without_particles_or_images(tmp_path):
    tpl, _, _ = _j2_templates(tmp_path)
    cls = read_classes(tpl, project_dir=tmp_path, load_images=False)
    assert cls.images is None and cls.particles is None and "n_particles" not in cls.table.columns


def test_write_classes_from_images_only(tmp_path):
    imgs = np.random.default_rng(3).standard_normal((3, 16, 16)).astype(np.float32)
    cls = ClassSet(pd.DataFrame({"class_id": [1, 2, 3], "resolution": [8.0, 9.0, 10.0]}), imgs, 2.0)
    (tmp_path / "J5").mkdir()
    out = write_classes(cls, tmp_path / "J5" / "J5_class_averages.cs", project_dir=tmp_path)
    d = Dataset.load(out)
    assert list(d["blob/path"]) == ["J5/J5_class_averages.mrc"] * 3 and d["blob/idx"].tolist() == [0, 1, 2]
    assert d["blob/shape"].tolist() == [[16, 16]] * 3 and np.allclose(d["blob/res_A"], [8, 9, 10])
    back = read_classes(out, project_dir=tmp_path)
    np.testing.assert_array_equal(back.images, imgs)
    assert back.pixel_size == pytest.approx(2.0)
