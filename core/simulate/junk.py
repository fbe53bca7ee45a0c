"""Junk: the particle-level and class-level rubbish of real data sets, with names and ground truth.

Particle-level types (``JUNK_TYPES``), rendered by ``ParticleSimulator`` with the particle's own
CTF, noise, ice background and normalisation; contrasts are in units of the particle's noise sd
(so they do not depend on the SNR of the good particles). Junk objects are drawn on a grid twice
the box, passed through the CTF there and cropped, as if extracted from a micrograph (no
wrap-around of edges or CTF fringes):

* ``empty``: a pick on empty ice, noise (and ice background) only.
* ``ice_contamination``: 1-3 dense ice/contamination blobs (domes, 16-70% of the box across,
  centred up to 0.45 box from the centre, often cut by the box edge), bright (75%) or dark,
  4-10 noise sd at the peak; thick ice is a strong
  amplitude object, so 70% of its contrast bypasses the CTF's oscillation (envelope only).
* ``crystalline_ice``: a crystal domain with a hexagonal lattice of 3.67-3.90 A spacing (ice Ic
  (111) / Ih (100)); when the pixel is too coarse to carry it (< 2.2 px) a 2.2-3.5 px lattice
  stands in. Lattice and domain through the CTF; sharp Bragg peaks in the spectrum.
* ``carbon_edge``: the edge of the carbon film crossing the box: a straight step (0.5-2 px wide)
  of 2-6 noise sd with amorphous texture, 30% amplitude contrast, Fresnel fringes from the CTF;
  half of them also hold a particle. A straight edge gives a line (streak) in Fourier space.
* ``aggregate``: 2-4 overlapping copies of the species at independent poses, 0.7-1.4 particle
  radii apart (the first at the particle's pose and shift).
* ``off_centre``: the particle 0.3-0.5 box from the centre (truth shift records it), cut by the
  box edge (placed without wrap-around).
* ``ring_artefact``: a small dense bead (gold/ferritin-like, radius 2-6 A) within 1 px of the centre: its
  image is the CTF's point-spread function, concentric Fresnel rings across the box (peak 5-12
  noise sd).

Class-level types (``CLASS_JUNK_TYPES``, applied to 2D class averages by ``core.simulate.classes``):

* ``over_masked``: the average cut by a hard circular mask inside the particle (50-85% of its radius).
* ``streaky``: the average smeared along one direction over 15-35% of the box.

Particle-level types also make junk classes (averages of aligned junk particles sharing one
geometry). Every row of a truth table has ``is_junk``, ``junk_type`` ("none" for good ones),
``has_protein`` and ``junk_seed`` (the seed of the junk's geometry: same seed, same junk).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import euler_to_matrix, uniform_orientations
from ..images import radial_frequency_grid, radius_grid

__all__ = ["JUNK_TYPES", "CLASS_JUNK_TYPES", "DESCRIPTIONS", "junk_fractions", "sample_junk",
           "sample_junk_geometry", "apply_class_junk", "render"]

JUNK_TYPES = ("empty", "ice_contamination", "crystalline_ice", "carbon_edge", "aggregate", "off_centre",
              "ring_artefact")
CLASS_JUNK_TYPES = ("over_masked", "streaky")
DESCRIPTIONS = {
    "none": "a good particle",
    "empty": "noise-only pick on empty ice",
    "ice_contamination": "dense bright/dark ice or contamination blobs",
    "crystalline_ice": "crystalline ice: hexagonal lattice texture with Bragg peaks",
    "carbon_edge": "straight carbon-film edge (high-contrast step) crossing the box",
    "aggregate": "several overlapping copies of the protein",
    "off_centre": "particle far off-centre, cut by the box edge",
    "ring_artefact": "dense bead whose CTF rings dominate the box",
    "over_masked": "class average cut by a hard mask inside the particle",
    "streaky": "class average smeared along one direction",
}
_NO_PROTEIN = {"empty", "ice_contamination", "crystalline_ice", "ring_artefact"}


def junk_fractions(junk) -> dict[str, float]:
    """{type: fraction} from None, a total fraction (spread evenly) or a dict; checked."""
    if junk is None:
        return {}
    if np.ndim(junk) == 0 and not isinstance(junk, dict):
        f = float(junk)
        return {k: f / len(JUNK_TYPES) for k in JUNK_TYPES} if f > 0 else {}
    out = {str(k): float(v) for k, v in dict(junk).items() if float(v) > 0}
    bad = [k for k in out if k not in JUNK_TYPES]
    if bad:
        hint = " (class-level types go to core.simulate.classes.synthesize_classes)" if set(bad) & set(CLASS_JUNK_TYPES) else ""
        raise ValueError(f"unknown particle junk type(s) {bad}{hint}; known: {', '.join(JUNK_TYPES)}")
    if sum(out.values()) > 1 + 1e-9:
        raise ValueError(f"junk fractions add up to {sum(out.values()):.3f} > 1")
    return out


def sample_junk(fracs: dict[str, float], n: int, rng: np.random.Generator):
    """(junk_type (object array, "none" for good), has_protein, junk_seed) for n particles."""
    names = ["none"] + list(fracs)
    p = np.array([1.0 - sum(fracs.values())] + list(fracs.values()))
    jt = np.array(names, dtype=object)[rng.choice(len(names), size=n, p=p / p.sum())] if fracs else \
        np.full(n, "none", dtype=object)
    coin = rng.random(n)
    has = np.array([k not in _NO_PROTEIN for k in jt]) & ~((jt == "carbon_edge") & (coin < 0.5))
    seeds = np.where(jt != "none", rng.integers(1, 2 ** 62, n), 0).astype(np.int64)
    return jt, has, seeds


def sample_junk_geometry(sim, t: dict, rng: np.random.Generator) -> None:
    """Junk geometry that belongs in the truth table: the large shift of off-centre particles."""
    rows = np.flatnonzero(t["junk_type"] == "off_centre")
    for r in rows:
        g = np.random.default_rng(int(t["junk_seed"][r]))
        d = g.uniform(0.3, 0.5) * sim.box
        a = g.uniform(0, 2 * np.pi)
        # RELION origin: the particle centre sits at box//2 - origin
        t["shift_x"][r] = -d * np.cos(a) * sim.pixel_size
        t["shift_y"][r] = -d * np.sin(a) * sim.pixel_size


def reference_centred(junk_type: np.ndarray) -> np.ndarray:
    """Rows whose noise reference is the centred particle rather than the one at its shift."""
    return np.asarray(junk_type == "off_centre", dtype=bool)


# -- rendering --------------------------------------------------------------------------------------
@dataclass
class RenderContext:
    sim: object
    t: dict
    A: torch.Tensor
    shifts: np.ndarray  # RELION origins, px
    ctf: torch.Tensor
    sigma: torch.Tensor
    ref: torch.Tensor  # reference (good particle) signal

    @property
    def box(self) -> int:
        return self.sim.box

    @property
    def device(self):
        return self.sim.device

    @property
    def padded(self) -> int:
        """Junk objects are drawn on a grid twice the box and cropped after the CTF, like a
        particle extracted from a micrograph: no wrap-around of edges or fringes."""
        return 2 * self.box

    def coords(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, x) pixel coordinates on the padded grid, 0 at the box centre."""
        P = self.padded
        c = torch.arange(P, device=self.device, dtype=torch.float32) - P // 2
        return c[:, None].expand(P, P), c[None, :].expand(P, P)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        s = self.padded // 2 - self.box // 2
        return x[..., s:s + self.box, s:s + self.box]

    def transfer(self, obj: torch.Tensor, rows, amp_fraction: float = 0.0) -> torch.Tensor:
        """Specimen objects on the padded grid (m, 2 box, 2 box) through the rows' CTF (the same
        parameters, on the padded grid), cropped to the box. ``amp_fraction`` of the contrast is
        amplitude contrast of a thick object (B-factor envelope only, no oscillation)."""
        from ..ctf import ctf_2d

        t, P = self.t, self.padded
        rows = np.asarray(rows)
        T = ctf_2d(P, self.sim.pixel_size, t["defocus_u"][rows], t["defocus_v"][rows], t["defocus_angle"][rows],
                   t["voltage"][rows], t["cs"][rows], t["amp_contrast"][rows], t["phase_shift"][rows],
                   t["envelope_bfactor"][rows], device=self.device)
        if amp_fraction:
            s2 = radial_frequency_grid(P, True, self.sim.pixel_size, self.device, torch.float32) ** 2
            b = torch.as_tensor(np.asarray(t["envelope_bfactor"][rows], dtype=np.float32), device=self.device)
            T = (1 - amp_fraction) * T + amp_fraction * torch.exp(-b[:, None, None] / 4.0 * s2)
        return self.crop(torch.fft.irfft2(torch.fft.rfft2(obj) * T, s=(P, P)))

    def place(self, sp, st, A: torch.Tensor, origins_px: np.ndarray) -> torch.Tensor:
        """Projections without CTF at RELION origins of any size on the padded grid: the
        sub-pixel part is a Fourier shift of the centred (compact) projection, the integer part a
        zero-filled translation; after ``transfer`` a particle far off-centre is cut by the box."""
        origins_px = np.asarray(origins_px, dtype=np.float64).reshape(-1, 2)
        whole = np.round(origins_px).astype(np.int64)
        frac = origins_px - whole
        box, P = self.box, self.padded
        out = torch.zeros((len(origins_px), P, P), dtype=torch.float32, device=self.device)
        proj = self.sim._project_groups(np.asarray(sp), np.asarray(st), A, frac, None)
        for i in range(len(origins_px)):
            p = proj[i]
            # the centre box//2 - origin of the box sits at P//2 - origin on the padded grid
            y0 = P // 2 - box // 2 - int(whole[i, 1])
            x0 = P // 2 - box // 2 - int(whole[i, 0])
            ys, xs = slice(max(0, -y0), min(box, P - y0)), slice(max(0, -x0), min(box, P - x0))
            if ys.start < ys.stop and xs.start < xs.stop:
                out[i, ys.start + y0:ys.stop + y0, xs.start + x0:xs.stop + x0] = p[ys, xs]
        return out


