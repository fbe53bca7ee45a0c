"""cryolens <-> real RELION 3.1.3 binaries: stars we write are read by RELION, images RELION
makes are read by us, and the numbers agree."""
from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from conftest import need_relion
from relion_helpers import project_particles, run
from cryolens.relion_ext.star import read_blocks, read_particles, write_particles

pytestmark = pytest.mark.relion


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    need_relion("relion_project", "relion_reconstruct", "relion_star_handler")
    proj = tmp_path_factory.mktemp("relion_integration")
    star = project_particles(proj, "protB", 600, seed=7, white_noise=0.5)
    return proj, star


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.1", "5.0"])
def test_relion_reconstruct_accepts_our_star_and_recovers_the_volume(projected, version):
    proj, star = projected
    ps = read_particles(star)
    # write a different subset/order than RELION's own file, in the asked STAR flavour
    sub = ps.subset(np.arange(len(ps))[::-1])
    write_particles(sub, proj / f"ours_{version}.star", version=version)
    run(["relion_reconstruct", "--i", f"ours_{version}.star", "--o", f"rec_{version}.mrc", "--ctf"], proj)
    with mrcfile.open(proj / f"rec_{version}.mrc") as m:
        rec = m.data.copy()
    with mrcfile.open(proj / "Synthetic" / "protB.mrc") as m:
        truth = m.data.copy()
    assert _corr(rec, truth) > 0.95  # measured 0.997 (600 particles, noise sd 0.5)


def test_relion_star_handler_selects_from_our_star(projected):
    proj, star = projected
    ps = read_particles(star)
    ps.table["class_id"] = 1 + (np.arange(len(ps)) % 3)
    write_particles(ps, proj / "classes.star")
    run(["relion_star_handler", "--i", "classes.star", "--o", "sel.star", "--select", "rlnClassNumber",
         "--minval", "2", "--maxval", "2"], proj)
    sel = read_particles(proj / "sel.star")
    assert len(sel) == 200 and set(sel.table["class_id"]) == {2}
    keys = set(ps.subset(ps.table["class_id"].eq(2).to_numpy()).image_keys())
    assert set(sel.image_keys()) == keys
    # RELION kept every column we wrote, unknown labels included
    ps.table["cryolensTestScore"] = np.linspace(0, 1, len(ps))
    write_particles(ps, proj / "scored.star")
    run(["relion_star_handler", "--i", "scored.star", "--o", "scored_sel.star", "--select", "rlnClassNumber",
         "--minval", "1", "--maxval", "1"], proj)
    out = read_blocks(proj / "scored_sel.star")["particles"]
    assert "cryolensTestScore" in out.columns and len(out) == 200


def test_relion_project_images_read_through_cryolens_match_our_projector(tmp_path):
    """relion_project of a volume at our poses (with shifts), read back via STAR + lazy images."""
    need_relion("relion_project")
    import torch

    from relion_helpers import pose_table, write_volume
    from cryolens.core.geometry import euler_to_matrix
    from cryolens.core.projector import Projector
    from cryolens.core.simulate.example import blob_phantom

    vol = blob_phantom(64, seed=3)
    write_volume(tmp_path / "vol.mrc", vol, 2.0)
    write_particles(pose_table(24, seed=5, box=64, pixel_size=2.0), tmp_path / "poses.star")
    run(["relion_project", "--i", "vol.mrc", "--o", "proj", "--ang", "poses.star", "--angpix", "2"], tmp_path)
    ps = read_particles(tmp_path / "proj.star")
    theirs = ps.image_source().read(np.arange(len(ps)))
    angles, shifts = ps.poses()
    ours = Projector(vol).project(torch.as_tensor(euler_to_matrix(angles)),
                                  shifts_px=torch.as_tensor(shifts / 2.0)).numpy()
    ncc = [_corr(a, b) for a, b in zip(theirs, ours)]
    assert min(ncc) > 0.999, ncc
