"""Simulated particle images with complete ground truth, batched in torch (CPU or CUDA).

A particle is the Fourier-slice projection (``core.projector.Projector``, the one projector) of
a species' volume in a conformation, at a pose drawn from an orientation distribution, shifted
by a sub-pixel RELION origin, multiplied by RELION's CTF (``core.ctf.ctf_2d``, the one CTF) with
a B-factor envelope, plus white or coloured noise at a requested SNR, plus an optional
ice-thickness background, then normalised like ``relion_preprocess`` (background mean 0, std 1,
``core.images.normalize_background``; with the plane subtraction RELION does by default).
Junk particles (``core.simulate.junk``) go through the same CTF, noise and normalisation.

SNR (the definition used everywhere in cryolens)
    SNR = var(signal inside the particle mask) / var(noise)
where *signal* is the noiseless CTF-modulated projection of the (good) particle at its pose and
shift, *var inside the mask* is the variance of its pixels within a disc of radius
``mask_radius_px`` around the box centre (default: the radius holding 99% of the volume's mass),
and *noise* is the added stationary noise field (white or coloured: its pixel variance is the
same inside and outside the mask). The ice-thickness background is not counted as noise. The
noise standard deviation of each particle is set from its own signal, so every good particle
has exactly the requested SNR; junk particles get the noise level a good particle of the same
species and pose would have (their ``snr`` column is that nominal value; for junk without a
protein, ``has_protein`` False, the pose columns are the draws that set this reference, not a
particle in the image).

Ground truth (``truth`` dict / DataFrame, one row per particle): species, conformation, pose
(RELION rot/tilt/psi, degrees), shift (RELION origin, Angstrom), CTF (defocus U/V/angle, voltage,
Cs, amplitude contrast, phase shift, envelope B-factor), SNR, noise model, ice background
amplitude, junk flag and junk type (and the seed of its geometry), micrograph, scale of the
normalisation. ``ParticleSet`` columns hold what a real data set would (poses as if refined).

Determinism: on CPU the same seed, batch size and torch thread count give the same bytes (across
processes too; another thread count changes float reductions in the last bits). Batch b of
``stream(seed)`` draws every parameter from ``numpy.random.default_rng([seed, b])`` and its noise
from a torch generator seeded from it; ``dataset(n, seed)`` is the first batches of that stream.

Speed (bench/bench_simulate.py, 128 px, 2 CPU threads): ~730 particles/s exact, bound by the
projector (~1000 projections/s alone); ``projection_box=64`` (exact to half Nyquist) ~1700-2000/s.

CTF parameters default to ``CTFDistribution.betagal()``: quantiles of the 4501 refined
particles of the RELION beta-galactosidase tutorial
(/work/shared/data/relion-conventions/betagal_tutorial_particles.star), sampled by inverse-CDF
interpolation; ``CTFDistribution.broad()`` covers a wider range for training.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..ctf import ctf_2d
from ..geometry import euler_to_matrix, uniform_orientations
from ..images import normalize_background, radial_frequency_grid, radius_grid
from ..maps import fit_box, fourier_resize_map
from ..particles import ParticleSet
from ..projector import Projector
from .noise import NoiseModel, coloured_noise, ice_background, noise_psd

__all__ = [
    "UniformOrientations", "PreferredOrientations", "TiltRange", "FixedOrientations", "view_directions",
    "CTFDistribution", "Species", "SimulatorConfig", "ParticleSimulator", "SimBatch", "simulate_particles",
    "stream_particles", "masked_variance", "mass_radius",
]


# -- orientation distributions -------------------------------------------------------------------
def view_directions(angles_deg) -> np.ndarray:
    """(N, 3) unit projection directions in the volume frame for RELION (rot, tilt, psi):
    A^T e_z = (cos rot sin tilt, sin rot sin tilt, cos tilt), the third row of A."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3))
    st = np.sin(a[:, 1])
    return np.stack([np.cos(a[:, 0]) * st, np.sin(a[:, 0]) * st, np.cos(a[:, 1])], -1)


