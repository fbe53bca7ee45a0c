"""The map library: references rendered like class averages, incremental, versioned files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from cryolens.core.artifacts import array_text, text_array
from cryolens.core.correlate import ncc_search
from cryolens.core.errors import InputError
from cryolens.core.geometry import euler_to_matrix
from cryolens.core.identify.library import Decoys, Library, fibonacci_views
from cryolens.core.projector import Projector
from cryolens.core.simulate.proteins import random_phantom

B, PX = 32, 6.0


def test_fibonacci_views_cover_the_sphere():
    v = fibonacci_views(400)
    t = np.deg2rad(v[:, 1])
    z = np.cos(t)
    assert abs(z.mean()) < 0.01 and np.histogram(z, bins=4)[0].min() >= 95  # uniform in cos(tilt)
    assert (v[:, 2] == 0).all()


def test_incremental_add_save_load_and_retrieval(tmp_path):
    lib = Library(B, PX, resolution_A=18.0, n_views=30)
    maps = [random_phantom(s, box=B, pixel_size=PX, kind="complex").density for s in (1, 2, 3)]
    for i, m in enumerate(maps[:2]):
        lib.add_volume(m, f"prot{i}", accession=f"EMD-{1000 + i}")
    before = lib.references.copy()
    lib.add_volume(maps[2], "prot2")
    np.testing.assert_array_equal(lib.references[:60], before)  # earlier entries untouched
    assert len(lib) == 3 and lib.references.shape == (90, B, B) and lib.references.dtype == np.float16
    with pytest.raises(InputError, match="already has"):
        lib.add_volume(maps[0], "prot0")
    lib.save(tmp_path / "lib.npz")
    back = Library.load(tmp_path / "lib.npz")
    assert back.entries["accession"].tolist() == ["EMD-1000", "EMD-1001", ""]
    np.testing.assert_array_equal(back.references, lib.references)
    # a noisy view of prot1 retrieves prot1 through the correlation baseline
    A = torch.as_tensor(euler_to_matrix(np.array([[30.0, 70.0, 0.0]])), dtype=torch.float32)
    q = Projector(maps[1]).project(A)
    q = q + 0.5 * q.std() * torch.randn(q.shape, generator=torch.Generator().manual_seed(0))
    m = ncc_search(q, torch.as_tensor(back.references.astype(np.float32)), n_psi=24, max_shift_px=2)
    assert back.entry_of_reference()[int(m.score[0].argmax())] == 1


def test_bad_library_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Library.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz: not a cryolens library"):
        Library.load(tmp_path / "junk.npz")
    lib = Library(B, PX, n_views=2)
    path = lib.save(tmp_path / "v.npz")
    with np.load(path) as z:
        parts = dict(z)
    header = array_text(parts["header"]).replace('"version": 2', '"version": 9')
    parts["header"] = text_array(header)
    np.savez(tmp_path / "v9.npz", **parts)
    with pytest.raises(InputError, match="v9"):
        Library.load(tmp_path / "v9.npz")


def test_user_map_from_shared_data(tmp_path):
    path = shared_path("maps", "trpv1_volume.mrc")
    lib = Library(48, 4.0, n_views=10)
    lib.add_map_file(path, name="TRPV1", accession="EMD-5778")
    assert lib.references.shape == (10, 48, 48) and np.isfinite(lib.references.astype(np.float32)).all()


def test_decoys_travel_with_the_library(tmp_path):
    lib = Library(B, PX, n_views=2)
    lib.add_volume(random_phantom(1, box=B, pixel_size=PX, kind="complex").density, "a")
    refs = np.random.default_rng(0).standard_normal((6, B, B)).astype(np.float16)
    emb = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    lib.decoys = Decoys(refs, 3, ["d0", "d1"], emb, "abc")
    back = Library.load(lib.save(tmp_path / "lib.npz"))
    assert np.array_equal(back.decoys.references, refs) and back.decoys.references.dtype == np.float16
    assert np.array_equal(back.decoys.embeddings, emb) and back.decoys.embeddings.dtype == np.float32
    assert back.decoys.embedding_model == "abc" and back.decoys.names == ["d0", "d1"] and len(back.decoys) == 2
    assert back.decoys.entry_of_reference().tolist() == [0, 0, 0, 1, 1, 1]


def test_a_library_written_by_the_previous_cryolens_loads(tmp_path):
    """As libraries were written before core.artifacts: format cryolens-library, text as numpy
    unicode, no decoys (``prepare_library`` adds them)."""
    lib = Library(B, PX, n_views=2)
    lib.add_volume(random_phantom(2, box=B, pixel_size=PX, kind="complex").density, "a", accession="EMD-1")
    header = {"format": "cryolens-library", "version": 2, "box": B, "pixel_size": PX, "resolution_A": 15.0,
              "n_views": 2, "embedding_model": ""}
    with open(tmp_path / "old.npz", "wb") as fh:
        np.savez(fh, header=np.array(json.dumps(header)), entries=np.array(lib.entries.to_json(orient="table")),
                 views=np.array(lib.views.to_json(orient="table")), references=lib.references,
                 embeddings=np.zeros((0, 0), np.float16))
    back = Library.load(tmp_path / "old.npz")
    assert back.entries["accession"].tolist() == ["EMD-1"] and np.array_equal(back.references, lib.references)
    assert back.decoys is None and back.embeddings is None


def test_a_map_larger_than_the_library_mask_is_refused_with_the_box_it_needs(tmp_path):
    """A molecule reaching past the references' mask would be cut silently: refused, naming the
    file and a box that would hold it; one that fits is taken."""
    from cryolens.core.mrc import write_map

    box, px = 48, 4.0
    z, y, x = np.indices((96,) * 3) - 48
    r = np.sqrt(x * x + y * y + z * z)
    big, small = tmp_path / "big.mrc", tmp_path / "small.mrc"
    write_map(big, (r < 30).astype(np.float32), 4.0)  # radius 120 A; the mask reaches 0.45 x 48 x 4 = 86 A
    write_map(small, (r < 12).astype(np.float32), 4.0)  # radius 48 A
    lib = Library(box, px, 15.0, 6)
    with pytest.raises(InputError) as err:
        lib.add_map_file(big)
    assert "big.mrc" in str(err.value) and "beyond the library's mask" in str(err.value)
    assert "box of at least 68 px" in str(err.value)
    assert lib.add_map_file(small) == 0 and len(lib) == 1
