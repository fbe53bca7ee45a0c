"""Fast synthetic 2D class averages: they look like their truth, junk does not, stats are sane."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core.geometry import euler_to_matrix
from cryolens.core.images import lowpass, soft_circular_mask
from cryolens.core.simulate.classes import class_average_like, frc_resolution, synthesize_classes, wiener_transfer
from cryolens.core.simulate.example import blob_phantom
from cryolens.core.simulate.particles import ParticleSimulator, SimulatorConfig

BOX, PX = 48, 4.0
VOLS = {"A": blob_phantom(BOX, 1), "B": blob_phantom(BOX, 2)}


def anisotropy(imgs: np.ndarray) -> np.ndarray:
    """Ratio of the principal second moments of each image's power spectrum (1 = isotropic)."""
    k = np.fft.fftfreq(imgs.shape[-1])
    ky, kx = np.meshgrid(k, k, indexing="ij")
    out = []
    for im in imgs:
        p = np.abs(np.fft.fft2(im)) ** 2
        p[0, 0] = 0
        c = np.cov(np.stack([kx.ravel(), ky.ravel()]), aweights=p.ravel() + 1e-12)
        ev = np.linalg.eigvalsh(c)
        out.append(ev[1] / max(ev[0], 1e-12))
    return np.array(out)


