"""Simulated particles: determinism, ground truth, SNR, orientations, CTF distribution, noise."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import shared_path
from cryolens.core.ctf import ctf_2d
from cryolens.core.geometry import euler_to_matrix
from cryolens.core.images import radius_grid
from cryolens.core.projector import Projector
from cryolens.core.simulate.example import blob_phantom
from cryolens.core.simulate.noise import NoiseModel, coloured_noise, ice_background, noise_psd, radial_power_spectrum
from cryolens.core.simulate.particles import (
    CTFDistribution, FixedOrientations, ParticleSimulator, PreferredOrientations, SimulatorConfig, Species,
    TiltRange, UniformOrientations, masked_variance, prepare_volume, simulate_particles, stream_particles,
    view_directions)

BOX, PX = 64, 2.0
VOL = blob_phantom(BOX, 0)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these small batches are fastest that way, and on a shared 2-core machine
    two OpenMP threads can be 10x slower; results do not depend on it (same count, same bytes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def independent_signal(truth, volume=VOL, box=BOX, px=PX) -> torch.Tensor:
    """The noiseless particle from the truth table with core's projector and CTF only."""
    ang = np.stack([truth["rot"], truth["tilt"], truth["psi"]], -1)
    ctf = ctf_2d(box, px, truth["defocus_u"], truth["defocus_v"], truth["defocus_angle"], truth["voltage"],
                 truth["cs"], truth["amp_contrast"], truth["phase_shift"], truth["envelope_bfactor"])
    shifts = np.stack([truth["shift_x"], truth["shift_y"]], -1) / px
    return Projector(volume).project(torch.as_tensor(euler_to_matrix(ang)), torch.as_tensor(shifts), ctf)


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    return (a * b).sum(dim=(-2, -1)) / torch.sqrt((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1)))


# -- determinism --------------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_stream_equals_dataset():
    kw = dict(pixel_size=PX, snr=(0.05, 1.0), noise="realistic", ice_gradient=(0.0, 2.0), junk=0.4,
              particles_per_micrograph=7)
    a = ParticleSimulator(VOL, SimulatorConfig(**kw)).generate(24, seed=11)
    b = ParticleSimulator(VOL, SimulatorConfig(**kw)).generate(24, seed=11)
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert a.frame.equals(b.frame)
    c = ParticleSimulator(VOL, SimulatorConfig(**kw)).generate(24, seed=12)
    assert not torch.equal(a.images, c.images)
    ps, imgs, truth = ParticleSimulator(VOL, SimulatorConfig(**kw)).dataset(40, seed=11, batch_size=24)
    first = next(stream_particles(VOL, SimulatorConfig(**kw), batch_size=24, seed=11))
    assert imgs[:24].tobytes() == first.images.numpy().tobytes()
    assert imgs.dtype == np.float32 and imgs.shape == (40, BOX, BOX) and len(ps) == len(truth) == 40
    assert (truth["particle"].to_numpy() == np.arange(40)).all()


# -- ground truth ---------------------------------------------------------------------------------------
def test_truth_pose_and_ctf_reproduce_the_noiseless_particle():
    sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=0.3, bfactor=(0, 150), shift_sd_A=3.0))
    b = sim.generate(32, seed=3, return_clean=True)
    ref = independent_signal(b.truth)
    assert ncc(ref, b.clean).min() > 0.999
    # the clean signal is the projection in the normalised images' units: scale = norm_scale
    scale = (b.clean * ref).sum(dim=(-2, -1)) / (ref * ref).sum(dim=(-2, -1))
    np.testing.assert_allclose(scale.numpy(), b.truth["norm_scale"], rtol=1e-3)
    # and the normalised images are that signal plus noise of the recorded sd
    resid = b.images - b.clean
    sd = resid.flatten(1).std(dim=1).numpy()
    np.testing.assert_allclose(sd, b.truth["noise_sd"] * b.truth["norm_scale"], rtol=0.05)
    # shifts are RELION origins: an origin of (+3, -2) px moves the particle to (x - 3, y + 2)
    t = {k: v[:1].copy() for k, v in b.truth.items()}
    t["shift_x"][:], t["shift_y"][:] = 3 * PX, -2 * PX
    t["junk_type"] = np.array(["none"], dtype=object)
    moved = sim.render(t, torch.Generator().manual_seed(0), return_clean=True)[2]
    t["shift_x"][:], t["shift_y"][:] = 0.0, 0.0
    centred = sim.render(t, torch.Generator().manual_seed(0), return_clean=True)[2]
    assert ncc(moved, torch.roll(centred, (2, -3), (-2, -1))) > 0.9999
    assert ncc(moved, torch.roll(centred, (-2, 3), (-2, -1))) < 0.99