def _direction_to_rot_tilt(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.rad2deg(np.arctan2(v[:, 1], v[:, 0])), np.rad2deg(np.arccos(np.clip(v[:, 2], -1, 1)))


def _psi(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-180.0, 180.0, n)


@dataclass(frozen=True)
class UniformOrientations:
    """Uniform (Haar) distribution on SO(3)."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return uniform_orientations(n, rng)


@dataclass(frozen=True)
class PreferredOrientations:
    """Preferred orientation: view directions from a mixture of von Mises-Fisher distributions
    on the sphere (density ~ exp(kappa mu.v)), uniform in-plane angle psi.

    ``directions``: (K, 2) (rot, tilt) degrees of the mode view directions (K >= 1);
    ``kappa``: concentration (scalar or (K,)); kappa = 10 puts 90% of the views within ~37
    degrees of the mode, 100 within ~12; ``weights``: mixture weights; ``uniform_fraction``:
    share of particles drawn uniformly on SO(3) instead (the rest of the views).
    """

    directions: tuple = ((0.0, 0.0),)
    kappa: float | tuple = 10.0
    weights: tuple | None = None
    uniform_fraction: float = 0.0

    def mode_vectors(self) -> np.ndarray:
        d = np.asarray(self.directions, dtype=np.float64).reshape(-1, 2)
        return view_directions(np.concatenate([d, np.zeros((len(d), 1))], 1))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        mu = self.mode_vectors()
        K = len(mu)
        kap = np.broadcast_to(np.asarray(self.kappa, dtype=np.float64), (K,))
        w = np.ones(K) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        comp = rng.choice(K, size=n, p=w / w.sum())
        v = _vmf_sample(mu[comp], kap[comp], rng)
        rot, tilt = _direction_to_rot_tilt(v)
        out = np.stack([rot, tilt, _psi(n, rng)], -1)
        if self.uniform_fraction > 0:
            uni = rng.random(n) < self.uniform_fraction
            out[uni] = uniform_orientations(int(uni.sum()), rng)
        return out


def _vmf_sample(mu: np.ndarray, kappa: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """von Mises-Fisher on S^2 (exact inversion of the cosine's CDF), one draw per row of mu."""
    n = len(mu)
    u = rng.random(n)
    kappa = np.maximum(kappa, 1e-8)
    # w = cos(angle to mu): CDF F(w) = (exp(k w) - exp(-k)) / (exp(k) - exp(-k)), written stably
    w = 1.0 + np.log(u + (1.0 - u) * np.exp(-2.0 * kappa)) / kappa
    w = np.clip(w, -1.0, 1.0)
    phi = rng.uniform(0, 2 * np.pi, n)
    # orthonormal basis around mu
    a = np.where(np.abs(mu[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    e1 = np.cross(mu, a)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(mu, e1)
    s = np.sqrt(np.clip(1 - w * w, 0, None))[:, None]
    return w[:, None] * mu + s * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)


@dataclass(frozen=True)
class TiltRange:
    """Views restricted to min_tilt <= tilt <= max_tilt (degrees), uniform on that band of the
    sphere (cos tilt uniform), rot uniform in [rot_min, rot_max), psi uniform: missing views."""

    min_tilt: float = 0.0
    max_tilt: float = 90.0
    rot_min: float = -180.0
    rot_max: float = 180.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = rng.uniform(np.cos(np.deg2rad(self.max_tilt)), np.cos(np.deg2rad(self.min_tilt)), n)
        tilt = np.rad2deg(np.arccos(np.clip(c, -1, 1)))
        rot = rng.uniform(self.rot_min, self.rot_max, n)
        return np.stack([rot, tilt, _psi(n, rng)], -1)


@dataclass(frozen=True)
class FixedOrientations:
    """Given (M, 3) RELION angles, drawn with replacement (or in order with ``cycle=True``)."""

    angles: np.ndarray = field(default_factory=lambda: np.zeros((1, 3)))
    cycle: bool = False

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        a = np.asarray(self.angles, dtype=np.float64).reshape(-1, 3)
        idx = np.arange(n) % len(a) if self.cycle else rng.integers(0, len(a), n)
        return a[idx].copy()


def _orientation(spec) -> object:
    if spec is None or spec == "uniform":
        return UniformOrientations()
    if isinstance(spec, str):
        raise ValueError(f"unknown orientation distribution {spec!r}: use 'uniform' or an object "
                         "(PreferredOrientations, TiltRange, FixedOrientations)")
    if not hasattr(spec, "sample"):
        raise TypeError("orientation must be 'uniform' or have a sample(n, rng) method")
    return spec


# -- CTF parameter distributions -----------------------------------------------------------------
# Quantiles (levels below) of the 4501 refined particles of the RELION 3.1 beta-galactosidase
# tutorial, /work/shared/data/relion-conventions/betagal_tutorial_particles.star (24 micrographs,
# 200 kV, Cs 1.4, Q0 0.1; CTFFIND per micrograph), per particle, np.quantile defaults, rounded. The file
# is not part of cryolens; tests/test_sim_particles.py re-derives these numbers from it.
_BETAGAL_LEVELS = tuple(i / 20 for i in range(21))  # 0, 0.05, ..., 1
_BETAGAL_DEFOCUS_U = (8303.1, 8346.4, 9116.5, 9145.2, 9292.2, 9836.5, 10108.4, 10123.7, 10123.7, 10159.7, 10656.0,
                      10678.1, 10863.9, 11089.8, 11115.5, 11457.0, 11486.5, 12109.9, 12201.4, 13065.1, 13118.4)
_BETAGAL_ASTIGMATISM = (245.0, 249.8, 270.5, 274.9, 282.0, 285.8, 288.1, 288.1, 288.2, 296.1, 307.1,  # dU - dV
                        307.1, 315.2, 317.9, 318.2, 336.2, 339.2, 340.6, 353.8, 363.2, 368.6)
_BETAGAL_ANGLE = (70.01, 70.29, 71.87, 72.66, 73.0, 73.09, 73.18, 73.47, 75.2, 75.41, 75.55,
                  75.63, 75.86, 76.93, 77.24, 77.97, 78.36, 78.81, 78.98, 79.37, 80.51)


@dataclass(frozen=True)
class CTFDistribution:
    """Defocus U, astigmatism (U - V >= 0) and astigmatism angle drawn independently by
    inverse-CDF interpolation of quantile tables (piecewise linear between the levels).
    ``particle_defocus_sd_A`` adds per-particle Gaussian spread around the micrograph's defocus
    (ice height; 0 reproduces per-micrograph CTFFIND values)."""

    levels: tuple = _BETAGAL_LEVELS
    defocus_u: tuple = _BETAGAL_DEFOCUS_U
    astigmatism: tuple = _BETAGAL_ASTIGMATISM
    angle: tuple = _BETAGAL_ANGLE
    particle_defocus_sd_A: float = 0.0

    @classmethod
    def betagal(cls) -> "CTFDistribution":
        return cls()

    @classmethod
    def broad(cls) -> "CTFDistribution":
        """Wider than one session: defocus 0.5-3.5 um, astigmatism 0-1000 A, any angle."""
        lv = (0.0, 1.0)
        return cls(lv, (5000.0, 35000.0), (0.0, 1000.0), (-180.0, 180.0))

    def sample_micrographs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(defocus_u, defocus_v, angle) for n micrographs."""
        lv = np.asarray(self.levels, dtype=np.float64)
        u = rng.random((3, n))
        du = np.interp(u[0], lv, self.defocus_u)
        ast = np.interp(u[1], lv, self.astigmatism)
        ang = np.interp(u[2], lv, self.angle)
        return du, du - ast, ang


# -- species, volumes ---------------------------------------------------------------------------
@dataclass
class Species:
    """One kind of particle: a volume (D, D, D) or a callable conformation -> volume.

    ``conformations``: for a callable, the conformation values used (a sequence), or a count n
    (n evenly spaced values in [0, 1]); each particle draws one of them uniformly (volumes are
    cached per value, so continuous conformations are discretised). ``pixel_size``: the
    volume's voxel size in Angstrom (default: the simulation's pixel size).
    """

    name: str
    volume: object
    weight: float = 1.0
    conformations: int | Sequence[float] = 8
    pixel_size: float | None = None

    def conformation_values(self) -> np.ndarray:
        if not callable(self.volume):
            return np.zeros(1)
        c = self.conformations
        if isinstance(c, (int, np.integer)):
            return np.array([0.5]) if c <= 1 else np.linspace(0.0, 1.0, int(c))
        return np.asarray(list(c), dtype=np.float64)

    def volume_at(self, conformation: float):
        return self.volume(float(conformation)) if callable(self.volume) else self.volume

    @classmethod
    def from_phantom(cls, phantom) -> "Species":
        """A phantom protein (``proteins.Phantom``) as a species: its density, or its
        conformations (4 values of a continuous motion, or each discrete state)."""
        conf = phantom.conformations
        if conf is not None and conf.continuous:
            return cls(phantom.name, conf.density, conformations=4)
        if conf is not None and conf.n_states > 1:
            return cls(phantom.name, lambda t, c=conf: c.state(int(round(t))).density,
                       conformations=list(range(conf.n_states)))
        return cls(phantom.name, phantom.density)


def _as_species(volumes) -> list[Species]:
    if isinstance(volumes, Species):
        return [volumes]
    if isinstance(volumes, Mapping):
        return [v if isinstance(v, Species) else Species(str(k), v) for k, v in volumes.items()]
    if isinstance(volumes, (list, tuple)):
        return [v if isinstance(v, Species) else Species(f"species{i}", v) for i, v in enumerate(volumes)]
    return [Species("species0", volumes)]


def _to_tensor(vol) -> torch.Tensor:
    t = vol if isinstance(vol, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(vol))
    if t.ndim != 3 or len(set(t.shape)) != 1:
        raise ValueError(f"a volume must be a cube (D, D, D), got {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float64)


def prepare_volume(vol, volume_pixel_size: float, pixel_size: float, box: int) -> torch.Tensor:
    """A volume resampled to ``pixel_size`` (Fourier) and padded/cropped to ``box`` (float64, CPU)."""
    v = _to_tensor(vol)
    if abs(volume_pixel_size - pixel_size) > 1e-6 * pixel_size:
        v = fourier_resize_map(v, max(2, int(round(v.shape[0] * volume_pixel_size / pixel_size))))
    return fit_box(v, box)


def mass_radius(vol, fraction: float = 0.99) -> float:
    """Radius (voxels) around the centre D//2 that holds ``fraction`` of the positive density."""
    v = _to_tensor(vol).clamp_min(0)
    D = v.shape[0]
    c = torch.arange(D, dtype=torch.float64) - D // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).flatten()
    order = torch.argsort(r)
    cum = torch.cumsum(v.flatten()[order], 0)
    if cum[-1] <= 0:
        return 0.375 * D
    i = int(torch.searchsorted(cum, fraction * cum[-1]))
    return float(r[order][min(i, len(r) - 1)])


def masked_variance(images: torch.Tensor, radius_px) -> torch.Tensor:
    """Per-image variance of the pixels within ``radius_px`` (scalar or (N,)) of the centre."""
    box, n = images.shape[-1], images.shape[0]
    r = radius_grid(box, images.device, images.dtype).reshape(-1)
    rad = np.broadcast_to(np.asarray(radius_px.cpu() if isinstance(radius_px, torch.Tensor) else radius_px,
                                     dtype=np.float64), (n,))
    x = images.reshape(n, -1)
    out = torch.empty(n, dtype=images.dtype, device=images.device)
    for value in np.unique(rad):
        rows = torch.as_tensor(np.flatnonzero(rad == value), device=images.device)
        m = (r <= float(value)).to(images.dtype)
        cnt = m.sum()
        xs = x[rows] if len(rows) < n else x
        d = xs - ((xs @ m) / cnt)[:, None]
        out[rows] = ((d * d) @ m) / cnt
    return out


# -- batches ------------------------------------------------------------------------------------
@dataclass
class SimBatch:
    """One batch: ``images`` (N, box, box) normalised, on the simulator's device; ``truth`` a dict
    of (N,) numpy arrays (see the module docstring); ``ctf`` (N, box, box//2+1) the true CTF with
    its envelope (rfft layout); ``clean`` (when asked) the noiseless signal in the units of the
    normalised images."""

    images: torch.Tensor
    truth: dict
    ctf: torch.Tensor
    clean: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.truth)

    @property
    def rotations(self) -> torch.Tensor:
        """(N, 3, 3) RELION matrices A of the true poses, float32 on the images' device."""
        ang = np.stack([self.truth["rot"], self.truth["tilt"], self.truth["psi"]], -1)
        return torch.as_tensor(euler_to_matrix(ang), dtype=torch.float32, device=self.images.device)


def _range(x, n: int, rng: np.random.Generator, log: bool = False) -> np.ndarray:
    """A scalar, or (lo, hi) drawn uniformly (log-uniformly with ``log``) per particle."""
    if np.ndim(x) == 0:
        return np.full(n, float(x))
    lo, hi = (float(v) for v in x)
    if log:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return rng.uniform(lo, hi, n)


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2 ** 62))


