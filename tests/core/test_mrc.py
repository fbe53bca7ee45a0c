"""core.mrc: round trips, header conventions, bad files, and real maps/stacks from ../shared/data."""
from __future__ import annotations

import bz2
import gzip
import warnings

import mrcfile
import numpy as np
import pytest

from cryolens.core import mrc
from cryolens.core.errors import InputError


def _rng():
    return np.random.default_rng(0)


# -- round trips -----------------------------------------------------------------------------
def test_map_round_trip(tmp_path):
    vol = _rng().standard_normal((12, 10, 8)).astype(np.float32)
    path = tmp_path / "m.mrc"
    mrc.write_map(path, vol, 1.37)
    data, vox = mrc.read_map(path)
    assert data.dtype == np.float32 and data.shape == (12, 10, 8)
    np.testing.assert_array_equal(data, vol)
    assert vox == pytest.approx(1.37)
    with mrcfile.open(path) as m:  # a valid, strict MRC2014 volume
        assert int(m.header.ispg) == 1 and int(m.header.mode) == 2 and m.is_volume()
        assert float(m.header.dmean) == pytest.approx(float(vol.mean()), abs=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["m.mrc"]  # no temporary left behind


def test_stack_round_trip_has_relion_stack_header(tmp_path):
    imgs = _rng().standard_normal((5, 16, 16)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    mrc.write_stack(path, imgs, 2.5)
    info = mrc.stack_info(path)
    assert (info.n, info.ny, info.nx, info.pixel_size, info.dtype) == (5, 16, 16, 2.5, np.dtype("<f4"))
    mm = mrc.open_stack(path)
    assert mm.shape == (5, 16, 16) and not mm.flags.writeable
    np.testing.assert_array_equal(mm, imgs)
    with mrcfile.open(path) as m:
        h = m.header
        assert (int(h.ispg), int(h.mz), int(h.nz), int(h.mode)) == (0, 1, 5, 2) and m.is_image_stack()
        assert float(h.cella.x) == pytest.approx(40.0) and float(h.rms) == pytest.approx(float(imgs.std()), rel=1e-4)


def test_single_image_is_a_stack_of_one(tmp_path):
    img = _rng().standard_normal((8, 8)).astype(np.float32)
    mrc.write_stack(tmp_path / "one.mrcs", img, 1.0)
    np.testing.assert_array_equal(mrc.open_stack(tmp_path / "one.mrcs")[0], img)
    with mrcfile.new(tmp_path / "img.mrc") as m:  # a 2D .mrc image is accepted too
        m.set_data(img)
    assert mrc.open_stack(tmp_path / "img.mrc").shape == (1, 8, 8)


def test_stack_writer_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with mrc.stack_writer(tmp_path / "x.mrcs", (3, 4, 4), 1.0) as out:
            out[0] = 1
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_zero_pixel_size_is_none(tmp_path):
    mrc.write_map(tmp_path / "m.mrc", np.zeros((4, 4, 4), np.float32), None)
    assert mrc.read_map(tmp_path / "m.mrc")[1] is None
    mrc.write_stack(tmp_path / "s.mrcs", np.zeros((2, 4, 4), np.float32), 0)
    assert mrc.stack_info(tmp_path / "s.mrcs").pixel_size is None


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16])
def test_other_modes_read_as_float32(tmp_path, dtype):
    ints = _rng().integers(-100 if np.dtype(dtype).kind != "u" else 0, 100, (3, 6, 6))
    path = tmp_path / "s.mrcs"
    with mrcfile.new(path) as m:
        m.set_data(ints.astype(dtype))
        m.set_image_stack()
    assert mrc.stack_info(path).dtype == np.dtype(dtype)
    path2 = tmp_path / "v.mrc"
    with mrcfile.new(path2) as m:
        m.set_data(ints.astype(dtype))
    data, _ = mrc.read_map(path2)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, ints.astype(np.float32))


def test_big_endian_stack(tmp_path):
    imgs = _rng().standard_normal((2, 4, 4)).astype(">f4")
    path = tmp_path / "be.mrcs"
    with mrcfile.new(path) as m:
        m.set_data(imgs)
    info = mrc.stack_info(path)
    assert info.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(np.asarray(mrc.open_stack(path), np.float32), imgs.astype(np.float32))