def test_band_limited_projection_matches_the_exact_one():
    exact = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=1.0, bfactor=100.0))
    fast = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=1.0, bfactor=100.0, projection_box=48))
    t = exact.sample(16, np.random.default_rng(1))
    A = torch.as_tensor(euler_to_matrix(np.stack([t["rot"], t["tilt"], t["psi"]], -1)), dtype=torch.float32)
    sh = np.stack([t["shift_x"], t["shift_y"]], -1) / PX
    ctf = ctf_2d(BOX, PX, t["defocus_u"], t["defocus_v"], t["defocus_angle"], 300, 2.7, 0.1, 0, 100.0)
    e = exact.project(0, 0, A, sh, ctf)
    f = fast.project(0, 0, A, sh, ctf)
    assert ncc(e, f).min() > 0.99
    ratio = (e * f).sum(dim=(-2, -1)) / (e * e).sum(dim=(-2, -1))
    np.testing.assert_allclose(ratio.numpy(), 1.0, atol=0.03)


def test_volumes_are_resampled_to_the_image_pixel_size():
    def gauss(box, sigma):
        c = np.arange(box) - box // 2
        z, y, x = np.meshgrid(c, c, c, indexing="ij")
        return np.exp(-(x * x + y * y + z * z) / (2 * sigma * sigma))

    coarse = prepare_volume(gauss(48, 3.0), 2.0, 1.0, 96)  # 3 px at 2 A -> 6 px at 1 A
    fine = torch.as_tensor(gauss(96, 6.0))
    assert float(ncc(coarse.flatten()[None, None], fine.flatten()[None, None])) > 0.999
    np.testing.assert_allclose(float(coarse.max()), 1.0, rtol=0.02)


def test_truth_table_is_complete_and_the_particle_set_is_usable():
    sim = ParticleSimulator({"a": VOL, "b": blob_phantom(BOX, 5)}, SimulatorConfig(
        pixel_size=PX, junk=0.5, noise="coloured", ice_gradient=1.0, particles_per_micrograph=10))
    ps, imgs, truth = sim.dataset(60, seed=2, batch_size=32)
    needed = {"particle", "species", "species_id", "conformation", "conformation_state", "rot", "tilt", "psi",
              "shift_x", "shift_y", "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast",
              "phase_shift", "envelope_bfactor", "snr", "noise_sd", "signal_var", "norm_scale", "noise_kind",
              "noise_slope", "ice_gradient", "is_junk", "junk_type", "has_protein", "junk_seed",
              "mask_radius_px", "micrograph", "half_set"}
    assert needed <= set(truth.columns)
    assert not truth.isna().any().any()
    assert set(truth["species"]) == {"a", "b"}
    assert (truth["is_junk"] == (truth["junk_type"] != "none")).all()
    assert truth.groupby("micrograph")["defocus_u"].nunique().max() == 1  # one CTF per micrograph
    ctf = ps.ctf_params()
    np.testing.assert_array_equal(ctf["defocus_u"], truth["defocus_u"].to_numpy())
    ang, sh = ps.poses()
    np.testing.assert_array_equal(ang[:, 1], truth["tilt"].to_numpy())
    assert (ps.table["image_index"].to_numpy() == np.arange(60)).all() and (ps.table["box"] == BOX).all()
    assert np.isfinite(imgs).all()


def test_conformations_from_a_callable_and_species_weights():
    def vol_at(c: float) -> np.ndarray:
        v = np.roll(VOL, int(round(6 * c)) - 3, axis=2)
        return v

    sim = ParticleSimulator([Species("moving", vol_at, weight=3.0, conformations=4), Species("still", VOL)],
                            SimulatorConfig(pixel_size=PX, snr=1.0))
    b = sim.generate(200, seed=0, return_clean=True)
    t = b.frame
    used = set(np.round(t.loc[t.species == "moving", "conformation"], 6))
    assert used == {0.0, round(1 / 3, 6), round(2 / 3, 6), 1.0}
    assert 0.65 < (t.species == "moving").mean() < 0.85
    # each particle shows its own conformation
    i = int(np.flatnonzero((t.species == "moving") & (t.conformation == 1.0))[0])
    one = t.iloc[[i]].to_dict("list")
    one = {k: np.asarray(v) for k, v in one.items()}
    ref_right = independent_signal(one, vol_at(1.0))
    ref_wrong = independent_signal(one, vol_at(0.0))
    assert ncc(ref_right, b.clean[i:i + 1]) > 0.999 > ncc(ref_wrong, b.clean[i:i + 1]) + 0.01


