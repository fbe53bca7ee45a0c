"""Particle simulator: speed and realism; prints JSON (metric, value, baseline, ratio, n, seed, device, seconds).

    python bench/bench_simulate.py [--n 1024] [--batch 256] [--seed 0] [--threads 2] [--skip-realism]
    python bench/bench_simulate.py --fit-noise     # re-derive NoiseModel.realistic() from EMPIAR-10076

Speed (128 px, blob phantom, uniform poses, betagal CTFs, white noise, SNR 0.1, RELION
normalisation): ``ParticleSimulator.stream`` batches vs a naive per-particle loop through the same
projector, CTF, noise and normalisation (batch 1), in the same process; best of 3 passes each. Also reported: the
projector alone at the same batch (the ceiling: the simulator cannot beat it), the band-limited
mode (``projection_box=64``: exact to half Nyquist, zero beyond), the realistic configuration
(coloured noise with CTF share, ice background, 10% junk), one thread, and CUDA when present.
Timings on a shared machine depend on its load; ``load_avg`` is recorded with each figure.

Realism: real particles (../shared/data/real-particles: EMPIAR-10076 ``empiar_10076_7.mrc``, 7 x 320
px at 1.31 A, 50S ribosome; ``relion31.mrcs``, 5 x 256 px at 2.806 A) are Fourier-cropped to 128
px and normalised like RELION. We simulate 128-px particles of a ribosome map
(../shared/data/maps/ribosome_4ug0_..., 4 A) at the same pixel size with the real files' CTF
parameters, and compare the mean radial power spectra: distance = RMS over shells 1..63 of
log10(P_sim) - log10(P_real), each log spectrum centred (shape only). The SNR is matched by
scanning 0.001..1 for each method and keeping its best. Baseline: the projection without a CTF
plus white noise at the same SNR definition; ablation: cryolens with white noise (CTF, no
coloured noise). Pixel statistics (skewness, excess kurtosis, KS
distance of pixel values) are reported beside. The noise model was fitted to EMPIAR-10076's
background (see --fit-noise), so relion31 is the held-out comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from cryolens.core.ctf import ctf_2d
from cryolens.core.geometry import euler_to_matrix
from cryolens.core.images import fourier_resize, normalize_background, radius_grid
from cryolens.core.projector import Projector
from cryolens.core.simulate.example import blob_phantom
from cryolens.core.simulate.noise import NoiseModel, noise_psd, radial_power_spectrum, rfft_weights
from cryolens.core.simulate.particles import CTFDistribution, ParticleSimulator, SimulatorConfig, masked_variance

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SNRS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


# -- speed --------------------------------------------------------------------------------------------
def naive_loop(sim: ParticleSimulator, n: int, seed: int, repeats: int = 3) -> float:
    return max(_naive_loop(sim, n, seed) for _ in range(repeats))


def _naive_loop(sim: ParticleSimulator, n: int, seed: int) -> float:
    """Particles/s of the same pipeline one particle at a time (same projector, CTF, noise, norm)."""
    rng = np.random.default_rng(seed)
    t = sim.sample(n, rng)
    proj = sim.projector(0, 0)
    ang = np.stack([t["rot"], t["tilt"], t["psi"]], -1)
    A = torch.as_tensor(euler_to_matrix(ang), dtype=torch.float32, device=sim.device)
    sh = torch.as_tensor(np.stack([t["shift_x"], t["shift_y"]], -1) / sim.pixel_size)
    g = torch.Generator(device=sim.device if sim.device.type == "cuda" else "cpu").manual_seed(seed)
    _sync(sim.device)
    t0 = time.perf_counter()
    for i in range(n):
        ctf = ctf_2d(sim.box, sim.pixel_size, t["defocus_u"][i], t["defocus_v"][i], t["defocus_angle"][i],
                     sim.voltage, sim.cs, sim.amp_contrast, 0.0, t["envelope_bfactor"][i], device=sim.device)
        s = proj.project(A[i:i + 1], sh[i:i + 1], ctf)
        sd = torch.sqrt(masked_variance(s, t["mask_radius_px"][i]) / t["snr"][i])
        img = s + sd * torch.randn(s.shape, generator=g, device=sim.device)
        normalize_background(img, ramp=True)
    _sync(sim.device)
    return n / (time.perf_counter() - t0)


def stream_rate(sim: ParticleSimulator, n: int, batch: int, seed: int, repeats: int = 3) -> tuple[float, float, list]:
    """Best of ``repeats`` timed passes over n particles (a shared machine's other jobs only ever
    slow a pass down), with every pass's rate."""
    sim.generate(min(batch, 64), seed=seed + 99)  # warm-up: projector cache, kernels
    rates, best_dt = [], None
    for _ in range(repeats):
        _sync(sim.device)
        t0 = time.perf_counter()
        done = 0
        for b in sim.stream(batch, seed, n_batches=max(1, n // batch)):
            done += len(b)
        _sync(sim.device)
        dt = time.perf_counter() - t0
        rates.append(round(done / dt, 1))
        best_dt = dt if best_dt is None else min(best_dt, dt)
    return done / best_dt, best_dt, rates


def projector_rate(sim: ParticleSimulator, n: int, batch: int, seed: int) -> float:
    proj = sim.projector(0, 0)
    t = sim.sample(batch, np.random.default_rng(seed))
    A = torch.as_tensor(euler_to_matrix(np.stack([t["rot"], t["tilt"], t["psi"]], -1)), dtype=torch.float32,
                        device=sim.device)
    proj.project(A[:8])
    best = 0.0
    for _ in range(3):
        _sync(sim.device)
        t0 = time.perf_counter()
        reps = max(1, n // batch)
        for _ in range(reps):
            proj.project(A)
        _sync(sim.device)
        best = max(best, reps * batch / (time.perf_counter() - t0))
    return best


def bench_speed(n: int, batch: int, seed: int, device: str, threads: int, n_base: int) -> list[dict]:
    torch.set_num_threads(threads)
    box, px = 128, 1.5
    vol = blob_phantom(box, seed)
    out = []
    configs = [
        ("sim_particles_per_s_128px", dict()),
        ("sim_particles_per_s_128px_bandlimited64", dict(projection_box=64)),
        ("sim_particles_per_s_128px_realistic_junk10", dict(noise="realistic", ice_gradient=(0.0, 1.0), junk=0.1,
                                                            snr=(0.01, 1.0))),
    ]
    base_sim = ParticleSimulator(vol, SimulatorConfig(pixel_size=px, snr=0.1), device=device)
    base = naive_loop(base_sim, n_base, seed)
    ceiling = projector_rate(base_sim, n, batch, seed)
    exact_clean = base_sim.generate(32, seed=seed + 7, return_clean=True).clean
    for name, kw in configs:
        kw = {"snr": 0.1, **kw}
        sim = ParticleSimulator(vol, SimulatorConfig(pixel_size=px, **kw), device=device)
        extra = {}
        if "projection_box" in kw:  # how close the band-limited particles are to the exact ones
            c = sim.generate(32, seed=seed + 7, return_clean=True).clean
            a = c - c.mean(dim=(-2, -1), keepdim=True)
            b = exact_clean - exact_clean.mean(dim=(-2, -1), keepdim=True)
            r = (a * b).sum(dim=(-2, -1)) / torch.sqrt((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1)))
            extra = {"clean_ncc_vs_exact_min": round(float(r.min()), 5)}
        load0 = _load()
        rate, dt, rates = stream_rate(sim, n, batch, seed)
        out.append({"metric": name + ("" if threads == 2 or device != "cpu" else f"_{threads}thread"),
                    "value": round(rate, 1), "baseline": round(base, 1), "ratio": round(rate / base, 2),
                    "n": int(rate * dt + 0.5), "seed": seed, "device": device, "seconds": round(dt, 3),
                    "batch": batch, "threads": threads, "load_avg": [load0, _load()], "passes_per_s": rates,
                    "projector_only_per_s": round(ceiling, 1),
                    "baseline_is": f"same pipeline one particle at a time ({n_base} particles, best of 3), "
                                   "exact projection",
                    "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}, **extra})
    return out


# -- realism --------------------------------------------------------------------------------------------
def _read_real(name: str, px: float):
    import mrcfile  # the bench may read the real files directly (core never sees them)

    with mrcfile.open(DATA / "real-particles" / name, permissive=True) as m:
        x = torch.from_numpy(np.asarray(m.data, dtype=np.float32).copy())
    return x, px


def _star_ctf(name: str):
    import starfile

    d = starfile.read(DATA / "real-particles" / name)
    p = d["particles"] if isinstance(d, dict) else d
    opt = d.get("optics") if isinstance(d, dict) else None
    src = opt if opt is not None else p
    v, cs, q0 = (float(src[k].iloc[0]) for k in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    du, dv, da = (p[k].to_numpy(float) for k in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))
    return du, dv, da, v, cs, q0


def _log_shape(p: np.ndarray) -> np.ndarray:
    lp = np.log10(np.maximum(p, 1e-30))
    return lp - lp.mean()


def spectral_distance(sim_imgs: torch.Tensor, real_shape: np.ndarray) -> float:
    _, p = radial_power_spectrum(sim_imgs)
    return float(np.sqrt(np.mean((_log_shape(p[1:64]) - real_shape) ** 2)))


def pixel_stats(x: torch.Tensor) -> dict:
    v = x.flatten().double().numpy()
    return {"skew": round(float(stats.skew(v)), 3), "excess_kurtosis": round(float(stats.kurtosis(v)), 3)}


def baseline_images(vol, t: dict, px: float, box: int, snr: float, seed: int) -> torch.Tensor:
    """Projection without CTF + white noise at the same SNR definition, RELION-normalised."""
    proj = Projector(vol.to(torch.float32))
    ang = np.stack([t["rot"], t["tilt"], t["psi"]], -1)
    s = proj.project(torch.as_tensor(euler_to_matrix(ang), dtype=torch.float32),
                     torch.as_tensor(np.stack([t["shift_x"], t["shift_y"]], -1) / px))
    sd = torch.sqrt(masked_variance(s, t["mask_radius_px"]) / snr)
    g = torch.Generator().manual_seed(seed)
    return normalize_background(s + sd[:, None, None] * torch.randn(s.shape, generator=g), ramp=True)


def bench_realism(seed: int, n_sim: int) -> list[dict]:
    torch.set_num_threads(2)
    from cryolens.core.mrc import read_map

    vol_path = DATA / "maps" / "ribosome_4ug0_scattering_potential_from_cistem.mrc"
    vol, vpx = read_map(vol_path, strict=False)
    vpx = vpx or 4.0
    out = []
    for name, star, px_real in (("empiar_10076_7.mrc", "empiar_10076_7.star", 1.31),
                                ("relion31.mrcs", "relion31.star", 2.806)):
        t0 = time.perf_counter()
        real, _ = _read_real(name, px_real)
        box = 128
        px = px_real * real.shape[-1] / box
        real_ds = normalize_background(fourier_resize(real, box), ramp=True)
        _, pr = radial_power_spectrum(real_ds)
        real_shape = _log_shape(pr[1:64])
        du, dv, da, kv, cs, q0 = _star_ctf(star)
        ast = du - dv
        ctf = CTFDistribution((0.0, 1.0), (du.min(), du.max()), (ast.min(), ast.max()), (da.min(), da.max()))
        res = {}
        for method in ("cryolens", "cryolens_white_noise", "baseline"):
            sim = ParticleSimulator(vol, SimulatorConfig(box=box, pixel_size=px, volume_pixel_size=vpx, ctf=ctf,
                                                         voltage=kv, cs=cs, amp_contrast=q0,
                                                         noise="white" if method != "cryolens" else "realistic"))
            best = (np.inf, None, None)
            for snr in SNRS:
                sim.snr = snr
                if method == "baseline":
                    t = sim.sample(n_sim, np.random.default_rng(seed))
                    imgs = baseline_images(sim._volume(0, 0, box), t, px, box, snr, seed)
                else:
                    imgs = sim.generate(n_sim, seed=seed).images
                d = spectral_distance(imgs, real_shape)
                if d < best[0]:
                    best = (d, snr, imgs)
            res[method] = best
        ours, base = res["cryolens"], res["baseline"]
        rv = real_ds.flatten().double().numpy()
        ks = {m: round(float(stats.ks_2samp(res[m][2].flatten().double().numpy(), rv).statistic), 4) for m in res}
        out.append({"metric": f"spectral_shape_distance_{Path(name).stem}", "value": round(ours[0], 4),
                    "baseline": round(base[0], 4), "ratio": round(ours[0] / base[0], 3), "n": n_sim, "seed": seed,
                    "device": "cpu", "seconds": round(time.perf_counter() - t0, 2),
                    "unit": "RMS of centred log10 radial power over shells 1..63 (lower is better)",
                    "pixel_size_A": round(px, 4), "box": box, "n_real": int(real.shape[0]),
                    "best_snr": {m: res[m][1] for m in res},
                    "ablation_cryolens_white_noise": round(res["cryolens_white_noise"][0], 4),
                    "pixel_stats": {"real": pixel_stats(real_ds), **{m: pixel_stats(res[m][2]) for m in res}},
                    "pixel_ks_vs_real": ks,
                    "baseline_is": "projection without CTF + white noise, same SNR definition and normalisation",
                    "noise_model_fitted_on": "empiar_10076_7 background" if "empiar" in name else "held out"})
    return out


# -- noise fit -------------------------------------------------------------------------------------------
def fit_noise() -> dict:
    """Least squares of log radial background spectra: EMPIAR-10076 (r > 0.4 box, tapered) vs the
    model PSD averaged over the particles' CTFs; the rounded result is NoiseModel.realistic()."""
    from scipy.optimize import least_squares

    from cryolens.core.images import radial_frequency_grid

    real, px = _read_real("empiar_10076_7.mrc", 1.31)
    du, dv, da, kv, cs, q0 = _star_ctf("empiar_10076_7.star")
    box = real.shape[-1]
    r = radius_grid(box)
    f, p = radial_power_spectrum(real, px, ((r - 0.40 * box) / (0.05 * box)).clamp(0, 1))
    ctf = ctf_2d(box, px, du, dv, da, kv, cs, q0)
    k = radial_frequency_grid(box, True, None, None, torch.float64)
    sh = torch.round(k * box).long().flatten()
    w = rfft_weights(box, None, torch.float64).expand(box, -1).flatten()
    keep = sh < box // 2 + 1
    den = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(0, sh[keep], w[keep])
    sel = (f > 1 / 300) & (f <= 0.5 / px)

    def model_shape(prm):
        m = NoiseModel.coloured(float(prm[0]), float(np.exp(prm[1])), float(prm[2]), float(prm[3]))
        psd = noise_psd(m, box, px, ctf).mean(0).to(torch.float64).flatten()
        num = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(0, sh[keep], (psd * w)[keep])
        return (num / den).numpy()

    def resid(prm):
        d = np.log(p[sel]) - np.log(model_shape(prm)[sel])
        return d - d.mean()

    best = None
    for s0 in (1.0, 4.0):
        for k0 in (10.0, 40.0):
            for c0 in (0.0, 0.4):
                fit = least_squares(resid, [s0, np.log(k0), 0.5, c0],
                                    bounds=([0, np.log(2), 0, 0], [30, np.log(500), 20, 0.95]))
                best = fit if best is None or fit.cost < best.cost else best
    rm = NoiseModel.realistic()
    rounded = [rm.slope, np.log(rm.knee_A), rm.floor, rm.ctf_fraction]
    white = [0.0, np.log(10.0), 0.0, 0.0]

    def rms(prm):
        return round(float(np.sqrt(np.mean(resid(prm) ** 2))), 4)

    return {"metric": "noise_model_fit_empiar10076_background", "value": rms(rounded),
            "baseline": rms(white), "ratio": round(rms(rounded) / rms(white), 3),
            "unit": "RMS of centred natural-log radial power (realistic() vs white)",
            "best_fit": {"slope": round(float(best.x[0]), 3), "knee_A": round(float(np.exp(best.x[1])), 2),
                         "floor": round(float(best.x[2]), 3), "ctf_fraction": round(float(best.x[3]), 3),
                         "rms": round(float(np.sqrt(2 * best.cost / sel.sum())), 4)},
            "realistic": {"slope": rm.slope, "knee_A": rm.knee_A, "floor": rm.floor, "ctf_fraction": rm.ctf_fraction},
            "n": int(real.shape[0]), "seed": 0, "device": "cpu", "seconds": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-baseline", type=int, default=64)
    ap.add_argument("--n-realism", type=int, default=128)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-realism", action="store_true")
    ap.add_argument("--fit-noise", action="store_true")
    args = ap.parse_args()
    if args.fit_noise:
        t0 = time.perf_counter()
        r = fit_noise()
        r["seconds"] = round(time.perf_counter() - t0, 2)
        print(json.dumps([r], indent=1))
        return
    out = []
    if not args.skip_speed:
        out += bench_speed(args.n, args.batch, args.seed, "cpu", args.threads, args.n_baseline)
        if args.threads != 1:
            out += bench_speed(args.n // 2, args.batch, args.seed, "cpu", 1, args.n_baseline)[:1]
        if torch.cuda.is_available():
            out += bench_speed(args.n * 8, args.batch * 4, args.seed, "cuda", args.threads, args.n_baseline)
    if not args.skip_realism:
        if (DATA / "real-particles" / "empiar_10076_7.mrc").exists():
            out += bench_realism(args.seed, args.n_realism)
        else:
            out.append({"metric": "spectral_shape_distance", "skipped": f"{DATA} is absent"})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