@dataclass(frozen=True)
class SimulatorConfig:
    """What ``ParticleSimulator`` simulates: imaging, noise and junk (the same config and seed
    give the same particles).

    box, pixel_size: the images' box (px; default the first volume's) and pixel size (A).
    volume_pixel_size: voxel size of the volumes (A; default ``pixel_size``); volumes are
        Fourier-resampled to ``pixel_size`` and padded/cropped to ``box``.
    orientation: "uniform", ``PreferredOrientations``, ``TiltRange`` or ``FixedOrientations``.
    shift_sd_A: sd of the Gaussian origin shifts (default 1 px), clipped at 3 sd.
    ctf: ``CTFDistribution`` (default ``CTFDistribution()``); voltage (kV), cs (mm),
        amp_contrast, phase_shift (deg): optics.
    bfactor: envelope B-factor (A^2) of the signal: a number or a (lo, hi) range.
    snr: a number or a (lo, hi) range (drawn log-uniformly), see the SNR definition above.
    noise: ``NoiseModel`` or "white" / "coloured" / "realistic".
    ice_gradient: amplitude (in noise sd) of the ice-thickness background, or a (lo, hi) range.
    junk: {junk type: fraction} of particle-level junk (``core.simulate.junk.JUNK_TYPES``), or a
        total fraction spread evenly over all types.
    mask_radius_px: radius of the SNR mask (default: each species' 99%-mass radius).
    normalize, ramp: RELION background normalisation (ramp: subtract the background plane first,
        relion_preprocess's default).
    particles_per_micrograph: particles sharing one CTF draw (defocus per micrograph).
    record_bfactor: write the envelope into the ParticleSet's ``ctf_bfactor`` (default: 0, as in
        data that never went through CtfRefine; the truth table always has it).
    projection_box: project on a smaller grid (volumes Fourier-cropped) and pad the result's
        transform to ``box``: exact up to that grid's Nyquist, zero beyond; faster. Default: box.
    pad: the projector's padding factor.
    """

    box: int | None = None
    pixel_size: float = 1.0
    volume_pixel_size: float | None = None
    orientation: object = "uniform"
    shift_sd_A: float | None = None
    ctf: CTFDistribution | None = None
    voltage: float = 300.0
    cs: float = 2.7
    amp_contrast: float = 0.1
    phase_shift: float = 0.0
    bfactor: float | tuple[float, float] = (20.0, 120.0)
    snr: float | tuple[float, float] = 0.1
    noise: NoiseModel | str = "white"
    ice_gradient: float | tuple[float, float] = 0.0
    junk: Mapping[str, float] | float | None = None
    mask_radius_px: float | None = None
    normalize: bool = True
    ramp: bool = True
    particles_per_micrograph: int = 1
    record_bfactor: bool = False
    projection_box: int | None = None
    pad: float = 2