# -- SNR ------------------------------------------------------------------------------------------------
def measured_snr(images: torch.Tensor, signal: torch.Tensor, radius) -> np.ndarray:
    """Per image: fit image = a * signal + b inside the mask; SNR = var(a signal) / var(residual),
    with the bias of a^2 removed (a's sampling variance). Independent of the simulator's internals."""
    box = images.shape[-1]
    m = (radius_grid(box)[None] <= torch.as_tensor(radius).reshape(-1, 1, 1)).to(torch.float64)
    x, s = images.to(torch.float64), signal.to(torch.float64)
    cnt = m.sum(dim=(-2, -1))
    xm = x - ((x * m).sum(dim=(-2, -1)) / cnt)[:, None, None]
    sm = s - ((s * m).sum(dim=(-2, -1)) / cnt)[:, None, None]
    ss = (sm * sm * m).sum(dim=(-2, -1))
    a = (xm * sm * m).sum(dim=(-2, -1)) / ss
    res = (xm - a[:, None, None] * sm) * m
    rv = (res * res).sum(dim=(-2, -1)) / (cnt - 2)
    a2 = a * a - rv / ss
    return (a2 * ss / cnt / rv).numpy()


@pytest.mark.parametrize("noise", ["white", "realistic"])
def test_measured_snr_matches_the_requested_snr(noise):
    for snr in (0.01, 0.1, 1.0):
        sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=snr, noise=noise))
        b = sim.generate(128 if snr < 0.05 else 48, seed=7)
        got = measured_snr(b.images, independent_signal(b.truth), b.truth["mask_radius_px"])
        assert abs(np.mean(got) / snr - 1) < 0.2, (snr, np.mean(got))
        assert np.allclose(b.truth["snr"], snr)
    # the recorded signal variance is the one inside the mask, and the noise sd follows from it
    np.testing.assert_allclose(b.truth["noise_sd"] ** 2 * b.truth["snr"], b.truth["signal_var"], rtol=1e-5)


def test_snr_range_is_log_uniform():
    t = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=(0.01, 1.0))).sample(4000, np.random.default_rng(0))
    lg = np.log10(t["snr"])
    assert lg.min() >= -2 - 1e-9 and lg.max() <= 1e-9
    assert stats.kstest((lg + 2) / 2, "uniform").pvalue > 0.01


# -- orientations ----------------------------------------------------------------------------------------
def test_view_direction_is_the_projection_axis_of_the_matrix():
    ang = UniformOrientations().sample(50, np.random.default_rng(0))
    np.testing.assert_allclose(view_directions(ang), euler_to_matrix(ang)[:, 2, :], atol=1e-12)


def test_uniform_orientations_are_uniform():
    ang = UniformOrientations().sample(5000, np.random.default_rng(1))
    assert stats.kstest((np.cos(np.deg2rad(ang[:, 1])) + 1) / 2, "uniform").pvalue > 0.01
    assert stats.kstest((ang[:, 0] + 180) / 360, "uniform").pvalue > 0.01
    assert stats.kstest((ang[:, 2] + 180) / 360, "uniform").pvalue > 0.01


