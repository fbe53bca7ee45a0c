"""Fast synthetic 2D class averages with ground truth (the RELION route is relion_ext.simulate).

A good class is what 2D classification makes of one view neighbourhood of one species: its
member particles (simulated by ``ParticleSimulator`` with their CTFs and noise) are seen in the
class frame with a realistic misalignment (in-plane angle and shift errors, out-of-plane spread),
averaged with CTF correction (Wiener: sum(ctf X) / (sum(ctf^2) + eps), as a 2D reconstruction),
low-passed at the resolution where the two half-averages' FRC drops below 0.143, and masked.
Junk classes average junk particles of one type; class-level junk (over-masked, streaky) is
applied to the average. ``mode="lowpass_projection"`` gives seed 000's class averages instead:
the noiseless projection of the view, low-passed.

Truth per class: species (or the junk type), view (rot, tilt), members, purity (fraction of
members that are true particles of the class's species), good flag.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..geometry import euler_to_matrix, uniform_orientations
from ..images import apply_soft_mask, lowpass, lowpass_filter, normalize_in_mask, radial_frequency_grid, radius_grid, soft_circular_mask
from ..particles import ClassSet, ParticleSet
from .junk import CLASS_JUNK_TYPES as CLASS_JUNK, apply_class_junk
from .particles import ParticleSimulator, SimulatorConfig



@dataclass
class ClassTruth:
    table: pd.DataFrame  # one row per class
    members: pd.DataFrame  # one row per member particle (class_id, species, junk, pose)


def frc_resolution(half1: torch.Tensor, half2: torch.Tensor, pixel_size: float, threshold: float = 0.143) -> torch.Tensor:
    """Resolution (A) where the FRC of two half-averages first drops below ``threshold`` (per image)."""
    box = half1.shape[-1]
    f1, f2 = torch.fft.rfft2(half1), torch.fft.rfft2(half2)
    shell = (radial_frequency_grid(box, True, None, half1.device) * box).round().long().clamp(max=box // 2)
    nb = box // 2 + 1
    idx = shell.reshape(-1).expand(half1.shape[0], -1)

    def shells(x):
        out = torch.zeros((half1.shape[0], nb), dtype=torch.float64, device=half1.device)
        return out.scatter_add_(1, idx, x.reshape(half1.shape[0], -1).to(torch.float64))

    num = shells((f1 * f2.conj()).real)
    den = torch.sqrt(shells(f1.abs() ** 2) * shells(f2.abs() ** 2)).clamp_min(1e-30)
    frc = num / den
    below = (frc[:, 1:] < threshold)
    first = torch.where(below.any(1), below.float().argmax(1) + 1, torch.full_like(below[:, 0], nb - 1, dtype=torch.long))
    first = first.clamp(min=1)
    return box * pixel_size / first.to(torch.float64)


def _wiener(images: torch.Tensor, ctf: torch.Tensor, eps_fraction: float = 0.05) -> torch.Tensor:
    F = torch.fft.rfft2(images)
    num = (ctf * F).sum(0)
    den = (ctf ** 2).sum(0)
    eps = eps_fraction * den.mean()
    return torch.fft.irfft2(num / (den + eps), s=images.shape[-2:])


def _view_members(n: int, rot: float, tilt: float, spread_deg: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) rot/tilt of members scattered around a view (small-angle Gaussian on the sphere)."""
    d_tilt = rng.normal(0.0, spread_deg, n)
    d_rot = rng.normal(0.0, spread_deg, n) / max(np.sin(np.deg2rad(max(tilt, 1e-3))), 0.2)
    return np.stack([rot + d_rot, np.clip(tilt + d_tilt, 0.0, 180.0)], -1)