def test_axis_order_is_applied(tmp_path):
    """A map stored with z fastest (mapc=3, mapr=1, maps=2) comes back in (z, y, x) order."""
    vol = _rng().standard_normal((5, 6, 7)).astype(np.float32)  # (z, y, x)
    path = tmp_path / "t.map"
    with mrcfile.new(path) as m:
        m.set_data(np.ascontiguousarray(vol.transpose(1, 2, 0)))  # file[s=y, r=x, c=z]
        m.header.mapc, m.header.mapr, m.header.maps = 3, 1, 2
        m.header.mx, m.header.my, m.header.mz = 7, 6, 5  # cell sampling along x, y, z
        m.header.cella = (7.0, 6.0, 5.0)
    info = mrc.map_info(path)
    assert info.shape == (5, 6, 7) and info.axis_order == (3, 1, 2)
    data, vox = mrc.read_map(path)
    np.testing.assert_array_equal(data, vol)
    assert vox == 1.0


def test_3d_mrc_is_a_volume_unless_asked(tmp_path):
    mrc.write_map(tmp_path / "v.mrc", np.zeros((4, 6, 6), np.float32), 1.0)
    with pytest.raises(InputError, match="v.mrc.*as_stack=True"):
        mrc.open_stack(tmp_path / "v.mrc")
    assert mrc.open_stack(tmp_path / "v.mrc", as_stack=True).shape == (4, 6, 6)


# -- bad files -------------------------------------------------------------------------------
def _missing(tmp_path):
    return tmp_path / "missing.mrcs"


def _tiny(tmp_path):
    p = tmp_path / "tiny.mrcs"
    p.write_bytes(b"MAP \x00\x01")
    return p


def _text(tmp_path):
    p = tmp_path / "notes.mrcs"
    p.write_text("# provenance notes\n" * 200)
    return p


def _garbage(tmp_path):
    p = tmp_path / "garbage.mrcs"
    p.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return p


def _truncated(tmp_path):
    p = tmp_path / "cut.mrcs"
    mrc.write_stack(p, np.ones((10, 16, 16), np.float32), 1.0)
    with open(p, "r+b") as f:
        f.truncate(1024 + 9 * 16 * 16 * 4 + 100)
    return p


def _complex(tmp_path):
    p = tmp_path / "complex.mrcs"
    with mrcfile.new(p) as m:
        m.set_data(np.ones((2, 4, 4), np.complex64))
    return p


BAD = [(_missing, "not found"), (_tiny, "not an MRC file"), (_text, "not an MRC file"),
       (_garbage, "not an MRC file"), (_truncated, "truncated"), (_complex, "unsupported MRC mode 4")]


@pytest.mark.parametrize("reader", [mrc.read_map, mrc.stack_info, mrc.open_stack, mrc.map_info])
@pytest.mark.parametrize("make,problem", BAD, ids=[b[0].__name__.strip("_") for b in BAD])
def test_bad_files_give_input_error_naming_the_file(tmp_path, reader, make, problem):
    path = make(tmp_path)
    with pytest.raises(InputError) as exc:
        reader(path)
    msg = str(exc.value)
    assert path.name in msg and problem in msg and "\n" not in msg
    assert exc.value.path == str(path)