def ncc(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def classes():
    torch.set_num_threads(1)
    return synthesize_classes(VOLS, n_classes=6, box=BOX, pixel_size=PX, members=(60, 120), snr=0.2,
                              junk_classes={"empty": 2, "over_masked": 1, "streaky": 1}, impurity=(0.0, 0.1), seed=3)


def truth_projection(species: str, rot: float, tilt: float, res: float) -> np.ndarray:
    sim = ParticleSimulator(VOLS, SimulatorConfig(box=BOX, pixel_size=PX))
    sp = [s.name for s in sim.species].index(species)
    A = torch.as_tensor(euler_to_matrix(np.array([[rot, tilt, 0.0]])), dtype=torch.float32)
    return lowpass(sim.project(sp, 0, A, np.zeros((1, 2))), PX, res)[0].numpy()


def test_good_classes_look_like_their_view_and_junk_does_not(classes):
    cs, truth = classes
    t = truth.table
    assert cs.images.shape == (10, BOX, BOX) and cs.images.dtype == np.float32
    scores = {}
    for i, row in t.iterrows():
        species = row["truth_species"] or "A"
        ref = truth_projection(species, row["truth_rot"], row["truth_tilt"], 12.0)
        scores[row["class_id"]] = (row["truth_kind"], ncc(cs.images[i], ref))
    good = [s for k, s in scores.values() if k == "protein"]
    empty = [s for k, s in scores.values() if k == "empty"]
    assert min(good) > 0.6, scores
    assert max(abs(e) for e in empty) < 0.35, scores


def test_class_statistics_and_membership(classes):
    cs, truth = classes
    t = truth.table
    assert cs.table["distribution"].sum() == pytest.approx(1.0)
    assert cs.counts().tolist() == cs.table["n_particles"].tolist()
    good = t[t["truth_good"]]
    assert good["truth_purity"].between(0.85, 1.0).all()
    particle_junk = t["truth_kind"].isin(["empty"])
    assert (t.loc[particle_junk, "truth_purity"] == 0).all()
    assert (t.loc[t["truth_kind"].isin(["over_masked", "streaky"]), "truth_purity"] > 0.85).all()
    # the FRC resolution of a good class beats that of an empty-pick class
    empty_res = t.loc[t["truth_kind"] == "empty", "resolution"]
    assert good["resolution"].max() < empty_res.min()
    members = truth.members
    assert len(members) == t["n_particles"].sum()
    assert members.groupby("class_id")["true_member"].mean().round(6).tolist() == t["truth_purity"].round(6).tolist()


def test_class_level_junk(classes):
    cs, truth = classes
    kinds = truth.table["truth_kind"].to_numpy()
    img = cs.images.astype(np.float64)
    R = np.hypot(*np.meshgrid(np.arange(BOX) - BOX // 2, np.arange(BOX) - BOX // 2, indexing="ij"))
    radius = truth.table["particle_radius_px"].to_numpy()
    zero_inside = np.array([(np.abs(im[R <= r]) < 1e-6).mean() for im, r in zip(img, radius)])
    assert zero_inside[kinds == "over_masked"].min() > 0.2 and zero_inside[kinds == "protein"].max() < 0.05
    an = anisotropy(img)
    assert an[kinds == "streaky"].min() > 2 * np.median(an[kinds == "protein"])


def test_determinism_and_lowpass_projection_mode():
    a, _ = synthesize_classes(VOLS, n_classes=2, box=BOX, pixel_size=PX, members=20, seed=7)
    b, _ = synthesize_classes(VOLS, n_classes=2, box=BOX, pixel_size=PX, members=20, seed=7)
    assert a.images.tobytes() == b.images.tobytes()
    cs, truth = synthesize_classes(VOLS, n_classes=2, box=BOX, pixel_size=PX, members=20, seed=7,
                                   mode="lowpass_projection")
    for i, row in truth.table.iterrows():
        ref = truth_projection(row["truth_species"], row["truth_rot"], row["truth_tilt"], row["resolution"])
        inside = soft_circular_mask(BOX, 0.42 * BOX, max(2.0, 0.05 * BOX)).numpy() > 0.99  # the class mask
        assert ncc(cs.images[i][inside], ref[inside]) > 0.98


def test_frc_resolution_of_identical_and_independent_images():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(1, 32, 32)), dtype=torch.float32)
    y = torch.as_tensor(rng.normal(size=(1, 32, 32)), dtype=torch.float32)
    assert float(frc_resolution(x, x, 2.0)[0]) == pytest.approx(4.0, rel=0.05)  # Nyquist: 2 px * 2 A
    assert float(frc_resolution(x, y, 2.0)[0]) > 20.0


def test_wiener_transfer_damps_low_frequencies_and_ctf_zeros():
    """A CTF-corrected average keeps little of its lowest frequencies (CTF^2 there is only the
    amplitude contrast squared) and dips where many members' CTFs are zero; it is the same for the
    same generator seed."""
    t = wiener_transfer(8, 64, 3.0, torch.Generator().manual_seed(0), members=(20, 20), eps_fraction=(0.05, 0.05))
    assert t.shape == (8, 64, 33) and ((t > 0) & (t <= 1)).all()
    assert (t[:, 0, 0] < 0.5).all()  # DC: 0.01 n / (0.01 n + 0.05 mean(sum CTF^2))
    assert (t[:, 0, 5:15].mean(1) > 0.85).all()  # mid frequencies mostly kept
    one = wiener_transfer(8, 64, 3.0, torch.Generator().manual_seed(1), members=(1, 1), eps_fraction=(0.05, 0.05))
    assert (one[:, 3:30, 3:].flatten(1).min(1).values < 0.1).all()  # a single CTF's zeros are deep
    again = wiener_transfer(8, 64, 3.0, torch.Generator().manual_seed(0), members=(20, 20), eps_fraction=(0.05, 0.05))
    assert torch.equal(t, again)


def test_class_average_like_ctf_corrected_changes_only_the_spectrum_shape():
    x = torch.zeros(2, 32, 32)
    x[:, 12:20, 10:22] = 1.0
    a = class_average_like(x, 3.0, torch.Generator().manual_seed(3), snr=1e8, n_copies=1)
    b = class_average_like(x, 3.0, torch.Generator().manual_seed(3), snr=1e8, n_copies=1, ctf_corrected=True)
    assert a.shape == b.shape and torch.isfinite(b).all() and not torch.allclose(a, b, atol=1e-3)
    assert torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min() > 0.5  # same object