def test_preferred_orientation_concentrates_views_with_the_vmf_law():
    kappa = 20.0
    po = PreferredOrientations(directions=((40.0, 70.0),), kappa=kappa)
    ang = po.sample(4000, np.random.default_rng(2))
    mu = po.mode_vectors()[0]
    w = view_directions(ang) @ mu
    # cos(angle to the mode) has CDF (exp(k w) - exp(-k)) / (exp(k) - exp(-k)) under vMF
    cdf = lambda x: np.expm1(kappa * (x + 1)) / np.expm1(2 * kappa)
    assert stats.kstest(w, cdf).pvalue > 0.01
    assert abs(w.mean() - (1 / np.tanh(kappa) - 1 / kappa)) < 0.005
    assert stats.kstest((ang[:, 2] + 180) / 360, "uniform").pvalue > 0.01  # in-plane stays uniform
    uni = view_directions(UniformOrientations().sample(4000, np.random.default_rng(2))) @ mu
    assert abs(uni.mean()) < 0.05 and w.mean() > 0.9
    # two modes, one weighted 3:1, and a uniform share
    po2 = PreferredOrientations(directions=((0.0, 0.0), (0.0, 90.0)), kappa=50.0, weights=(3, 1), uniform_fraction=0.2)
    v = view_directions(po2.sample(8000, np.random.default_rng(3)))
    near = v @ po2.mode_vectors().T > np.cos(np.deg2rad(25))
    frac = near.mean(0)
    assert abs(frac[0] / frac[1] - 3) < 0.4 and 0.8 * 0.9 < frac.sum() < 0.8 + 0.05


def test_tilt_range_restricts_views_uniformly_on_the_band():
    ang = TiltRange(30.0, 60.0).sample(3000, np.random.default_rng(4))
    assert ang[:, 1].min() >= 30 - 1e-9 and ang[:, 1].max() <= 60 + 1e-9
    c = np.cos(np.deg2rad(ang[:, 1]))
    lo, hi = np.cos(np.deg2rad(60)), np.cos(np.deg2rad(30))
    assert stats.kstest((c - lo) / (hi - lo), "uniform").pvalue > 0.01
    fixed = FixedOrientations(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), cycle=True)
    fixed = fixed.sample(4, np.random.default_rng(0))
    np.testing.assert_array_equal(fixed[2], [1, 2, 3])
    sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, orientation=TiltRange(80, 100)))
    assert (np.abs(sim.sample(100, np.random.default_rng(0))["tilt"] - 90) <= 10 + 1e-9).all()


# -- CTF distribution -------------------------------------------------------------------------------------
def test_ctf_parameters_stay_in_the_real_range():
    d = CTFDistribution.betagal()
    du, dv, ang = d.sample_micrographs(20000, np.random.default_rng(0))
    assert du.min() >= 8303.1 - 1e-6 and du.max() <= 13118.4 + 1e-6
    assert ((du - dv) >= 245.0 - 1e-6).all() and ((du - dv) <= 368.6 + 1e-6).all()
    assert ang.min() >= 70.01 - 1e-6 and ang.max() <= 80.51 + 1e-6
    np.testing.assert_allclose(np.quantile(du, d.levels), d.defocus_u, rtol=0.01)
    b = CTFDistribution.broad().sample_micrographs(1000, np.random.default_rng(0))
    assert b[0].min() >= 5000 and b[0].max() <= 35000 and (b[0] >= b[1]).all()


def test_sampled_defocus_matches_the_real_betagal_file():
    starfile = pytest.importorskip("starfile")
    real = starfile.read(shared_path("relion-conventions", "betagal_tutorial_particles.star"))["particles"]
    d = CTFDistribution.betagal()
    du, dv, ang = real["rlnDefocusU"].to_numpy(), real["rlnDefocusV"].to_numpy(), real["rlnDefocusAngle"].to_numpy()
    # the hard-coded tables are these quantiles (re-derived here)
    np.testing.assert_allclose(np.quantile(du, d.levels), d.defocus_u, atol=0.06)
    np.testing.assert_allclose(np.quantile(du - dv, d.levels), d.astigmatism, atol=0.06)
    np.testing.assert_allclose(np.quantile(ang, d.levels), d.angle, atol=0.006)
    sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX))
    t = sim.sample(len(real), np.random.default_rng(5))
    qs = (0.1, 0.25, 0.5, 0.75, 0.9)
    np.testing.assert_allclose(np.quantile(t["defocus_u"], qs), np.quantile(du, qs), rtol=0.02)
    np.testing.assert_allclose(np.quantile(t["defocus_u"] - t["defocus_v"], qs), np.quantile(du - dv, qs), rtol=0.03)
    np.testing.assert_allclose(np.quantile(t["defocus_angle"], qs), np.quantile(ang, qs), rtol=0.01)
    assert stats.ks_2samp(t["defocus_u"], du).statistic < 0.1


# -- noise ---------------------------------------------------------------------------------------------------
def loglog_slope(freq, power, lo, hi) -> float:
    sel = (freq >= lo) & (freq <= hi)
    return float(np.polyfit(np.log(freq[sel]), np.log(power[sel]), 1)[0])


