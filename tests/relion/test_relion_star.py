"""RELION particle STAR I/O on real files: every flavour, exact round trips, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA, shared_path
from cryolens.core.errors import InputError
from cryolens.relion_ext.star import read_blocks, read_particles, write_particles

REAL_STARS = [
    "relion-conventions/betagal_tutorial_particles.star",
    "relion-conventions/relion_proj_batch.star",
    "relion-conventions/rln_proj_64.star",
    "relion-conventions/rln_proj_65_shifted.star",
    "relion-conventions/sample_particles_relion30.star",
    "relion-conventions/sample_particles_relion31.star",
    "relion-conventions/sample_relion_symmetry_group_D4.star",
    "real-particles/relion31.6opticsgroups.star",
    "real-particles/relion31.star",
    "real-particles/relion5.star",
    "real-particles/empiar_10076_7.star",
    "real-particles/FinalRefinement-OriginalParticles-PfCRT.star",
    "real-particles/sta_testing.star",
    "relion-projects/relion-class2d-betagal/ap_s_c2d.star",
]


def _same_values(a: pd.Series, b: pd.Series) -> bool:
    na, nb = pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")
    if na.notna().all() and nb.notna().all():
        return np.array_equal(na.to_numpy(float), nb.to_numpy(float))
    return (a.astype(str).to_numpy() == b.astype(str).to_numpy()).all()


@pytest.mark.parametrize("rel", REAL_STARS)
def test_round_trip_gives_back_every_value_in_order(rel, tmp_path):
    path = shared_path(*rel.split("/"))
    ps = read_particles(path)
    out = tmp_path / "out.star"
    write_particles(ps, out)
    a, b = read_blocks(path), read_blocks(out)
    a_loops = [v for v in a.values() if isinstance(v, pd.DataFrame)]
    b_loops = [v for v in b.values() if isinstance(v, pd.DataFrame)]
    assert len(a_loops) == len(b_loops)
    for ta, tb in zip(a_loops, b_loops):
        assert list(ta.columns) == list(tb.columns)
        assert len(ta) == len(tb)
        for col in ta.columns:
            assert _same_values(ta[col], tb[col]), f"{rel}: column {col} changed"


@pytest.mark.parametrize("rel,version", [
    ("real-particles/FinalRefinement-OriginalParticles-PfCRT.star", "3.0"),
    ("relion-conventions/betagal_tutorial_particles.star", "3.1"),
    ("real-particles/relion5.star", "5.0"),
])
def test_version_detection(rel, version):
    assert read_particles(shared_path(*rel.split("/"))).meta["relion"]["version"] == version


def test_several_optics_groups_give_per_particle_optics():
    ps = read_particles(shared_path("real-particles", "relion31.6opticsgroups.star"))
    t = ps.table
    assert sorted(t["optics_group"].unique()) == [1, 2, 3, 4, 5, 6]
    assert set(t.loc[t.optics_group == 2, "pixel_size"]) == {1.24}
    assert set(t.loc[t.optics_group == 4, "cs"]) == {2.6}
    assert (t["box"] == 196).all()


def test_image_name_parsing_and_widths(tmp_path):
    ps = read_particles(shared_path("relion-conventions", "betagal_tutorial_particles.star"))
    assert ps.table["image_index"].iloc[0] == 0  # 000001@ -> 0-based 0
    assert ps.meta["relion"]["name_width"] == 6
    write_particles(ps, tmp_path / "v5.star", version="5.0")
    text = (tmp_path / "v5.star").read_text()
    assert "# version 50001" in text and "00000001@Extract/job018" in text
    back = read_particles(tmp_path / "v5.star")
    assert back.meta["relion"]["version"] == "5.0"
    assert back.image_keys().equals(ps.image_keys())
    # unpadded indices (seen in a real RELION 5 star) stay unpadded
    r5 = read_particles(shared_path("real-particles", "relion5.star"))
    assert r5.meta["relion"]["name_width"] == 0


def test_version_conversions_keep_canonical_values(tmp_path):
    ps = read_particles(shared_path("real-particles", "relion31.6opticsgroups.star"))
    for version in ("3.0", "3.1", "5.0"):
        write_particles(ps, tmp_path / f"{version}.star", version=version)
        back = read_particles(tmp_path / f"{version}.star")
        assert back.meta["relion"]["version"] == version
        for col in ps.canonical_columns:
            assert _same_values(ps.table[col], back.table[col]), (version, col)


def test_pixel_origins_become_angstrom_and_changed_values_are_written_in_pixels(tmp_path):
    ps = read_particles(shared_path("relion-conventions", "relion_proj_batch.star"))
    # this file has both rlnOriginX (px) and rlnOriginXAngst: canonical comes from Angstrom
    assert ps.table["shift_x"].iloc[0] == pytest.approx(-11.69620)
    ps.table.loc[0, "shift_x"] = 3.54 * 2
    write_particles(ps, tmp_path / "o.star")
    parts = read_blocks(tmp_path / "o.star")["particles"]
    assert parts["rlnOriginX"].iloc[0] == pytest.approx(2.0)
    assert parts["rlnOriginX"].iloc[1] == pytest.approx(2.695988)  # untouched row: verbatim
    old = read_particles(shared_path("relion-conventions", "rln_proj_64_shifted.star"))
    assert old.table["shift_x"].tolist() == [6.0, 10.0, -8.0, -13.0]  # 1 A/px, pixel columns


def test_paths_are_relative_to_the_project_directory(tmp_path, monkeypatch):
    star = shared_path("relion-conventions", "rln_proj_64.star")
    monkeypatch.chdir(tmp_path)
    ps = read_particles(star)
    assert ps.root == star.parent.resolve()
    assert (ps.root / ps.table["image_stack"].iloc[0]).exists()


def test_subset_then_write_keeps_only_chosen_rows(tmp_path):
    ps = read_particles(shared_path("relion-projects", "relion-class2d-betagal", "ap_s_c2d.star"))
    sub = ps.subset(ps.table["class_id"].isin([51, 70]).to_numpy())
    write_particles(sub, tmp_path / "sel.star")
    back = read_particles(tmp_path / "sel.star")
    assert len(back) == int(ps.table["class_id"].isin([51, 70]).sum())
    assert set(back.table["class_id"]) == {51, 70}
    assert back.image_keys().tolist() == sub.image_keys().tolist()


# -- bad input: one line naming the file, nothing written -----------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.star: file not found"):
        read_particles(tmp_path / "nope.star")


def test_malformed_star_is_a_clear_error():
    path = shared_path("relion-conventions", "sample.star")
    with pytest.raises(InputError) as err:
        read_particles(path)
    assert "sample.star" in str(err.value) and "cannot parse" in str(err.value)


def test_missing_image_name_column(tmp_path):
    p = tmp_path / "x.star"
    p.write_text("data_particles\n\nloop_\n_rlnDefocusU #1\n_rlnDefocusV #2\n10000 10000\n")
    with pytest.raises(InputError, match="x.star: missing column rlnImageName"):
        read_particles(p)


@pytest.mark.parametrize("value", ["nan", "inf", "-nan"])
def test_non_finite_values_are_refused(tmp_path, value):
    p = tmp_path / "bad.star"
    p.write_text("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnImageSize #3\n1 1.0 64\n\n"
                 "data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnOpticsGroup #3\n"
                 f"000001@s.mrcs 10000 1\n000002@s.mrcs {value} 1\n")
    with pytest.raises(InputError) as err:
        read_particles(p)
    assert "bad.star" in str(err.value) and "rlnDefocusU" in str(err.value) and "particle 2" in str(err.value)


def test_unknown_optics_group(tmp_path):
    p = tmp_path / "og.star"
    p.write_text("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 1.0\n\n"
                 "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n000001@s.mrcs 3\n")
    with pytest.raises(InputError, match=r"og.star: particles refer to optics group\(s\) \[3\]"):
        read_particles(p)


def test_reading_never_modifies_the_input(tmp_path):
    src = shared_path("real-particles", "relion31.star")
    before = src.read_bytes()
    ps = read_particles(src)
    write_particles(ps, tmp_path / "o.star")
    assert src.read_bytes() == before


def test_shared_data_location_is_beside_the_repo():
    assert SHARED_DATA.name == "data" and SHARED_DATA.parent.name == "shared"
