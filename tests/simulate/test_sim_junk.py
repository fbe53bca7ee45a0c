"""Junk: every type is generated, flagged, and differs from good particles in the feature it should."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core.images import lowpass, radius_grid, soft_circular_mask
from cryolens.core.simulate.example import blob_phantom
from cryolens.core.simulate.junk import DESCRIPTIONS, JUNK_TYPES, junk_fractions
from cryolens.core.simulate.particles import ParticleSimulator, SimulatorConfig

BOX, PX, N = 64, 2.0, 24
VOL = blob_phantom(BOX, 0)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_cache: dict = {}


def batch(kind: str, seed: int = 5):
    """N normalised particles of one junk type ('none': good ones) at SNR 1, white noise."""
    if (kind, seed) not in _cache:
        sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=1.0,
                                                     junk=None if kind == "none" else {kind: 1.0}))
        _cache[kind, seed] = sim.generate(N, seed=seed, return_clean=True)
    return _cache[kind, seed]


# -- features computed from the noisy images only -------------------------------------------------------
C = np.arange(BOX) - BOX // 2
R = radius_grid(BOX).numpy()


def _np(x) -> np.ndarray:
    return (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float64)


def noise_var(x) -> np.ndarray:
    """Per image: the noise variance from the high-frequency band (|k| > 0.35 cycles/px), where
    white noise has its full power and the CTF-attenuated signal almost none."""
    x = _np(x)
    F = np.abs(np.fft.fft2(x)) ** 2 / BOX ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(BOX), np.fft.fftfreq(BOX), indexing="ij"))
    return F[:, k > 0.35].mean(1)


def variance_excess(x) -> np.ndarray:
    x = _np(x)
    return x.reshape(len(x), -1).var(1) / noise_var(x)


def mean_excess(x) -> np.ndarray:
    x = _np(x)
    return np.abs(x.reshape(len(x), -1).mean(1)) / np.sqrt(noise_var(x))


def inside_over_background(x, radius) -> np.ndarray:
    x = _np(x)
    return x[:, R <= radius].var(1) / x[:, R > 0.375 * BOX].var(1)


def bragg_peak(x) -> np.ndarray:
    """Max / median of the power spectrum at 0.1-0.48 cycles/px (sharp lattice reflections)."""
    x = _np(x)
    P = np.abs(np.fft.fft2(x - x.mean((1, 2), keepdims=True))) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(BOX), np.fft.fftfreq(BOX), indexing="ij"))
    ann = (k > 0.1) & (k < 0.48)
    return P[:, ann].max(1) / np.median(P[:, ann], 1)


def fourier_streak(x) -> np.ndarray:
    """Strongest 5-degree direction / median direction of the apodised power at 0.05-0.3 cycles/px:
    a straight edge puts a line through the origin of the transform."""
    x = _np(x)
    apo = soft_circular_mask(BOX, BOX / 2 - 8, 6).numpy()
    P = np.abs(np.fft.fft2((x - x.mean((1, 2), keepdims=True)) * apo)) ** 2
    ky, kx = np.meshgrid(np.fft.fftfreq(BOX), np.fft.fftfreq(BOX), indexing="ij")
    k, ang = np.hypot(ky, kx), np.degrees(np.arctan2(ky, kx)) % 180
    ann = (k > 0.05) & (k < 0.3)
    b = np.digitize(ang[ann], np.arange(0, 181, 5)) - 1
    cnt = np.bincount(b, minlength=36)[:36]
    prof = np.stack([np.bincount(b, p[ann], minlength=36)[:36] / cnt for p in P])
    return prof.max(1) / np.median(prof, 1)


def centre_of_mass_offset(x) -> np.ndarray:
    """Distance (px) from the box centre of the positive part of the image low-passed to 6 px."""
    lp = lowpass(torch.as_tensor(_np(x)), PX, 6 * PX).numpy()
    w = np.clip(lp, 0, None)
    yy, xx = np.meshgrid(C, C, indexing="ij")
    s = w.sum((1, 2))
    return np.hypot((w * yy).sum((1, 2)) / s, (w * xx).sum((1, 2)) / s)


def spread(x) -> np.ndarray:
    """Radius of gyration (px) of the power of the image low-passed to 6 px: how far it reaches."""
    lp = lowpass(torch.as_tensor(_np(x)), PX, 6 * PX).numpy() ** 2
    return np.sqrt((lp * R ** 2).sum((1, 2)) / lp.sum((1, 2)))


def ring_oscillation(x) -> np.ndarray:
    """Energy of the fine oscillations of the rotational average (profile minus its 5-px running
    mean, weighted by pixels per radius), in noise units: concentric rings."""
    x = _np(x)
    rr = np.round(R).astype(int).ravel()
    cnt = np.bincount(rr)
    sel = slice(3, int(0.45 * BOX))
    out = []
    for img in x:
        p = (np.bincount(rr, img.ravel()) / cnt)[sel]
        out.append(((p - np.convolve(p, np.ones(5) / 5, mode="same")) ** 2 * cnt[sel]).mean())
    return np.array(out)


def anisotropy(x) -> np.ndarray:
    """Strongest / weakest 10-degree direction of the power at 0.03-0.2 cycles/px (smearing)."""
    x = _np(x)
    P = np.abs(np.fft.fft2(x - x.mean((1, 2), keepdims=True))) ** 2
    ky, kx = np.meshgrid(np.fft.fftfreq(BOX), np.fft.fftfreq(BOX), indexing="ij")
    k, ang = np.hypot(ky, kx), np.degrees(np.arctan2(ky, kx)) % 180
    ann = (k > 0.03) & (k < 0.2)
    b = np.digitize(ang[ann], np.arange(0, 181, 10)) - 1
    cnt = np.bincount(b, minlength=18)[:18]
    prof = np.stack([np.bincount(b, p[ann], minlength=18)[:18] / cnt for p in P])
    return prof.max(1) / prof.min(1)


# -- tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", JUNK_TYPES)
def test_every_junk_type_is_generated_and_flagged(kind):
    b = batch(kind)
    t = b.frame
    assert (t["junk_type"] == kind).all() and t["is_junk"].all() and (t["junk_seed"] > 0).all()
    assert torch.isfinite(b.images).all() and b.images.shape == (N, BOX, BOX)
    assert kind in DESCRIPTIONS
    # it is not a good particle: the noiseless image differs from the good particle at its pose
    good = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=1.0))
    t2 = {k: np.asarray(v).copy() for k, v in b.truth.items()}
    t2["junk_type"][:] = "none"
    t2["is_junk"][:] = False
    t2["shift_x"][:] = np.clip(t2["shift_x"], -3 * PX, 3 * PX)
    t2["shift_y"][:] = np.clip(t2["shift_y"], -3 * PX, 3 * PX)
    clean_good = good.render(t2, torch.Generator().manual_seed(0), return_clean=True)[2]
    a, g = b.clean - b.clean.mean(dim=(-2, -1), keepdim=True), clean_good - clean_good.mean(dim=(-2, -1), keepdim=True)
    norm = torch.sqrt((a * a).sum(dim=(-2, -1)) * (g * g).sum(dim=(-2, -1))).clamp_min(1e-12)
    corr = (a * g).sum(dim=(-2, -1)) / norm
    assert float(corr.median()) < 0.9


def test_junk_mixture_fractions_and_flags():
    sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, junk={"empty": 0.2, "ice_contamination": 0.1,
                                                                      "off_centre": 0.1}))
    t = sim.sample(5000, np.random.default_rng(0))
    frac = {k: np.mean(t["junk_type"] == k) for k in ("none", "empty", "ice_contamination", "off_centre")}
    assert abs(frac["none"] - 0.6) < 0.03 and abs(frac["empty"] - 0.2) < 0.02 and abs(frac["off_centre"] - 0.1) < 0.02
    assert (t["is_junk"] == (t["junk_type"] != "none")).all()
    assert not t["has_protein"][t["junk_type"] == "empty"].any() and t["has_protein"][t["junk_type"] == "none"].all()
    assert set(junk_fractions(0.7)) == set(JUNK_TYPES)
    with pytest.raises(ValueError, match="class-level"):
        junk_fractions({"streaky": 0.1})
    with pytest.raises(ValueError, match="add up"):
        junk_fractions({"empty": 0.6, "aggregate": 0.6})


def test_junk_is_reproducible_from_its_seed():
    a = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, junk=1.0)).generate(14, seed=3, return_clean=True)
    b = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, junk=1.0)).generate(14, seed=3, return_clean=True)
    assert torch.equal(a.clean, b.clean) and (a.truth["junk_seed"] == b.truth["junk_seed"]).all()


def test_empty_picks_have_no_signal_above_noise():
    empty, good = batch("empty"), batch("none")
    assert np.all(b_ := np.abs(inside_over_background(empty.images, 25) - 1) < 0.2), b_
    assert np.median(inside_over_background(good.images, 25)) > 1.5
    assert float(empty.clean.abs().max()) == 0.0


def test_ice_contamination_is_a_mean_and_variance_outlier():
    ice, good = batch("ice_contamination"), batch("none")
    v_ice, v_good = variance_excess(ice.images), variance_excess(good.images)
    m_ice, m_good = mean_excess(ice.images), mean_excess(good.images)
    assert np.median(v_ice) > 2 * np.median(v_good)
    assert np.median(m_ice) > 3 * np.median(m_good)
    assert np.mean(v_ice > np.quantile(v_good, 0.95)) > 0.6


def test_crystalline_ice_has_bragg_peaks():
    ice, good = batch("crystalline_ice"), batch("none")
    assert np.median(bragg_peak(ice.images)) > 10 * np.median(bragg_peak(good.images))


def test_carbon_edge_gives_a_straight_fourier_streak():
    carbon, good = batch("carbon_edge"), batch("none")
    s_c, s_g = fourier_streak(carbon.images), fourier_streak(good.images)
    assert np.median(s_c) > 2.5 * np.median(s_g)
    assert np.mean(s_c > np.quantile(s_g, 0.9)) > 0.7


def test_aggregates_reach_further_than_one_particle():
    agg, good = batch("aggregate"), batch("none")
    assert np.median(spread(agg.images)) > 1.5 * np.median(spread(good.images))


def test_off_centre_particles_have_their_mass_far_from_the_centre():
    off, good = batch("off_centre"), batch("none")
    d_off, d_good = centre_of_mass_offset(off.images), centre_of_mass_offset(good.images)
    assert np.median(d_off) > 4 * np.median(d_good) and np.median(d_off) > 6
    sh = np.hypot(off.truth["shift_x"], off.truth["shift_y"]) / PX
    assert (sh >= 0.3 * BOX - 1e-6).all() and (sh <= 0.5 * BOX + 1e-6).all()  # recorded in the truth
    # cut by the box edge, not wrapped around: nothing where a periodic image of the particle
    # would reappear on the far side of the box (within 0.5 particle radius of its wrapped centre)
    c = off.clean.numpy()
    yy, xx = np.meshgrid(C, C, indexing="ij")
    wrap_energy = []
    for img, ox, oy in zip(c, off.truth["shift_x"] / PX, off.truth["shift_y"] / PX):
        dx, dy = xx + ox, yy + oy  # from the particle centre (box//2 - origin)
        direct = np.hypot(dx, dy)
        periodic = np.hypot((dx + BOX / 2) % BOX - BOX / 2, (dy + BOX / 2) % BOX - BOX / 2)
        ghost = (periodic < 12) & (direct > 30)
        if ghost.any():
            wrap_energy.append(np.abs(img[ghost]).mean() / np.abs(img[direct < 12]).mean())
    assert len(wrap_energy) >= N // 2 and max(wrap_energy) < 0.2, wrap_energy


def test_ring_artefacts_ring():
    ring, good = batch("ring_artefact"), batch("none")
    assert np.median(ring_oscillation(ring.images)) > 4 * np.median(ring_oscillation(good.images))