def synthesize_classes(volumes, n_classes: int = 20, *, box: int = 64, pixel_size: float = 3.0,
                       members=(30, 300), junk_classes: dict[str, int] | None = None,
                       view_spread_deg: float = 6.0, psi_error_deg: float = 4.0, shift_error_A: float | None = None,
                       impurity=(0.0, 0.2), mode: str = "average", diameter_A: float | None = None,
                       seed: int = 0, device="cpu", **sim_kwargs) -> tuple[ClassSet, ClassTruth]:
    """``n_classes`` good classes over the species in ``volumes`` plus ``junk_classes``
    ({junk type: count}; particle-level ``JUNK_TYPES`` or class-level ``CLASS_JUNK_TYPES`` of
    ``core.simulate.junk``).

    ``members``: particles per class (a number or a (lo, hi) range, log-uniform); ``impurity``:
    fraction of a good class's members taken from other species/junk (number or range).
    Other keyword arguments go to ``ParticleSimulator`` (snr, noise, ctf, bfactor, ...).
    """
    rng = np.random.default_rng(seed)
    sim = ParticleSimulator(volumes, SimulatorConfig(box=box, pixel_size=pixel_size, **sim_kwargs), device=device)
    n_species = len(sim.species)
    radius_px = (diameter_A / 2 / pixel_size) if diameter_A else 0.42 * box
    mask = soft_circular_mask(box, radius_px, max(2.0, 0.05 * box), device=sim.device)
    shift_error_A = pixel_size * 0.7 if shift_error_A is None else shift_error_A
    junk_classes = dict(junk_classes or {})
    plan = [("good", k % n_species, None) for k in range(n_classes)]
    plan += [("junk", None, kind) for kind, count in junk_classes.items() for _ in range(count)]
    images, rows, member_rows = [], [], []
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2 ** 62)))
    for cid, (kind, sp, jt) in enumerate(plan, start=1):
        n = int(round(_draw(members, rng, log=True)))
        rot, tilt = (float(a) for a in uniform_orientations(1, rng, draw="euler", psi=False)[0, :2])  # the view
        t = sim.sample(n, rng)
        if kind == "good" or jt in CLASS_JUNK:
            sp_cls = sp if sp is not None else int(rng.integers(n_species))
            imp = float(_draw(impurity, rng)) if kind == "good" else 0.0
            n_bad = int(round(imp * n))
            sp_ids = np.full(n, sp_cls)
            if n_bad and n_species > 1:
                others = [s for s in range(n_species) if s != sp_cls]
                sp_ids[:n_bad] = rng.choice(others, n_bad)
            _set_species(sim, t, sp_ids)
            view = _view_members(n, rot, tilt, view_spread_deg, rng)
            t["rot"], t["tilt"] = view[:, 0], view[:, 1]
            t["psi"] = rng.normal(0.0, psi_error_deg, n)  # class frame: aligned in-plane, with errors
            t["shift_x"], t["shift_y"] = (rng.normal(0.0, shift_error_A, (2, n)))
            _clear_junk(t)
            if n_bad and n_species == 1:  # impurity from junk when there is one species
                _make_junk(t, np.arange(n_bad), "empty", rng)
        else:
            _set_species(sim, t, np.full(n, int(rng.integers(n_species))))
            _clear_junk(t)
            _make_junk(t, np.arange(n), jt, rng)
        from . import junk as junk_mod

        junk_mod.sample_junk_geometry(sim, t, rng)
        if mode == "lowpass_projection" and kind == "good":
            avg, res = _lowpass_projection(sim, sp_cls, rot, tilt, pixel_size, rng)
            half_res = res
        else:
            img, ctf, _ = sim.render(t, gen)
            img = apply_soft_mask(img, radius_px, 4.0)  # RELION masks the particles with the diameter
            avg = _wiener(img, ctf)
            half_res = float("inf")
            if n > 3:  # RELION-like estimate: FRC 0.143 of the two half-averages
                h1, h2 = _wiener(img[0::2], ctf[0::2]), _wiener(img[1::2], ctf[1::2])
                half_res = float(frc_resolution(h1[None], h2[None], pixel_size)[0])
        images.append(avg)
        is_true = ~np.asarray(t["is_junk"], bool) & (np.asarray(t["species_id"]) == (sp_cls if kind == "good" or jt in CLASS_JUNK else -1))
        good = kind == "good"
        rows.append({"class_id": cid, "n_particles": n, "resolution": half_res,
                     "acc_rot": view_spread_deg, "acc_trans": shift_error_A,
                     "truth_good": good, "truth_kind": "protein" if good else jt,
                     "truth_species": sim.species[sp_cls].name if (good or jt in CLASS_JUNK) else "",
                     "truth_purity": float(is_true.mean()),
                     "truth_rot": rot, "truth_tilt": tilt,
                     "particle_radius_px": float(sim.mask_radii_px[t["species_id"][0]])})
        member_rows.append(pd.DataFrame({"class_id": cid, "species": t["species"], "is_junk": t["is_junk"],
                                         "junk_type": t["junk_type"], "rot": t["rot"], "tilt": t["tilt"],
                                         "psi": t["psi"], "true_member": is_true}))
    # RELION low-passes every reference at the run's current resolution (not per class), applies
    # the particle-diameter mask with zeros outside (--zero_mask), then we scale to unit variance
    res = np.array([r["resolution"] for r in rows], dtype=np.float64)
    run_res = float(np.min(res[np.isfinite(res)])) if np.isfinite(res).any() else 4.0 * pixel_size
    run_res = max(run_res, 2.05 * pixel_size)
    stack_t = torch.stack(images)
    if mode != "lowpass_projection":
        stack_t = lowpass(stack_t, pixel_size, run_res)
    out = []
    for (kind, sp, jt), avg, row in zip(plan, stack_t, rows):
        avg = normalize_in_mask(avg, mask, eps=1e-6, ddof=1)
        if jt in CLASS_JUNK:
            avg = apply_class_junk(jt, avg, rng, float(row["particle_radius_px"]))
        out.append(avg.cpu().to(torch.float32))
    images = out
    table = pd.DataFrame(rows)
    table["distribution"] = table["n_particles"] / table["n_particles"].sum()
    stack = torch.stack(images).numpy()
    members_df = pd.concat(member_rows, ignore_index=True)
    parts = ParticleSet(pd.DataFrame({"image_stack": "members_not_rendered", "image_index": np.arange(len(members_df)),
                                      "class_id": members_df["class_id"].to_numpy()}), source="cryolens synthetic classes")
    cs = ClassSet(table[["class_id", "n_particles", "distribution", "resolution", "acc_rot", "acc_trans"]].copy(),
                  stack, pixel_size, parts, source="cryolens synthetic classes",
                  meta={"simulate": {"mode": mode, "seed": seed}})
    return cs, ClassTruth(table, members_df)