def test_compressed_maps_read_but_stacks_refused(tmp_path):
    vol = _rng().standard_normal((6, 6, 6)).astype(np.float32)
    mrc.write_map(tmp_path / "v.mrc", vol, 2.0)
    raw = (tmp_path / "v.mrc").read_bytes()
    (tmp_path / "v.mrc.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "v.mrc.bz2").write_bytes(bz2.compress(raw))
    for name in ("v.mrc.gz", "v.mrc.bz2"):
        data, vox = mrc.read_map(tmp_path / name)
        np.testing.assert_array_equal(data, vol)
        assert vox == 2.0
        with pytest.raises(InputError, match=f"{name}: compressed image stack"):
            mrc.stack_info(tmp_path / name)
    (tmp_path / "cut.mrc.gz").write_bytes(gzip.compress(raw)[:-40])
    with pytest.raises(InputError, match="cut.mrc.gz"):
        mrc.read_map(tmp_path / "cut.mrc.gz")


def test_non_cubic_voxels_are_refused_unless_not_strict(tmp_path):
    path = tmp_path / "aniso.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 4, 4), np.float32))
        m.voxel_size = (1.0, 1.0, 2.0)
    with pytest.raises(InputError, match="aniso.mrc.*cubic"):
        mrc.read_map(path)
    assert mrc.read_map(path, strict=False)[1] == 1.0


# -- real files (../shared/data) -------------------------------------------------------------
MAPS = [("maps/EMD-3197.map", (20, 20, 20), 11.4), ("maps/trpv1_volume.mrc", (48, 48, 48), 4.88),
        ("maps/ribosome_4ug0_scattering_potential_from_cistem.mrc", (80, 80, 80), 4.0),
        ("relion-conventions/clean70SRibosome_vol_65p.mrc", (65, 65, 65), None)]


@pytest.mark.shared
@pytest.mark.parametrize("rel,shape,vox", MAPS)
def test_real_maps(shared_data, rel, shape, vox):
    data, v = mrc.read_map(shared_data / rel)
    assert data.shape == shape and data.dtype == np.float32 and v == vox
    np.testing.assert_array_equal(data, mrcfile.read(shared_data / rel))


@pytest.mark.shared
def test_real_crystallographic_map_emd3001(shared_data):
    """P2_1 map, non-cubic voxels, beta 94.3 deg, stored with z fastest (mapc/mapr/maps = 3/1/2)."""
    path = shared_data / "maps" / "EMD-3001.map"
    info = mrc.map_info(path)
    assert info.shape == (73, 25, 43) and info.space_group == 4 and info.axis_order == (3, 1, 2)
    assert info.voxel_size_xyz == pytest.approx((17.93 / 40, 4.71 / 12, 33.03 / 72), rel=1e-4)
    assert info.cell_angles[1] == pytest.approx(94.326, abs=1e-3) and not info.orthogonal
    with pytest.raises(InputError, match="EMD-3001.map.*cubic"):
        mrc.read_map(path)
    data, _ = mrc.read_map(path, strict=False)
    np.testing.assert_array_equal(data, mrcfile.read(path).transpose(2, 0, 1))


STACKS = [("real-particles/relion31.mrcs", (5, 256, 256), 1.0),  # no MAP id, zero machine stamp
          ("real-particles/empiar_10076_7.mrc", (7, 320, 320), None),  # a stack stored as .mrc, ispg 1
          ("real-particles/ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs", (220, 64, 64), 1.0),
          ("maps/trpv1_small_stack.mrcs", (10, 48, 48), 4.88),
          ("relion-conventions/relion_proj_star.mrcs", (1, 64, 64), 3.54),  # a single 2D image
          ("relion-conventions/rln_proj_65.mrcs", (5, 65, 65), None)]


@pytest.mark.shared
@pytest.mark.parametrize("rel,shape,pix", STACKS)
def test_real_stacks(shared_data, rel, shape, pix):
    path = shared_data / rel
    info = mrc.stack_info(path)
    assert (info.n, info.ny, info.nx) == shape and info.pixel_size == pix
    mm = mrc.open_stack(path, as_stack=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RELION 3 stacks lack the MAP id: mrcfile warns
        with mrcfile.open(path, permissive=True) as m:
            np.testing.assert_array_equal(mm, m.data.reshape(shape))


@pytest.mark.shared
def test_real_mrc_stack_needs_as_stack(shared_data):
    with pytest.raises(InputError, match="empiar_10076_7.mrc"):
        mrc.open_stack(shared_data / "real-particles" / "empiar_10076_7.mrc")


@pytest.mark.shared
def test_text_file_in_shared_data_is_not_mrc(shared_data):
    with pytest.raises(InputError, match="PROVENANCE-cryojax.md.*not an MRC file"):
        mrc.stack_info(shared_data / "maps" / "PROVENANCE-cryojax.md")