@pytest.mark.parametrize("slope", [1.0, 2.5])
def test_coloured_noise_has_the_asked_radial_spectrum_slope(slope):
    box, px, knee = 128, 1.0, 40.0
    model = NoiseModel.coloured(slope=slope, knee_A=knee)
    g = torch.Generator().manual_seed(0)
    x = coloured_noise(64, box, noise_psd(model, box, px), g)
    assert abs(float(x.var()) - 1) < 0.05  # unit pixel variance before scaling
    f, p = radial_power_spectrum(x, px)
    got = loglog_slope(f, p, 5 / knee, 0.45 / px)
    assert abs(-got / slope - 1) < 0.1, got
    # white noise is flat, and the simulator's noise (empty picks, no normalisation) has the slope
    fw, pw = radial_power_spectrum(coloured_noise(64, box, None, g), px)
    assert abs(loglog_slope(fw, pw, 0.05, 0.45)) < 0.1
    sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=px, noise=model, junk={"empty": 1.0}, normalize=False))
    b = sim.generate(64, seed=0)
    f2, p2 = radial_power_spectrum(b.images, px)
    assert abs(-loglog_slope(f2, p2, 5 / knee, 0.45) / slope - 1) < 0.1


def test_ctf_share_of_the_noise_carries_thon_rings():
    box, px = 128, 1.0
    ctf = ctf_2d(box, px, 15000.0, 15000.0, 0.0, 300, 2.7, 0.1)
    model = NoiseModel.coloured(slope=0.0, knee_A=10.0, floor=0.0, ctf_fraction=0.9)
    psd = noise_psd(model, box, px, ctf)
    x = coloured_noise(256, box, psd, torch.Generator().manual_seed(1))
    f, p = radial_power_spectrum(x, px)
    _, c2 = radial_power_spectrum(torch.fft.irfft2(ctf.to(torch.complex64), s=(box, box)), px)
    sel = (f > 0.05) & (f < 0.3)
    assert np.corrcoef(p[sel], c2[sel])[0, 1] > 0.9  # rings follow the CTF's zeros


def test_ice_background_is_low_frequency_and_excluded_from_the_snr():
    bg = ice_background(16, 64, torch.Generator().manual_seed(0))
    f, p = radial_power_spectrum(bg)
    assert p[:4].sum() / p.sum() > 0.95
    kw = dict(pixel_size=PX, snr=0.5, normalize=False)
    plain = ParticleSimulator(VOL, SimulatorConfig(**kw)).generate(8, seed=4, return_clean=True)
    icy = ParticleSimulator(VOL, SimulatorConfig(ice_gradient=3.0, **kw)).generate(8, seed=4, return_clean=True)
    extra = icy.images - plain.images
    assert torch.equal(plain.clean, icy.clean)
    fx, px_ = radial_power_spectrum(extra)
    assert px_[:4].sum() / px_.sum() > 0.95
    np.testing.assert_allclose(extra.flatten(1).std(1).numpy(), 3.0 * plain.truth["noise_sd"], rtol=0.05)


def test_relion_normalisation_of_the_output():
    b = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=0.5, ice_gradient=2.0)).generate(16, seed=1)
    r = radius_grid(BOX)
    bg = b.images[:, r > round(0.375 * BOX)]
    np.testing.assert_allclose(bg.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(bg.std(1, unbiased=False).numpy(), 1, atol=1e-4)


def test_simulate_particles_function_and_masked_variance():
    ps, imgs, truth = simulate_particles(10, VOL, SimulatorConfig(pixel_size=PX, box=48), seed=0)
    assert imgs.shape == (10, 48, 48) and (ps.table["box"] == 48).all()
    x = torch.zeros(1, 9, 9)
    x[0, 4, 4] = 1.0
    np.testing.assert_allclose(float(masked_variance(x, 0.5)), 0.0)
    np.testing.assert_allclose(float(masked_variance(x, 1.0)), 0.16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_in_distribution():
    sim = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=0.5), device="cuda")
    b = sim.generate(16, seed=0, return_clean=True)
    cpu = ParticleSimulator(VOL, SimulatorConfig(pixel_size=PX, snr=0.5)).generate(16, seed=0, return_clean=True)
    assert b.images.device.type == "cuda"
    assert ncc(b.clean.cpu(), cpu.clean).min() > 0.999