def _noise_model(noise: NoiseModel | str) -> NoiseModel:
    """A ``NoiseModel`` as given, or the named one ("white", "coloured", "realistic")."""
    if not isinstance(noise, str):
        return noise
    named = {"white": NoiseModel.white(), "coloured": NoiseModel.coloured(),
             "colored": NoiseModel.coloured(), "realistic": NoiseModel.realistic()}
    if noise not in named:
        raise ValueError(f"unknown noise {noise!r}: use {', '.join(named)} or a NoiseModel")
    return named[noise]


class ParticleSimulator:
    """Particles (and junk) from one or several species, with ground truth; see the module doc.

    volumes: a (D, D, D) array/tensor, a callable conformation -> volume, a list or a
        {name: volume} dict of those, or ``Species`` objects.
    config: a ``SimulatorConfig`` (default: its defaults).
    device: "cpu", "cuda" or a torch.device. max_projectors: projectors kept in the cache.
    E.g. ``ParticleSimulator(volume, SimulatorConfig(box=64, pixel_size=3.0, snr=0.1), device="cuda")``.
    """

    def __init__(self, volumes, config: SimulatorConfig | None = None, *, device="cpu", max_projectors: int = 32):
        from . import junk as junk_mod

        cfg = SimulatorConfig() if config is None else config
        self.species = _as_species(volumes)
        if not self.species:
            raise ValueError("no volumes given")
        first = self.species[0]
        v0 = first.volume_at(first.conformation_values()[0])
        self.box = int(cfg.box if cfg.box is not None else _to_tensor(v0).shape[0])
        self.pixel_size = float(cfg.pixel_size)
        self.volume_pixel_size = cfg.volume_pixel_size
        self.orientation = _orientation(cfg.orientation)
        self.shift_sd_A = self.pixel_size if cfg.shift_sd_A is None else float(cfg.shift_sd_A)
        self.ctf = CTFDistribution() if cfg.ctf is None else cfg.ctf
        self.voltage, self.cs = float(cfg.voltage), float(cfg.cs)
        self.amp_contrast, self.phase_shift = float(cfg.amp_contrast), float(cfg.phase_shift)
        self.bfactor, self.snr, self.ice_gradient = cfg.bfactor, cfg.snr, cfg.ice_gradient
        self.noise = _noise_model(cfg.noise)
        self.junk = junk_mod.junk_fractions(cfg.junk)
        self.normalize, self.ramp = bool(cfg.normalize), bool(cfg.ramp)
        self.ppm = max(1, int(cfg.particles_per_micrograph))
        self.record_bfactor = bool(cfg.record_bfactor)
        self.projection_box = self.box if cfg.projection_box is None else int(cfg.projection_box)
        if not 8 <= self.projection_box <= self.box:
            raise ValueError(f"projection_box must lie in [8, box={self.box}], got {cfg.projection_box}")
        self.pad = cfg.pad
        self.device = torch.device(device)
        self.max_projectors = max_projectors
        self._projectors: OrderedDict = OrderedDict()
        self._conf = [s.conformation_values() for s in self.species]
        w = np.asarray([s.weight for s in self.species], dtype=np.float64)
        self._species_p = w / w.sum()
        if cfg.mask_radius_px is not None:
            self._mask_r = np.full(len(self.species), float(cfg.mask_radius_px))
        else:
            self._mask_r = np.array([min(mass_radius(self._volume(i, len(self._conf[i]) // 2, self.box)),
                                         0.45 * self.box) for i in range(len(self.species))])

    @property
    def conformation_values(self) -> list[np.ndarray]:
        """Per species, the conformation values particles are drawn from."""
        return self._conf

    @property
    def mask_radii_px(self) -> np.ndarray:
        """Per species, the radius (px) of the SNR mask (99% of the mass by default)."""
        return self._mask_r

    # -- volumes and projectors ------------------------------------------------------------
    def _volume(self, sp: int, state: int, box: int) -> torch.Tensor:
        s = self.species[sp]
        vpx = s.pixel_size or self.volume_pixel_size or self.pixel_size
        px = self.pixel_size * self.box / box
        return prepare_volume(s.volume_at(self._conf[sp][state]), vpx, px, box)

    def projector(self, sp: int, state: int) -> Projector:
        """The cached projector of species ``sp`` in conformation ``state`` (on the projection grid)."""
        key = (sp, state)
        if key in self._projectors:
            self._projectors.move_to_end(key)
            return self._projectors[key]
        vol = self._volume(sp, state, self.projection_box)
        p = Projector(vol.to(torch.float32), pad=self.pad, device=self.device)
        self._projectors[key] = p
        while len(self._projectors) > self.max_projectors:
            self._projectors.popitem(last=False)
        return p

    def _embed(self, F: torch.Tensor) -> torch.Tensor:
        """rfft of a projection_box image -> the box grid (zero beyond the small grid's Nyquist),
        scaled to the values an exact box projection has (sum over z in box voxels)."""
        b, B = self.projection_box, self.box
        h = b // 2
        out = torch.zeros((F.shape[0], B, B // 2 + 1), dtype=F.dtype, device=F.device)
        top = h if b % 2 == 0 else h + 1  # even b: drop the Nyquist row/column (one-sided)
        out[:, :top, :top] = F[:, :top, :top]
        out[:, B - h:, :top] = F[:, b - h:, :top]
        if b % 2 == 0:
            out[:, B - h, :] = 0
        return out * (B / b) ** 3

    def project(self, sp: int, state: int, rotations: torch.Tensor, shifts_px=None, ctf=None) -> torch.Tensor:
        """(M, box, box) projections of one species/state with RELION origins and an optional CTF."""
        proj = self.projector(sp, state)
        if self.projection_box == self.box:
            return proj.project(rotations, shifts_px, ctf)
        s = None if shifts_px is None else \
            torch.as_tensor(shifts_px, dtype=torch.float64) * (self.projection_box / self.box)
        F = self._embed(proj.project_ft(rotations, s, None))
        if ctf is not None:
            F = F * ctf
        return torch.fft.irfft2(F, s=(self.box, self.box))

    def _project_groups(self, sp, st, A, shifts_px, ctf) -> torch.Tensor:
        n = len(sp)
        out = torch.empty((n, self.box, self.box), dtype=torch.float32, device=self.device)
        keys = sp.astype(np.int64) * 100003 + st.astype(np.int64)
        for k in np.unique(keys):
            idx = np.flatnonzero(keys == k)
            ti = torch.as_tensor(idx, device=self.device)
            out[ti] = self.project(int(sp[idx[0]]), int(st[idx[0]]), A[ti], shifts_px[idx],
                                   None if ctf is None else ctf[ti]).to(torch.float32)
        return out

    def envelope(self, bfactor) -> torch.Tensor:
        """(N, box, box//2+1) B-factor envelope exp(-B s^2 / 4) (rfft layout)."""
        s2 = radial_frequency_grid(self.box, True, self.pixel_size, self.device, torch.float32) ** 2
        b = torch.as_tensor(np.asarray(bfactor, dtype=np.float32), device=self.device).reshape(-1, 1, 1)
        return torch.exp(-b / 4.0 * s2[None])

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator, start: int = 0, seed: int = 0) -> dict:
        """The ground truth of n particles (everything but the images), global indices from
        ``start``; ``seed`` keys the per-micrograph CTF draws when particles share micrographs."""
        from . import junk as junk_mod

        idx = np.arange(start, start + n)
        sp = rng.choice(len(self.species), size=n, p=self._species_p)
        nconf = np.array([len(c) for c in self._conf])[sp]
        st = np.minimum((rng.random(n) * nconf).astype(np.int64), nconf - 1)
        conf = np.zeros(n)
        for i, c in enumerate(self._conf):
            sel = sp == i
            conf[sel] = c[st[sel]]
        ang = np.asarray(self.orientation.sample(n, rng), dtype=np.float64)
        sd = self.shift_sd_A
        sh = np.clip(rng.normal(0.0, 1.0, (n, 2)), -3, 3) * sd
        mic = idx // self.ppm
        if self.ppm == 1:
            du, dv, da = self.ctf.sample_micrographs(n, rng)
        else:
            mics, inv = np.unique(mic, return_inverse=True)
            draws = [self.ctf.sample_micrographs(1, np.random.default_rng([seed, 2 ** 31 - 1, int(m)])) for m in mics]
            du, dv, da = (np.array([d[j][0] for d in draws])[inv] for j in range(3))
        if self.ctf.particle_defocus_sd_A > 0:
            dd = rng.normal(0.0, self.ctf.particle_defocus_sd_A, n)
            du, dv = du + dd, dv + dd
        jt, has_protein, jseed = junk_mod.sample_junk(self.junk, n, rng)
        t = {
            "particle": idx, "species": np.array([self.species[s].name for s in sp], dtype=object),
            "species_id": sp.astype(np.int64), "conformation": conf, "conformation_state": st,
            "rot": ang[:, 0], "tilt": ang[:, 1], "psi": ang[:, 2],
            "shift_x": sh[:, 0], "shift_y": sh[:, 1],
            "defocus_u": du, "defocus_v": dv, "defocus_angle": da,
            "voltage": np.full(n, self.voltage), "cs": np.full(n, self.cs),
            "amp_contrast": np.full(n, self.amp_contrast), "phase_shift": np.full(n, self.phase_shift),
            "envelope_bfactor": _range(self.bfactor, n, rng),
            "snr": _range(self.snr, n, rng, log=True),
            "ice_gradient": _range(self.ice_gradient, n, rng),
            "is_junk": jt != "none", "junk_type": jt, "has_protein": has_protein, "junk_seed": jseed,
            "mask_radius_px": self._mask_r[sp],
            "micrograph": mic.astype(np.int64),
            "coord_x": rng.uniform(100, 3996, n).round(1), "coord_y": rng.uniform(100, 3996, n).round(1),
            "half_set": rng.integers(1, 3, n),
            "noise_kind": np.full(n, self.noise.kind, dtype=object),
            "noise_slope": np.full(n, self.noise.slope if self.noise.kind == "coloured" else 0.0),
            "noise_knee_A": np.full(n, self.noise.knee_A if self.noise.kind == "coloured" else 0.0),
            "noise_floor": np.full(n, self.noise.floor if self.noise.kind == "coloured" else 0.0),
            "noise_ctf_fraction": np.full(n, self.noise.ctf_fraction if self.noise.kind == "coloured" else 0.0),
        }
        junk_mod.sample_junk_geometry(self, t, rng)
        return t

    # -- rendering --------------------------------------------------------------------------------
    def render(self, t: dict, generator: torch.Generator | None = None, return_clean: bool = False):
        """Images for the ground truth ``t`` (a dict from ``sample``, possibly edited): returns
        (images (N, box, box), ctf (N, box, box//2+1), clean or None); adds ``noise_sd``,
        ``signal_var`` and ``norm_scale`` to ``t``."""
        from . import junk as junk_mod

        n, box, dev = len(t["rot"]), self.box, self.device
        ctf = ctf_2d(box, self.pixel_size, t["defocus_u"], t["defocus_v"], t["defocus_angle"], t["voltage"],
                     t["cs"], t["amp_contrast"], t["phase_shift"], t["envelope_bfactor"], device=dev)
        ang = np.stack([t["rot"], t["tilt"], t["psi"]], -1)
        A = torch.as_tensor(euler_to_matrix(ang), dtype=torch.float32, device=dev)
        shifts = np.stack([t["shift_x"], t["shift_y"]], -1) / self.pixel_size  # RELION origins (px)
        ref_shifts = np.where(junk_mod.reference_centred(t["junk_type"])[:, None], 0.0, shifts)
        sp, st = t["species_id"], t["conformation_state"]
        sig = self._project_groups(sp, st, A, ref_shifts, ctf)
        svar = masked_variance(sig, t["mask_radius_px"])
        sigma = torch.sqrt(svar / torch.as_tensor(t["snr"], dtype=torch.float32, device=dev))
        junk_rows = np.flatnonzero(t["is_junk"])
        if len(junk_rows):
            sig = sig.clone() if return_clean else sig
            ctx = junk_mod.RenderContext(self, t, A, shifts, ctf, sigma, sig)
            for kind in np.unique(t["junk_type"][junk_rows]):
                rows = junk_rows[t["junk_type"][junk_rows] == kind]
                sig[torch.as_tensor(rows, device=dev)] = junk_mod.render(str(kind), ctx, rows).to(sig.dtype)
        psd = None
        if not self.noise.is_white:
            psd = noise_psd(self.noise, box, self.pixel_size, ctf if self.noise.needs_ctf() else None, dev)
        noise = coloured_noise(n, box, psd, generator, dev)
        img = sig + sigma[:, None, None] * noise
        ice = np.asarray(t["ice_gradient"], dtype=np.float64)
        rows = np.flatnonzero(ice != 0)
        if len(rows):
            ti = torch.as_tensor(rows, device=dev)
            amp = sigma[ti] * torch.as_tensor(ice[rows], dtype=torch.float32, device=dev)
            img[ti] += amp[:, None, None] * ice_background(len(rows), box, generator, dev)
        scale = torch.ones(n, dtype=torch.float32, device=dev)
        if self.normalize:
            normed = normalize_background(img, ramp=self.ramp)
            scale = _affine_scale(img, normed, self.ramp)
            img = normed
        t["noise_sd"] = sigma.cpu().numpy().astype(np.float64)
        t["signal_var"] = svar.cpu().numpy().astype(np.float64)
        t["norm_scale"] = scale.cpu().numpy().astype(np.float64)
        clean = sig * scale[:, None, None] if return_clean else None
        return img, ctf, clean

    def generate(self, n: int, seed: int = 0, batch: int = 0, start: int | None = None,
                 return_clean: bool = False) -> SimBatch:
        """Batch ``batch`` of the stream with this seed: n particles, global indices from ``start``
        (default batch * n)."""
        rng = np.random.default_rng([int(seed), int(batch)])
        t = self.sample(n, rng, start=batch * n if start is None else start, seed=seed)
        gdev = self.device if self.device.type == "cuda" else "cpu"
        gen = torch.Generator(device=gdev).manual_seed(_seed_from(rng))
        img, ctf, clean = self.render(t, gen, return_clean)
        return SimBatch(img, t, ctf, clean)

    def stream(self, batch_size: int = 256, seed: int = 0, n_batches: int | None = None,
               start_batch: int = 0, return_clean: bool = False) -> Iterator[SimBatch]:
        """Batches for training on the fly (nothing written); endless unless ``n_batches``."""
        b = start_batch
        while n_batches is None or b < start_batch + n_batches:
            yield self.generate(batch_size, seed, b, return_clean=return_clean)
            b += 1

    def dataset(self, n: int, seed: int = 0, batch_size: int = 256, stack: str = "particles.mrcs"):
        """(ParticleSet, images (n, box, box) float32, truth DataFrame) for writing a data set."""
        images = np.empty((n, self.box, self.box), dtype=np.float32)
        truths = []
        for b in range(math.ceil(n / batch_size)):
            m = min(batch_size, n - b * batch_size)
            sb = self.generate(m, seed, b, start=b * batch_size)
            images[b * batch_size:b * batch_size + m] = sb.images.cpu().numpy()
            truths.append(pd.DataFrame(sb.truth))
        truth = pd.concat(truths, ignore_index=True) if truths else pd.DataFrame()
        return self.particle_set(truth, stack), images, truth

    def particle_set(self, truth: pd.DataFrame, stack: str = "particles.mrcs") -> ParticleSet:
        """What a real refined data set of these particles would hold (no ground-truth extras)."""
        n = len(truth)
        table = pd.DataFrame({
            "image_stack": stack, "image_index": np.arange(n, dtype=np.int64),
            "micrograph": [f"Micrographs/sim_mic{m:06d}.mrc" for m in truth["micrograph"]],
            "coord_x": truth["coord_x"].to_numpy(), "coord_y": truth["coord_y"].to_numpy(),
            "rot": truth["rot"].to_numpy(), "tilt": truth["tilt"].to_numpy(), "psi": truth["psi"].to_numpy(),
            "shift_x": truth["shift_x"].to_numpy(), "shift_y": truth["shift_y"].to_numpy(),
            "defocus_u": truth["defocus_u"].to_numpy(), "defocus_v": truth["defocus_v"].to_numpy(),
            "defocus_angle": truth["defocus_angle"].to_numpy(), "phase_shift": truth["phase_shift"].to_numpy(),
            "ctf_bfactor": truth["envelope_bfactor"].to_numpy() if self.record_bfactor else 0.0,
            "optics_group": 1, "half_set": truth["half_set"].to_numpy(),
            "pixel_size": self.pixel_size, "box": self.box, "voltage": truth["voltage"].to_numpy(),
            "cs": truth["cs"].to_numpy(), "amp_contrast": truth["amp_contrast"].to_numpy(),
        })
        return ParticleSet(table, source="cryolens simulate")


_AFFINE_PROBES: dict = {}


def _affine_scale(raw: torch.Tensor, normed: torch.Tensor, ramp: bool) -> torch.Tensor:
    """s with normed = s * (raw - (a + b y + c x)): the scale the normalisation applied to each image.
    Exact (the normalisation is affine per image): any image v orthogonal to {1, y, x} ({1}
    without ramp) over all pixels gives <raw, v> s = <normed, v>; four fixed random probes v,
    combined by least squares, keep it well conditioned."""
    box, dev = raw.shape[-1], raw.device
    key = (box, ramp, str(dev))
    if key not in _AFFINE_PROBES:
        c = torch.arange(box, dtype=torch.float64) - box // 2
        cols = [torch.ones(box * box, dtype=torch.float64)]
        if ramp:
            cols += [c[:, None].expand(box, box).reshape(-1), c[None, :].expand(box, box).reshape(-1)]
        Q = torch.linalg.qr(torch.stack(cols, 1))[0]
        v = torch.randn((box * box, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        v = v - Q @ (Q.T @ v)
        _AFFINE_PROBES[key] = (v / v.norm(dim=0)).to(device=dev, dtype=torch.float32)
    v = _AFFINE_PROBES[key]
    a = (raw.reshape(raw.shape[0], -1) @ v).to(torch.float64)
    b = (normed.reshape(normed.shape[0], -1) @ v).to(torch.float64)
    return ((a * b).sum(1) / (a * a).sum(1).clamp_min(1e-300)).to(torch.float32)


# -- convenience ----------------------------------------------------------------------------------
def simulate_particles(n: int, volumes, config: SimulatorConfig | None = None, *, seed: int = 0,
                       batch_size: int = 256, stack: str = "particles.mrcs", device="cpu"):
    """(ParticleSet, images (n, box, box) float32, truth DataFrame) of ``ParticleSimulator(volumes, config)``."""
    return ParticleSimulator(volumes, config, device=device).dataset(n, seed, batch_size, stack)


def stream_particles(volumes, config: SimulatorConfig | None = None, *, batch_size: int = 256, seed: int = 0,
                     n_batches: int | None = None, return_clean: bool = False, device="cpu") -> Iterator[SimBatch]:
    """Endless (or ``n_batches``) ``SimBatch`` es of ``ParticleSimulator(volumes, config)`` for training."""
    return ParticleSimulator(volumes, config, device=device).stream(batch_size, seed, n_batches,
                                                                    return_clean=return_clean)