def _rngs(ctx: RenderContext, rows) -> list[np.random.Generator]:
    return [np.random.default_rng(int(s)) for s in ctx.t["junk_seed"][rows]]


def _scale_peak(sig: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    peak = sig.abs().flatten(1).max(1).values.clamp_min(1e-12)
    return sig * (target / peak)[:, None, None]


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def _empty(ctx: RenderContext, rows) -> torch.Tensor:
    return torch.zeros((len(rows), ctx.box, ctx.box), device=ctx.device)


def _ellipse(yy, xx, cx, cy, a, b, th):
    """Normalised elliptical radius q (1 on the ellipse) around (cx, cy), axes a, b, angle th."""
    u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
    v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
    return torch.sqrt((u / a) ** 2 + (v / b) ** 2)


def _sd(ctx: RenderContext, rows) -> torch.Tensor:
    return ctx.sigma[torch.as_tensor(np.asarray(rows), device=ctx.device)]


def _ice(ctx: RenderContext, rows) -> torch.Tensor:
    yy, xx = ctx.coords()
    box = ctx.box
    obj = torch.zeros((len(rows), ctx.padded, ctx.padded), device=ctx.device)
    target = np.empty(len(rows))
    for i, g in enumerate(_rngs(ctx, rows)):
        for _ in range(int(g.integers(1, 4))):
            r, phi = g.uniform(0, 0.45) * box, g.uniform(0, 2 * np.pi)
            a, b = g.uniform(0.08, 0.35, 2) * box  # semi-axes
            q = _ellipse(yy, xx, r * np.cos(phi), r * np.sin(phi), a, b, g.uniform(0, np.pi))
            obj[i] += torch.sqrt((1 - q * q).clamp_min(0))  # a dome of ice
        obj[i] = obj[i].clamp_max(1.5) * (1.0 if g.random() < 0.75 else -1.0)
        target[i] = g.uniform(4, 10)
    sig = ctx.transfer(obj, rows, amp_fraction=0.7)
    return _scale_peak(sig, torch.as_tensor(target, device=ctx.device, dtype=torch.float32) * _sd(ctx, rows))


def _lattice_period_px(g: np.random.Generator, pixel_size: float) -> float:
    d = g.uniform(3.67, 3.90) / pixel_size
    return d if d >= 2.2 else g.uniform(2.2, 3.5)


def _crystal(ctx: RenderContext, rows) -> torch.Tensor:
    yy, xx = ctx.coords()
    box, P = ctx.box, ctx.padded
    dom = torch.zeros((len(rows), P, P), device=ctx.device)
    lat = torch.zeros_like(dom)
    c_lat, c_mass = np.empty(len(rows)), np.empty(len(rows))
    for i, g in enumerate(_rngs(ctx, rows)):
        r, phi = g.uniform(0, 0.3) * box, g.uniform(0, 2 * np.pi)
        a, b = g.uniform(0.3, 0.7, 2) * box
        q = _ellipse(yy, xx, r * np.cos(phi), r * np.sin(phi), a, b, g.uniform(0, np.pi))
        dom[i] = _smoothstep((1 - q) * min(a, b) / 3.0)  # soft edge ~3 px
        period = _lattice_period_px(g, ctx.sim.pixel_size)
        t0 = g.uniform(0, np.pi / 3)
        for j in range(3):  # hexagonal lattice: three waves 60 degrees apart
            ang = t0 + j * np.pi / 3
            phase = g.uniform(0, 2 * np.pi)
            lat[i] += torch.cos(2 * np.pi / period * (xx * math.cos(ang) + yy * math.sin(ang)) + phase)
        c_lat[i], c_mass[i] = g.uniform(0.7, 2.0), g.uniform(1.0, 3.0)
    sd = _sd(ctx, rows)
    mass = _scale_peak(ctx.transfer(dom, rows, amp_fraction=0.7),
                       torch.as_tensor(c_mass, device=ctx.device, dtype=torch.float32) * sd)
    lsig = ctx.transfer(dom * lat, rows)
    inside = (ctx.crop(dom) > 0.5).to(lsig.dtype)
    lsd = torch.sqrt(((lsig * inside) ** 2).sum(dim=(-2, -1)) / inside.sum(dim=(-2, -1)).clamp_min(1))
    scale = torch.as_tensor(c_lat, device=ctx.device, dtype=torch.float32) * sd / lsd.clamp_min(1e-12)
    return mass + lsig * scale[:, None, None]


def _carbon(ctx: RenderContext, rows) -> torch.Tensor:
    yy, xx = ctx.coords()
    box, P = ctx.box, ctx.padded
    obj = torch.zeros((len(rows), P, P), device=ctx.device)
    step = torch.zeros_like(obj)
    height = np.empty(len(rows))
    kgrid = radial_frequency_grid(P, True, None, ctx.device, torch.float32) * P
    for i, g in enumerate(_rngs(ctx, rows)):
        th = g.uniform(0, 2 * np.pi)
        d = g.uniform(-0.3, 0.3) * box
        w = g.uniform(0.5, 2.0)
        s = xx * math.cos(th) + yy * math.sin(th) - d  # signed distance to the edge (px)
        step[i] = _smoothstep(s / (2 * w) + 0.5)
        tex = torch.from_numpy(g.standard_normal((P, P)).astype(np.float32)).to(ctx.device)
        tex = torch.fft.irfft2(torch.fft.rfft2(tex) / (1 + kgrid), s=(P, P))  # amorphous carbon
        obj[i] = step[i] * (1 + 0.15 * tex / tex.std().clamp_min(1e-12))
        height[i] = g.uniform(2, 6)
    sig = ctx.transfer(obj, rows, amp_fraction=0.3)
    st = ctx.crop(step)
    on, off = (st > 0.95).to(sig.dtype), (st < 0.05).to(sig.dtype)
    h = (sig * on).sum(dim=(-2, -1)) / on.sum(dim=(-2, -1)).clamp_min(1) - \
        (sig * off).sum(dim=(-2, -1)) / off.sum(dim=(-2, -1)).clamp_min(1)
    target = torch.as_tensor(height, device=ctx.device, dtype=torch.float32) * _sd(ctx, rows)
    sig = sig * (target / torch.where(h.abs() < 1e-12, torch.ones_like(h), h))[:, None, None]
    prot = torch.as_tensor(ctx.t["has_protein"][rows], device=ctx.device, dtype=sig.dtype)
    return sig + prot[:, None, None] * ctx.ref[torch.as_tensor(rows, device=ctx.device)]


def _aggregate(ctx: RenderContext, rows) -> torch.Tensor:
    out = torch.zeros((len(rows), ctx.padded, ctx.padded), device=ctx.device)
    sp, st = ctx.t["species_id"], ctx.t["conformation_state"]
    for i, (r, g) in enumerate(zip(rows, _rngs(ctx, rows))):
        k = int(g.integers(2, 5))
        ang = uniform_orientations(k - 1, g)
        A = torch.cat([ctx.A[r:r + 1], torch.as_tensor(euler_to_matrix(ang), dtype=torch.float32, device=ctx.device)])
        dist = g.uniform(0.7, 1.4, k - 1) * ctx.t["mask_radius_px"][r]
        phi = g.uniform(0, 2 * np.pi, k - 1)
        origins = np.concatenate([ctx.shifts[r:r + 1],
                                  ctx.shifts[r] - np.stack([dist * np.cos(phi), dist * np.sin(phi)], -1)])
        out[i] = ctx.place(np.full(k, sp[r]), np.full(k, st[r]), A, origins).sum(0)
    return ctx.transfer(out, rows)


def _off_centre(ctx: RenderContext, rows) -> torch.Tensor:
    ti = torch.as_tensor(rows, device=ctx.device)
    obj = ctx.place(ctx.t["species_id"][rows], ctx.t["conformation_state"][rows], ctx.A[ti], ctx.shifts[rows])
    return ctx.transfer(obj, rows)


def _ring(ctx: RenderContext, rows) -> torch.Tensor:
    yy, xx = ctx.coords()
    obj = torch.zeros((len(rows), ctx.padded, ctx.padded), device=ctx.device)
    target = np.empty(len(rows))
    for i, g in enumerate(_rngs(ctx, rows)):
        rb = max(0.75, g.uniform(2, 6) / ctx.sim.pixel_size)
        cx, cy = g.uniform(-1, 1, 2)  # a picker centres a high-contrast bead well
        rr = torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        obj[i] = _smoothstep(rb + 0.5 - rr)  # a small dense bead, a phase object
        target[i] = g.uniform(5, 12)
    sig = ctx.transfer(obj, rows)
    return _scale_peak(sig, torch.as_tensor(target, device=ctx.device, dtype=torch.float32) * _sd(ctx, rows))


_RENDERERS = {"empty": _empty, "ice_contamination": _ice, "crystalline_ice": _crystal, "carbon_edge": _carbon,
              "aggregate": _aggregate, "off_centre": _off_centre, "ring_artefact": _ring}


def render(kind: str, ctx: RenderContext, rows) -> torch.Tensor:
    """Noiseless signal (m, box, box) of junk ``kind`` for truth rows ``rows`` (CTF applied)."""
    if kind not in _RENDERERS:
        raise ValueError(f"unknown junk type {kind!r}; known: {', '.join(JUNK_TYPES)}")
    return _RENDERERS[kind](ctx, np.asarray(rows))


# -- class-level junk (used by core.simulate.classes) ---------------------------------------------
def apply_class_junk(kind: str, avg: torch.Tensor, g: np.random.Generator, particle_radius: float) -> torch.Tensor:
    """Class-level junk on a (box, box) average: ``over_masked`` keeps only a hard disc of
    0.5-0.85 ``particle_radius`` (px); ``streaky`` convolves with a line of 15-35% of the box in a
    random direction (exact, as a sinc filter in Fourier space)."""
    if kind not in CLASS_JUNK_TYPES:
        raise ValueError(f"unknown class-level junk {kind!r}; known: {', '.join(CLASS_JUNK_TYPES)}")
    box = avg.shape[-1]
    if kind == "over_masked":
        r = g.uniform(0.5, 0.85) * particle_radius
        return avg * (radius_grid(box, avg.device, avg.dtype) <= r).to(avg.dtype)
    # streaky: convolution with a line of length L along direction th (sinc in Fourier space)
    L = g.uniform(0.15, 0.35) * box
    th = g.uniform(0, np.pi)
    ky = torch.fft.fftfreq(box, device=avg.device, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(box, device=avg.device, dtype=torch.float64)[None, :]
    H = torch.sinc(L * (kx * math.cos(th) + ky * math.sin(th))).to(avg.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(avg) * H, s=(box, box))