def _draw(x, rng: np.random.Generator, log: bool = False) -> float:
    if np.isscalar(x):
        return float(x)
    lo, hi = float(x[0]), float(x[1])
    if log and lo > 0:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def _set_species(sim: ParticleSimulator, t: dict, sp_ids: np.ndarray) -> None:
    t["species_id"] = sp_ids.astype(np.int64)
    t["species"] = np.array([sim.species[s].name for s in sp_ids], dtype=object)
    nconf = np.array([len(sim.conformation_values[s]) for s in sp_ids])
    st = np.minimum(t["conformation_state"], nconf - 1)
    t["conformation_state"] = st
    t["conformation"] = np.array([sim.conformation_values[s][i] for s, i in zip(sp_ids, st)])
    t["mask_radius_px"] = sim.mask_radii_px[sp_ids]


def _clear_junk(t: dict) -> None:
    n = len(t["rot"])
    t["is_junk"] = np.zeros(n, bool)
    t["junk_type"] = np.array(["none"] * n, dtype=object)
    t["has_protein"] = np.ones(n, bool)


def _make_junk(t: dict, rows: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    from . import junk as junk_mod

    jt, has_protein, jseed = junk_mod.sample_junk({kind: 1.0}, len(rows), rng)
    t["is_junk"][rows] = True
    t["junk_type"][rows] = jt
    t["has_protein"][rows] = has_protein
    t["junk_seed"][rows] = jseed


def _lowpass_projection(sim: ParticleSimulator, sp: int, rot: float, tilt: float, pixel_size: float,
                        rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    A = torch.as_tensor(euler_to_matrix(np.array([[rot, tilt, 0.0]])), dtype=torch.float32, device=sim.device)
    proj = sim.project(sp, len(sim.conformation_values[sp]) // 2, A, np.zeros((1, 2)), None)
    res = float(rng.uniform(8.0, 25.0))
    res = max(res, 2.05 * pixel_size)
    return lowpass(proj, pixel_size, res)[0], res


def wiener_transfer(n: int, box: int, pixel_size: float, generator: torch.Generator | None = None, *,
                    members=(20, 300), eps_fraction=(0.01, 0.2), pool: int = 64, voltage: float = 300.0,
                    cs: float = 2.7, amp_contrast: float = 0.1, device="cpu") -> torch.Tensor:
    """(n, box, box//2+1) rfft-layout fraction of the signal a CTF-corrected class average keeps:
    sum(CTF^2) / (sum(CTF^2) + eps), over the CTFs of its members (``_wiener``'s average written
    as a transfer). Low frequencies, where CTF^2 is only the amplitude contrast squared, and the
    CTF zeros are damped. Each average draws its member count (log-uniform), its members'
    micrographs from a pool of ``pool`` defoci of ``CTFDistribution.broad()``, and eps as a
    fraction of the mean of sum(CTF^2). Optics default to ``ParticleSimulator``'s."""
    from ..ctf import ctf_2d
    from .particles import CTFDistribution

    rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=generator)))
    du, dv, ang = CTFDistribution.broad().sample_micrographs(pool, rng)
    c2 = ctf_2d(box, pixel_size, du, dv, ang, voltage, cs, amp_contrast, device=device).reshape(pool, -1) ** 2
    m = np.exp(rng.uniform(np.log(members[0]), np.log(members[1]), n)).round().astype(np.int64)
    counts = torch.as_tensor(rng.multinomial(m, np.full(pool, 1.0 / pool)), dtype=torch.float32, device=device)
    den = counts @ c2  # (n, S)
    eps = torch.as_tensor(np.exp(rng.uniform(np.log(eps_fraction[0]), np.log(eps_fraction[1]), n)),
                          dtype=torch.float32, device=device)[:, None] * den.mean(1, keepdim=True)
    return (den / (den + eps)).reshape(n, box, box // 2 + 1)


def class_average_like(proj: torch.Tensor, pixel_size: float, generator: torch.Generator | None = None, *,
                       resolution_A=(8.0, 30.0), bfactor=(0.0, 300.0), snr=(3.0, 50.0), psi_error_deg=(0.0, 6.0),
                       shift_error_px=(0.0, 1.0), n_copies: int = 4, mask_radius=(0.38, 0.48),
                       ctf_corrected: bool = False) -> torch.Tensor:
    """Noiseless projections (N, b, b) made to look like 2D class averages, batched and cheap
    (for training on thousands of proteins, where averaging simulated particles is too slow):

    misalignment blur (the mean of ``n_copies`` copies with in-plane angle and shift errors), the
    residual noise of an average (white, at the class's SNR), the envelope a CTF-corrected average
    keeps (B-factor), a low-pass at the class's resolution, a soft mask at the particle diameter
    and zero mean / unit variance inside it. Each image draws its own values from the ranges
    (log-uniform for resolution and SNR), with ``generator`` for reproducibility.
    ``ctf_corrected``: also the transfer of a CTF-corrected average (``wiener_transfer``): its
    damped low frequencies and CTF zeros are what set particle-made class averages apart from
    clean renders (bench/bench_identify_gap.py).
    """
    from ..nn.augment import affine_resample

    n, b = proj.shape[0], proj.shape[-1]
    dev = proj.device
    g = generator

    def u(lo_hi, log: bool = False) -> torch.Tensor:
        lo, hi = (float(lo_hi), float(lo_hi)) if np.isscalar(lo_hi) else map(float, lo_hi)
        r = torch.rand(n, generator=g)
        return torch.exp(np.log(lo) + r * (np.log(hi) - np.log(lo))) if log else lo + r * (hi - lo)

    x = proj.float()
    if n_copies > 1:
        sd_psi, sd_shift = torch.deg2rad(u(psi_error_deg)), u(shift_error_px)
        acc = torch.zeros_like(x)
        for _ in range(n_copies):
            a = torch.randn(n, generator=g) * sd_psi
            c, s = torch.cos(a), torch.sin(a)
            rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
            acc += affine_resample(x, rot.to(dev), (torch.randn(n, 2, generator=g) * sd_shift[:, None]).to(dev))
        x = acc / n_copies
    r0 = b * u(mask_radius)
    inside = radius_grid(b, dev)[None] < r0.to(dev)[:, None, None]
    sig = torch.stack([x[i][inside[i]].std() for i in range(n)]).clamp_min(1e-12)
    x = x + torch.randn(x.shape, generator=g).to(dev) * (sig / u(snr, log=True).to(dev).sqrt())[:, None, None]
    f = radial_frequency_grid(b, True, pixel_size, dev)[None]  # 1/A
    lp = lowpass_filter(b, pixel_size, u(resolution_A, log=True).clamp_min(2.05 * pixel_size), device=dev)
    env = torch.exp(-u(bfactor).to(dev)[:, None, None] * f ** 2 / 4)
    if ctf_corrected:
        env = env * wiener_transfer(n, b, pixel_size, g, device=dev)
    x = torch.fft.irfft2(torch.fft.rfft2(x) * lp * env, s=(b, b))
    mask = torch.stack([soft_circular_mask(b, float(r), max(2.0, 0.05 * b), device=dev) for r in r0])
    return normalize_in_mask(x, mask).to(torch.float32)
