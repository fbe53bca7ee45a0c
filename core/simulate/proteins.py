"""Phantom proteins: seeded pseudo-atomic models rendered as density maps.

Every learned job in cryolens trains on simulated particles, and these are the proteins behind
them. A phantom is built in three steps:

1. **Fold**: a domain is a pseudo-chain of residues 3.8 Angstrom apart (one CA pseudo-atom and
   one side-chain centroid per residue, 110 Da a residue) grown inside an ellipsoid whose radius
   of gyration follows R_g = 2.2 N^0.38 Angstrom. The chain is built from secondary-structure-like
   segments: alpha helices (rise 1.5 Angstrom, 100 degrees a residue, radius 2.3 Angstrom), beta
   sheets (antiparallel strands 4.8 Angstrom apart, 3.3 Angstrom a residue) and loops, placed
   self-avoiding (no two CA closer than 4 Angstrom), preferring compact placements.
2. **Assemble**: domains dock into chains and chains into complexes (rigid-body docking to first
   contact); point-group assemblies (C<n>, D<n>, T, O, I in RELION's orientations, see
   :mod:`.symmetry`) place one asymmetric unit off-axis and dock it against its own copies;
   helical filaments dock a subunit in radius and rise for a given twist; membrane proteins are
   bundles of transmembrane helices (with soluble domains) in a detergent micelle or a nanodisc.
3. **Render** (``core.maps.render``): a sum of 3D Gaussians (B-factor-like width, plus the
   resolution blur) splatted on the grid, exact in mass: ``density.sum() * pixel_size**3`` is the
   mass in Dalton, so a map is in Da/Angstrom^3 (the interior of a protein is close to 0.81
   Da/Angstrom^3 = 1.35 g/cm^3). Each phantom is a ``core.maps.Phantom``.

Conventions: atom coordinates are (x, y, z) Angstrom about the box centre; maps are (z, y, x)
float32 arrays with the centre (the protein's centre of mass) at index ``D // 2``, non-negative,
as everywhere in cryolens. Randomness comes from one ``numpy.random.Generator``; the same seed
gives byte-identical maps (on one machine and software stack: numpy's SIMD maths may differ in
the last bit elsewhere, and a growing chain can then branch differently).

The public entry points: :func:`random_phantom` (any kind, sensible distributions: the training
source), :func:`phantom_library` (n distinct phantoms from one seed), the builders
:func:`globular`, :func:`complex_`, :func:`assembly`, :func:`filament`, :func:`membrane`,
:func:`conformational`. User maps and atomic models (``from_map``, ``from_atomic_model``) and
3D resampling live in :mod:`core.maps`, which these phantoms are built on.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..geometry import gaussian_quaternions, quaternion_to_matrix
from ..maps import (FIT_FRACTION, PROTEIN_DENSITY, Phantom, PseudoAtoms, density_extent, jsonable, render,
                    resolution_sigma)
from .example import blob_phantom
from .symmetry import axis_rotation, generated_order, helical_symbol, parse_symmetry, point_group

__all__ = [
    "Conformations", "KINDS", "random_phantom", "phantom_library",
    "globular", "complex_", "assembly", "filament", "membrane", "conformational", "blob",
    "fold_domain", "expected_rg", "max_mass_kda", "max_subunit_kda", "box_for", "DALTON_PER_RESIDUE",
]

GENERATOR_VERSION = 1
DALTON_PER_RESIDUE = 110.0
CA_SPACING = 3.8
_CA_DA, _SC_DA = 58.0, 52.0  # backbone (N, CA, C, O + H) and side chain: 110 Da a residue
_SC_OFFSET = 2.4  # CA -> side-chain centroid, Angstrom
_CLASH = 4.0  # minimum non-bonded CA-CA distance, Angstrom
_CONTACT = 4.0  # docking: closest approach between two bodies' pseudo-atoms, Angstrom
KINDS = ("globular", "complex", "assembly", "filament", "membrane")


class Conformations:
    """Conformational variants of one protein: a continuous motion and/or discrete states.

    Continuous motions ('hinge': a domain swings about an axis, as an IgG Fab arm; 'ratchet': a
    body rotates about the axis through its interface, as the ribosome's small subunit) give the
    map at any conformation value with :meth:`at` (``t`` in [0, 1] spans the motion; the moving
    part turns by ``t * max_angle_deg``; the fixed part never moves). Discrete states
    ('composition': a subunit present or absent, or a few hinge angles) are :attr:`states`.
    Maps of the fixed part are cached, so :meth:`density` renders only the moving atoms.
    """

    def __init__(self, motion: str, fixed: PseudoAtoms, moving: PseudoAtoms | None, *, box: int,
                 pixel_size: float, resolution: float | None, template: dict,
                 axis_point=None, axis=None, max_angle_deg: float = 0.0,
                 state_atoms: Sequence[PseudoAtoms] | None = None, state_values: Sequence[float] | None = None):
        self.motion = motion
        self.fixed, self.moving = fixed, moving
        self.box, self.pixel_size, self.resolution = box, float(pixel_size), resolution
        self.template = template
        self.axis_point = None if axis_point is None else np.asarray(axis_point, np.float64)
        self.axis = None if axis is None else np.asarray(axis, np.float64) / np.linalg.norm(axis)
        self.max_angle_deg = float(max_angle_deg)
        self._state_atoms = list(state_atoms) if state_atoms is not None else None
        self.state_values = list(state_values) if state_values is not None else (
            [0.0, 0.5, 1.0] if self.continuous else [])
        self._fixed_density: np.ndarray | None = None
        self._state_cache: dict[int, Phantom] = {}

    @property
    def continuous(self) -> bool:
        return self.moving is not None and self.axis is not None

    @property
    def n_states(self) -> int:
        return len(self._state_atoms) if self._state_atoms is not None else len(self.state_values)

    def angle(self, t: float) -> float:
        return float(t) * self.max_angle_deg

    def atoms_at(self, t: float) -> PseudoAtoms:
        if not self.continuous:
            raise ValueError(f"a '{self.motion}' variant has discrete states only: use .states / .state(i)")
        R = axis_rotation(self.axis, self.angle(t))
        moved = self.moving.transformed(R, self.axis_point - R @ self.axis_point)
        return PseudoAtoms.concat([self.fixed, moved])

    def _fixed_map(self) -> np.ndarray:
        if self._fixed_density is None:
            self._fixed_density = render(self.fixed, self.box, self.pixel_size, self.resolution)[0]
        return self._fixed_density

    def density(self, t: float) -> np.ndarray:
        """The map (D, D, D) float32 at conformation ``t`` (continuous motions)."""
        if not self.continuous:
            raise ValueError(f"a '{self.motion}' variant has discrete states only: use .states / .state(i)")
        R = axis_rotation(self.axis, self.angle(t))
        moved = self.moving.transformed(R, self.axis_point - R @ self.axis_point)
        return (self._fixed_map() + render(moved, self.box, self.pixel_size, self.resolution)[0]).astype(np.float32)

    def at(self, t: float) -> Phantom:
        """The Phantom at conformation ``t`` (continuous motions)."""
        dens = self.density(t)
        tpl = self.template
        prov = dict(tpl["provenance"], conformation_t=float(t), angle_deg=self.angle(t))
        atoms = self.atoms_at(t)
        r = density_extent(atoms, self.pixel_size, self.resolution)
        return Phantom(dens, self.pixel_size, f"{tpl['name']}-t{t:.3f}", tpl["mass_kda"], tpl["symmetry"], prov,
                       tpl["kind"], None, atoms, r, r < FIT_FRACTION * self.box * self.pixel_size)

    def state(self, i: int) -> Phantom:
        if i in self._state_cache:
            return self._state_cache[i]
        if self._state_atoms is None:
            ph = self.at(self.state_values[i])
        else:
            atoms = self._state_atoms[i]
            dens, _ = render(atoms, self.box, self.pixel_size, self.resolution)
            tpl = self.template
            r = density_extent(atoms, self.pixel_size, self.resolution)
            ph = Phantom(dens, self.pixel_size, f"{tpl['name']}-state{i}", atoms.mass_kda, tpl["symmetry"],
                         dict(tpl["provenance"], state=i), tpl["kind"], None, atoms, r,
                         r < FIT_FRACTION * self.box * self.pixel_size)
        self._state_cache[i] = ph
        return ph

    @property
    def states(self) -> list[Phantom]:
        """The discrete states as Phantoms (rendered on first use)."""
        return [self.state(i) for i in range(self.n_states)]

    def describe(self) -> dict:
        d = {"motion": self.motion, "n_states": self.n_states, "continuous": self.continuous}
        if self.continuous:
            d.update(axis_point_A=self.axis_point.tolist(), axis=self.axis.tolist(),
                     max_angle_deg=self.max_angle_deg, moving_kda=self.moving.mass_kda,
                     state_values=self.state_values)
        return d


# -- small helpers -------------------------------------------------------------------------------
def _rng(rng_or_seed) -> tuple[np.random.Generator, int | None]:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed, None
    seed = int(rng_or_seed)
    return np.random.default_rng(seed), seed


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniform random rotation (RELION matrix), from the geometry module's quaternion draw."""
    return quaternion_to_matrix(gaussian_quaternions(1, rng)[0])


def _unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    v = rng.normal(size=(3,) if n is None else (n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def expected_rg(n_residues: float) -> float:
    """Radius of gyration of a compact globular protein, Angstrom: 2.2 N^0.38."""
    return 2.2 * float(n_residues) ** 0.38


def box_for(max_radius_A: float, pixel_size: float, multiple: int = 2) -> int:
    """The smallest box (a multiple of ``multiple``) with max_radius < 0.45 * box * pixel_size."""
    b = math.ceil(max_radius_A / (FIT_FRACTION * pixel_size)) + 1
    return int(math.ceil(b / multiple) * multiple)


def max_mass_kda(box: int, pixel_size: float, compactness: float = 2.0) -> float:
    """Largest compact globular mass whose phantom fits the box: max radius ~ compactness * R_g."""
    r_max = FIT_FRACTION * box * pixel_size - 2 * 2.0 - 2 * resolution_sigma(None, pixel_size)
    rg = max(r_max / compactness, 5.0)
    n_res = (rg / 2.2) ** (1 / 0.38)
    return n_res * DALTON_PER_RESIDUE / 1000.0


# -- folding -------------------------------------------------------------------------------------
class _Chain:
    """Growth state of one pseudo-chain inside an ellipsoid (frame Q, semi-axes ax)."""

    def __init__(self, rng, n: int, axes: np.ndarray, Q: np.ndarray, beta: float):
        self.rng, self.n, self.axes, self.Q, self.beta = rng, n, axes, Q, beta
        self.xyz = np.zeros((n, 3))
        self.ss = np.full(n, "L")
        self.k = 0
        self.strain = 0  # residues placed with a clash or outside the envelope
        self._rots = np.zeros((0, 3, 3))

    def rotations(self, T: int) -> np.ndarray:
        """T uniform random rotations, drawn from the rng in batches (one geometry call each)."""
        if len(self._rots) < T:
            self._rots = np.concatenate([self._rots, quaternion_to_matrix(self.rng.normal(size=(max(512, T), 4)))])
        R, self._rots = self._rots[:T], self._rots[T:]
        return R

    def erad(self, x: np.ndarray) -> np.ndarray:
        """Ellipsoidal radius (1 on the surface) of points (..., 3)."""
        y = x @ self.Q
        return np.sqrt(((y / self.axes) ** 2).sum(-1))

    def clearance(self, cand: np.ndarray, skip_last: int = 1) -> np.ndarray:
        """Min distance of each candidate segment (T, L, 3) to the chain so far (excluding the last
        ``skip_last`` residues for the first candidate residue only), -> (T,)."""
        k = self.k
        if k == 0:
            return np.full(cand.shape[0], np.inf)
        prev = self.xyz[:k]
        T, L = cand.shape[:2]
        c = cand.reshape(-1, 3)
        d2 = ((c * c).sum(1)[:, None] + (prev * prev).sum(1)[None] - 2.0 * (c @ prev.T)).reshape(T, L, k)
        if skip_last:
            d2[:, 0, max(0, k - skip_last):] = np.inf
        return np.sqrt(np.maximum(d2.min(axis=(1, 2)), 0.0))

    def choose(self, cands: np.ndarray, ok: np.ndarray) -> int | None:
        if not ok.any():
            return None
        e = self.erad(cands).mean(-1)
        w = np.where(ok, np.exp(-self.beta * (e - e[ok].min())), 0.0)
        return int(self.rng.choice(len(w), p=w / w.sum()))

    def push(self, seg: np.ndarray, ss: str) -> None:
        m = len(seg)
        self.xyz[self.k:self.k + m] = seg
        self.ss[self.k:self.k + m] = ss
        self.k += m

    def last_dir(self) -> np.ndarray | None:
        if self.k < 2:
            return None
        v = self.xyz[self.k - 1] - self.xyz[self.k - 2]
        return v / np.linalg.norm(v)

    def first_steps(self, T: int) -> np.ndarray:
        """T unit bond vectors from the chain end with a CA virtual angle of 80-150 degrees."""
        u = _unit(self.rng, T * 4)
        prev = self.last_dir()
        if prev is not None:
            c = u @ prev
            u = u[(c > math.cos(math.radians(100))) & (c < math.cos(math.radians(30)))]
            if len(u) < T:
                u = np.concatenate([u, _unit(self.rng, T - len(u))])
        return u[:T]

    def loop(self, m: int, T: int = 24) -> None:
        for _ in range(m):
            if self.k >= self.n:
                return
            if self.k == 0:
                self.push(self._start(), "L")
                continue
            end = self.xyz[self.k - 1]
            cands = (end + CA_SPACING * self.first_steps(T))[:, None, :]
            clear = self.clearance(cands)
            inside = self.erad(cands)[:, 0] <= 1.0
            i = self.choose(cands, inside & (clear >= _CLASH))
            if i is None:  # relax: allow the envelope, then a mild clash, else the clearest spot
                i = self.choose(cands, (clear >= _CLASH) & (self.erad(cands)[:, 0] <= 1.25))
            if i is None:
                i = int(np.argmax(clear - 10 * np.maximum(self.erad(cands)[:, 0] - 1, 0)))
                self.strain += 1
            self.push(cands[i], "L")

    def _start(self) -> np.ndarray:
        d = _unit(self.rng)
        return (self.Q @ (d * self.axes * 0.7))[None]

    def place(self, seg_local: np.ndarray, ss: np.ndarray, T: int = 32) -> bool:
        """Place a rigid segment (L, 3) whose first residue is at the local origin: T random
        orientations, first residue one bond from the chain end; self-avoiding and inside."""
        if self.k == 0:
            self.push(self._start(), "L")
        end = self.xyz[self.k - 1]
        R = self.rotations(T)  # (T, 3, 3)
        firsts = end + CA_SPACING * self.first_steps(T)
        cands = np.einsum("tij,lj->tli", R, seg_local) + firsts[:, None, :]
        m = min(len(seg_local), self.n - self.k)
        cands = cands[:, :m]
        ok = (self.erad(cands).max(-1) <= 1.0) & (self.clearance(cands) >= _CLASH)
        i = self.choose(cands, ok)
        if i is None:
            return False
        seg = cands[i]
        self.xyz[self.k:self.k + m] = seg
        self.ss[self.k:self.k + m] = ss[:m]
        self.k += m
        return True


def _helix(m: int, rng) -> np.ndarray:
    """CA trace of an alpha helix (m, 3) with its first residue at the origin, axis along z."""
    j = np.arange(m)
    ph = np.deg2rad(100.0) * j + rng.uniform(0, 2 * np.pi)
    x = np.stack([2.3 * np.cos(ph), 2.3 * np.sin(ph), 1.5 * j], -1)
    return x - x[0]


def _sheet(n_strands: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """CA trace of an antiparallel sheet: strands along z, 4.8 A apart along x, zig-zag along y,
    joined by one-residue turns. Returns (coords with the first residue at the origin, ss)."""
    pts, ss = [], []
    for k in range(n_strands):
        js = range(length) if k % 2 == 0 else range(length - 1, -1, -1)
        for j in js:
            pts.append((4.8 * k, 0.9 * (-1) ** (j + k), 3.3 * j))
            ss.append("E")
        if k < n_strands - 1:  # turn residue beyond the strand end, between the two strands
            zend = 3.3 * (length - 1) + 3.0 if k % 2 == 0 else -3.0
            pts.append((4.8 * k + 2.4, 0.0, zend))
            ss.append("L")
    x = np.array(pts, np.float64)
    return x - x[0], np.array(ss)


_STYLES = {"alpha": (0.85, 0.0), "beta": (0.1, 0.75), "alpha_beta": (0.5, 0.35)}


def fold_domain(rng: np.random.Generator, n_res: int, style: str | None = None,
                aspect: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One compact domain: CA trace (n, 3) centred at the origin, secondary structure (n,) of
    'H', 'E', 'L', and the fold parameters (style, ellipsoid semi-axes, strain).

    The chain grows inside an ellipsoid sized for R_g = 2.2 n^0.38 A (elongated by up to
    ``aspect``), alternating loops (2-5 residues) with helices (6-18 residues) and small
    antiparallel sheets (2-4 strands of 4-7 residues) in the style's proportions.
    """
    n_res = int(max(n_res, 8))
    style = style or str(rng.choice(list(_STYLES), p=[0.35, 0.2, 0.45]))
    p_h, p_e = _STYLES[style]
    aspect = float(rng.uniform(1.0, 1.6)) if aspect is None else float(aspect)
    axes = np.array([aspect, *rng.uniform(0.75, 1.0, 2)])
    rg = expected_rg(n_res)
    axes = axes * 1.12 * rg / np.sqrt((axes ** 2).sum() / 5)  # uniform ellipsoid: R_g^2 = sum(a^2)/5
    ch = _Chain(rng, n_res, axes, _rotation(rng), beta=3.0)
    ch.loop(int(rng.integers(1, 4)))
    while ch.k < n_res:
        left = n_res - ch.k
        r = rng.uniform()
        placed = False
        if r < p_h and left >= 6:
            m = int(min(rng.integers(6, 19), left))
            placed = ch.place(_helix(m, rng), np.full(m, "H"))
            if not placed and m > 8:
                placed = ch.place(_helix(m // 2, rng), np.full(m // 2, "H"))
        elif r < p_h + p_e and left >= 9:
            ns, ln = int(rng.integers(2, 5)), int(rng.integers(4, 8))
            while ns * ln + ns - 1 > left and ns > 2:
                ns -= 1
            while ns * ln + ns - 1 > left and ln > 4:
                ln -= 1
            seg, ss = _sheet(ns, ln)
            placed = ch.place(seg, ss)
            if not placed and ns > 2:
                seg, ss = _sheet(2, ln)
                placed = ch.place(seg, ss)
        ch.loop(int(rng.integers(2, 6)) if placed else 3)
    ca = ch.xyz - ch.xyz.mean(0)
    return ca, ch.ss, {"style": style, "semi_axes_A": axes.round(2).tolist(), "strain": ch.strain}


def _residue_atoms(ca: np.ndarray, sigma: float, chain: int = 0) -> PseudoAtoms:
    """CA + side-chain-centroid pseudo-atoms (2 per residue, 110 Da): the centroid sits 2.4 A
    from CA along the bisector pointing away from its chain neighbours (outward on a helix,
    alternating above and below a sheet)."""
    n = len(ca)
    if n >= 3:
        prev = np.concatenate([ca[1:2], ca[:-1]])
        nxt = np.concatenate([ca[1:], ca[-2:-1]])
        b = 2 * ca - prev - nxt
    else:
        b = ca - ca.mean(0)
    b[0], b[-1] = ca[0] - ca.mean(0), ca[-1] - ca.mean(0)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    b = np.where(nb > 1e-6, b / np.maximum(nb, 1e-6), np.array([1.0, 0, 0]))
    sc = ca + _SC_OFFSET * b
    xyz = np.concatenate([ca, sc])
    mass = np.concatenate([np.full(n, _CA_DA), np.full(n, _SC_DA)])
    return PseudoAtoms(xyz, mass, np.full(2 * n, float(sigma)), np.full(2 * n, chain, np.int64))


def _domain_sizes(rng, n_res: int) -> list[int]:
    sizes = []
    left = n_res
    while left > 0:
        s = int(np.clip(rng.lognormal(np.log(150), 0.35), 60, 320))
        if left - s < 50:
            s = left if left <= 360 else left // 2
        sizes.append(s)
        left -= s
    return sizes


# -- docking -------------------------------------------------------------------------------------
def _clashes(tree: cKDTree, xyz: np.ndarray, contact: float) -> bool:
    d, _ = tree.query(xyz, k=1, distance_upper_bound=contact)
    return bool(np.isfinite(d).any())


def _dock(rng, existing: PseudoAtoms, part: PseudoAtoms, direction=None, rotate: bool = True,
          towards=None, contact: float = _CONTACT, settle: int = 30, n_tries: int = 6) -> PseudoAtoms:
    """Bring ``part`` (centred at its own centre of mass, randomly rotated) in along a direction
    towards ``towards`` (default the centre of mass of ``existing``) until first contact, keeping
    the closest of ``n_tries`` random directions and orientations (greedy compact packing;
    ``direction`` fixes it), then let it settle (``settle`` Monte Carlo moves, :func:`_settle`)."""
    part = part.transformed(None, -part.com)
    if not len(existing):
        return part.transformed(_rotation(rng)) if rotate else part
    c = existing.com if towards is None else np.asarray(towards, np.float64)
    tree = cKDTree(existing.xyz)
    r0 = existing.max_radius(c) + part.max_radius(np.zeros(3)) + contact + 1.0
    best = None
    for _ in range(1 if direction is not None else n_tries):
        trial = part.transformed(_rotation(rng)) if rotate else part
        u = _unit(rng) if direction is None else np.asarray(direction, np.float64) / np.linalg.norm(direction)
        d, step = r0, 3.0
        while d > -step and not _clashes(tree, trial.xyz + c + (d - step) * u, contact):
            d -= step
        for fine in (1.0, 1.0):  # refine the last coarse step
            if not _clashes(tree, trial.xyz + c + (d - fine) * u, contact):
                d -= fine
        if best is None or d < best[0]:
            best = (d, trial, u)
    d, trial, u = best
    part = trial.transformed(None, c + d * u)
    return _settle(rng, tree, part, c, contact, settle) if settle else part


def _settle(rng, tree: cKDTree, part: PseudoAtoms, target: np.ndarray, contact: float, n: int) -> PseudoAtoms:
    """Monte Carlo rigid-body moves (small rotation about the part's centre, a step towards
    ``target`` plus a tangential jitter) kept when clash-free and closer to the target: a docked
    body rolls into the crevices of what it touches, for a compact interface."""
    cur = part
    dist = np.linalg.norm(cur.com - target)
    for _ in range(n):
        com = cur.com
        to = target - com
        nt = np.linalg.norm(to)
        if nt < 1e-6:
            break
        ax = _unit(rng)
        R = axis_rotation(ax, rng.normal(0, 8.0))
        move = to / nt * rng.uniform(0.5, 3.0) + rng.normal(0, 1.0, 3)
        xyz = (cur.xyz - com) @ R.T + com + move
        if _clashes(tree, xyz, contact):
            continue
        nd = np.linalg.norm(xyz.mean(0) - target)
        if nd < dist:
            cur, dist = PseudoAtoms(xyz, cur.mass, cur.sigma, cur.chain), nd
    return cur


def _symmetric_radius(asu: PseudoAtoms, mats: np.ndarray, u: np.ndarray, contact: float = _CONTACT) -> float:
    """Smallest radius r (stepping in from clear of all copies) at which ``asu + r u`` does not
    clash with its copies ``mats[i] @ x`` (identity excluded by the caller)."""
    rp = asu.max_radius(np.zeros(3))

    def clash(r: float) -> bool:
        return _symmetric_clash(asu.xyz + r * u, mats, rp, contact, centre=r * u)

    sep = min(np.linalg.norm(R @ u - u) for R in mats)
    r = min((2 * rp + contact) / max(sep, 1e-3), 50 * rp + 100)
    step = max(2.0, rp / 8)
    while r - step >= 0 and not clash(r - step):
        r -= step
    for fine in (step / 3, step / 3, step / 9, step / 9):
        if r - fine >= 0 and not clash(r - fine):
            r -= fine
    return r


def _symmetric_clash(x: np.ndarray, mats: np.ndarray, rp: float, contact: float = _CONTACT, centre=None) -> bool:
    """Whether atoms x clash with their copies under ``mats`` (copies whose centre is farther
    than 2 rp + contact are skipped; ``centre`` defaults to the atoms' mean)."""
    c0 = x.mean(0) if centre is None else np.asarray(centre)
    near = [R for R in mats if np.linalg.norm(R @ c0 - c0) <= 2 * rp + contact]
    if not near:
        return False
    tree = cKDTree(x)
    return any(_clashes(tree, x @ R.T, contact) for R in near)


def _symmetric_settle(rng, asu: PseudoAtoms, mats: np.ndarray, n_iter: int = 90, axial: bool = False,
                      planar: bool = False, contact: float = _CONTACT) -> PseudoAtoms:
    """Monte Carlo moves of a placed asymmetric unit (small rotation about its centre, a step
    towards the origin, or towards the z axis when ``axial``, plus jitter) kept when its copies
    under ``mats`` stay clash-free and it gets closer: the unit slides into the pocket its
    neighbours form, so it touches copies across more than one symmetry axis (a connected
    assembly rather than isolated rings or trimers). ``planar`` keeps z and tilts (membranes)."""
    x = asu.xyz.copy()
    rp = float(np.sqrt(((x - x.mean(0)) ** 2).sum(1)).max())  # about the mean, as _symmetric_clash

    def dist(c):
        return float(np.hypot(c[0], c[1])) if axial else float(np.linalg.norm(c))

    cur = dist(x.mean(0))
    for it in range(n_iter):
        com = x.mean(0)
        mode = it % 3  # towards the centre, towards the axis (xy), along z towards the equator
        to = -com.copy()
        if axial or planar or mode == 1:
            to[2] = 0.0
        elif mode == 2:
            to[:2] = 0.0
        nt = np.linalg.norm(to)
        if nt < 1e-6:
            continue
        ax = np.array([0.0, 0.0, 1.0]) if planar else _unit(rng)
        R = axis_rotation(ax, rng.normal(0, 6.0))
        move = to / nt * rng.uniform(0.3, 2.5) * (1 - 0.7 * it / n_iter) + rng.normal(0, 0.7, 3)
        if planar:
            move[2] = 0.0
        y = (x - com) @ R.T + com + move
        d = dist(y.mean(0))
        if d >= cur or _symmetric_clash(y, mats, rp, contact):
            continue
        x, cur = y, d
    return PseudoAtoms(x, asu.mass, asu.sigma, asu.chain)


def _contact_copies(asu: PseudoAtoms, mats: np.ndarray, cutoff: float = _CONTACT + 2.5) -> list[int]:
    """Indices (into ``mats``) of the copies the unit touches (closest approach < cutoff)."""
    tree = cKDTree(asu.xyz)
    return [i for i, R in enumerate(mats) if _clashes(tree, asu.xyz @ R.T, cutoff)]


# -- builders (pseudo-atomic models) -------------------------------------------------------------
def _globular_atoms(rng, mass_kda: float, chain: int = 0, max_domains: int | None = None) -> tuple[PseudoAtoms, dict]:
    """A single chain of one or more docked domains."""
    n_res = max(8, int(round(mass_kda * 1000 / DALTON_PER_RESIDUE)))
    sizes = _domain_sizes(rng, n_res)
    if max_domains is not None and len(sizes) > max_domains:
        sizes = [n_res // max_domains] * (max_domains - 1) + [n_res - (n_res // max_domains) * (max_domains - 1)]
    model = PseudoAtoms.empty()
    folds = []
    for s in sizes:
        ca, ss, info = fold_domain(rng, s)
        dom = _residue_atoms(ca, float(rng.uniform(1.2, 1.9)), chain)
        model = PseudoAtoms.concat([model, _dock(rng, model, dom)])
        folds.append({"n_res": s, "helix": round(float((ss == "H").mean()), 3),
                      "strand": round(float((ss == "E").mean()), 3), **info})
    return model.transformed(None, -model.com), {"domains": folds}


def _centre(atoms: PseudoAtoms, axis_only: bool = False) -> PseudoAtoms:
    c = atoms.com
    if axis_only:
        c = np.array([0.0, 0.0, c[2]])
    return atoms.transformed(None, -c)


def _finish(atoms: PseudoAtoms, box: int, pixel_size: float, resolution: float | None, *, name: str,
            kind: str, symmetry: str, provenance: dict, mass_kda: float | None = None,
            extra_density: np.ndarray | None = None) -> Phantom:
    dens, lost = render(atoms, box, pixel_size, resolution)
    if extra_density is not None:
        dens = dens + extra_density.astype(np.float32)
    r = density_extent(atoms, pixel_size, resolution)
    fits = r < FIT_FRACTION * box * pixel_size
    prov = {"generator": "cryolens.core.simulate.proteins", "version": GENERATOR_VERSION, **provenance,
            "box": int(box), "pixel_size": float(pixel_size),
            "resolution_A": float(resolution) if resolution else 2.0 * float(pixel_size),
            "n_pseudo_atoms": len(atoms), "rg_A": round(atoms.rg, 2), "mass_lost_outside_box": round(lost, 6)}
    m = atoms.mass_kda if mass_kda is None else mass_kda
    return Phantom(np.ascontiguousarray(dens, np.float32), float(pixel_size), name, round(float(m), 6), symmetry,
                   jsonable(prov), kind, None, atoms, round(r, 2), bool(fits))


def _seed_tag(seed) -> str:
    return "" if seed is None else f"-s{seed}"


def _fitting(build: Callable[[float], PseudoAtoms | tuple], mass_kda: float, box: int, pixel_size: float,
             resolution: float | None, shrink: float = 0.8, tries: int = 6, extent=None):
    """Build at ``mass_kda``; while it does not fit the box, rebuild at ``shrink`` times the mass.
    Returns (result, mass used, tries used)."""
    extent = extent or (lambda res: density_extent(res[0] if isinstance(res, tuple) else res, pixel_size, resolution))
    m = mass_kda
    lim = FIT_FRACTION * box * pixel_size
    for i in range(tries):
        res = build(m)
        e = extent(res)
        if e < lim or i == tries - 1:
            return res, m, i + 1
        # size ~ mass^0.38: aim below the limit, shrinking by at least ``shrink``
        m *= float(np.clip(0.92 * (lim / e) ** (1 / 0.38), 0.4, shrink))
    raise AssertionError


def globular(rng_or_seed, box: int = 64, pixel_size: float = 3.0, mass_kda: float = 150.0,
             resolution: float | None = None, fit: bool = True) -> Phantom:
    """A single-chain globular protein of one or more compact domains (kind 'globular')."""
    rng, seed = _rng(rng_or_seed)

    def build(m):
        return _globular_atoms(rng, m)

    (atoms, info), m, tries = _fitting(build, mass_kda, box, pixel_size, resolution, tries=6 if fit else 1)
    atoms = _centre(atoms)
    return _finish(atoms, box, pixel_size, resolution, name=f"globular-{atoms.mass_kda:.0f}kDa{_seed_tag(seed)}",
                   kind="globular", symmetry="C1",
                   provenance={"builder": "globular", "seed": seed, "requested_kda": mass_kda, "fit_tries": tries,
                               **info})


def _complex_atoms(rng, mass_kda: float, n_sub: int | None = None) -> tuple[PseudoAtoms, dict]:
    if n_sub is None:
        n_sub = int(np.clip(round(rng.uniform(0.6, 1.4) * (2 + math.log2(max(mass_kda, 100) / 100) * 1.5)), 2, 12))
    frac = rng.dirichlet(np.full(n_sub, 2.0))
    n_types = int(rng.integers(max(1, n_sub // 3), n_sub + 1))  # some subunits repeat (homo-copies)
    kind_of = np.arange(n_sub) % n_types
    type_kda = [float(frac[kind_of == t].mean()) * mass_kda for t in range(n_types)]  # copies share a mass
    types = [None] * n_types
    model = PseudoAtoms.empty()
    subs = []
    order = rng.permutation(n_sub)
    for i in order:
        t = int(kind_of[i])
        if types[t] is None:
            types[t] = _globular_atoms(rng, max(type_kda[t], 10.0), chain=0)[0]
        part = types[t]
        part = PseudoAtoms(part.xyz, part.mass, part.sigma, np.full(len(part), len(subs), np.int64))
        model = PseudoAtoms.concat([model, _dock(rng, model, part)])
        subs.append({"type": t, "kda": round(part.mass_kda, 2)})
    return model, {"subunits": subs}


def complex_(rng_or_seed, box: int = 64, pixel_size: float = 3.0, mass_kda: float = 300.0,
             n_subunits: int | None = None, resolution: float | None = None, fit: bool = True) -> Phantom:
    """An asymmetric multi-subunit complex (kind 'complex'): 2-12 subunits, some repeated,
    docked at random to first contact."""
    rng, seed = _rng(rng_or_seed)
    (atoms, info), m, tries = _fitting(lambda mm: _complex_atoms(rng, mm, n_subunits), mass_kda, box, pixel_size,
                                       resolution, tries=6 if fit else 1)
    atoms = _centre(atoms)
    return _finish(atoms, box, pixel_size, resolution, name=f"complex-{atoms.mass_kda:.0f}kDa{_seed_tag(seed)}",
                   kind="complex", symmetry="C1",
                   provenance={"builder": "complex", "seed": seed, "requested_kda": mass_kda, "fit_tries": tries,
                               **info})


def _assembly_atoms(rng, symmetry: str, mass_kda: float, asu: PseudoAtoms | None = None,
                    attempts: int = 4) -> tuple[PseudoAtoms, dict]:
    G = point_group(symmetry)
    kind, _ = parse_symmetry(symmetry)
    n = len(G)
    if asu is None:
        asu = _globular_atoms(rng, max(mass_kda / n, 8.0), max_domains=3)[0]
    asu = asu.transformed(None, -asu.com)
    best = None
    for attempt in range(attempts if n > 1 else 1):
        unit = asu.transformed(_rotation(rng), None)
        if kind == "C":
            phi = rng.uniform(0, 2 * np.pi)
            u = np.array([np.cos(phi), np.sin(phi), rng.uniform(-0.3, 0.3)])
        else:
            u = _unit(rng)
            while min(np.linalg.norm(R @ u - u) for R in G[1:]) < 0.3:  # off every symmetry axis
                u = _unit(rng)
        u = u / np.linalg.norm(u)
        if n == 1:
            best = (1, unit, [])
            break
        r = _symmetric_radius(unit, G[1:], u)
        placed = _symmetric_settle(rng, unit.transformed(None, r * u), G[1:], axial=(kind == "C"))
        # settling can slide a unit off a contact: bring it back in along its own direction
        com = placed.com
        u2 = np.array([com[0], com[1], 0.0]) if kind == "C" else com
        if np.linalg.norm(u2) > 1e-6:
            u2 = u2 / np.linalg.norm(u2)
            base = placed.transformed(None, -com)
            r2 = _symmetric_radius(base, G[1:], u2)
            if kind == "C":
                base = base.transformed(None, np.array([0.0, 0.0, com[2]]))
            placed = base.transformed(None, r2 * u2)
        contacts = _contact_copies(placed, G[1:])
        order = generated_order([G[1 + c] for c in contacts])
        if best is None or order > best[0]:
            best = (order, placed, contacts)
        if order == n:
            break
    order, placed, contacts = best
    copies = [PseudoAtoms(placed.xyz @ R.T, placed.mass, placed.sigma, np.full(len(placed), i, np.int64))
              for i, R in enumerate(G)]
    atoms = PseudoAtoms.concat(copies)
    return _centre(atoms, axis_only=True), {"copies": n, "asu_kda": round(asu.mass_kda, 2),
                                            "asu_radius_A": round(float(np.linalg.norm(placed.com)), 2),
                                            "asu_contacts": [c + 1 for c in contacts],
                                            "connected": bool(order == n)}


def assembly(rng_or_seed, box: int = 64, pixel_size: float = 3.0, mass_kda: float = 400.0,
             symmetry: str | None = None, resolution: float | None = None, fit: bool = True) -> Phantom:
    """A point-group assembly (kind 'assembly'): an asymmetric unit placed off-axis and docked
    against its copies under C<n>, D<n>, T, O or I (RELION orientations, see :mod:`.symmetry`).
    T, O and I give hollow cages, as ferritin or encapsulins."""
    rng, seed = _rng(rng_or_seed)
    if symmetry is None:
        symmetry = _draw_symmetry(rng, mass_kda)
    parse_symmetry(symmetry)
    sym = symmetry.upper().replace("I2", "I")
    (atoms, info), m, tries = _fitting(lambda mm: _assembly_atoms(rng, sym, mm), mass_kda, box, pixel_size,
                                       resolution, tries=6 if fit else 1)
    return _finish(atoms, box, pixel_size, resolution, name=f"assembly-{sym}-{atoms.mass_kda:.0f}kDa{_seed_tag(seed)}",
                   kind="assembly", symmetry=sym,
                   provenance={"builder": "assembly", "seed": seed, "requested_kda": mass_kda, "fit_tries": tries,
                               **info})


def _draw_symmetry(rng, mass_kda: float) -> str:
    r = rng.uniform()
    if r < 0.45:
        return f"C{int(rng.choice([2, 3, 4, 5, 6, 7, 8]))}"
    if r < 0.75:
        return f"D{int(rng.choice([2, 3, 4, 5, 6, 7]))}"
    if r < 0.88 or mass_kda < 300:
        return "T"
    if r < 0.97 or mass_kda < 800:
        return "O"
    return "I"


def _helix_clash(sub: PseudoAtoms, r: float, rise: float, twist: float, rp: float) -> bool:
    """Whether a subunit at radius r clashes with its helical copies k = 1, 2, ... (rise, twist)."""
    x0 = sub.xyz + np.array([r, 0.0, 0.0])
    c0 = np.array([r, 0.0, 0.0])
    reach = 2 * rp + _CONTACT
    tree = None
    kmax = int(math.ceil(reach / rise)) + 1
    for k in range(1, kmax + 1):
        R = axis_rotation((0, 0, 1), k * twist)
        t = np.array([0, 0, k * rise])
        if np.linalg.norm(R @ c0 + t - c0) > reach:
            continue
        tree = tree or cKDTree(x0)
        if _clashes(tree, x0 @ R.T + t, _CONTACT):
            return True
    return False


def _helical_radius(sub: PseudoAtoms, r: float, rise: float, twist: float, rp: float) -> float:
    """Smallest radius (stepping in from r) without clashes at this rise and twist."""
    step = max(1.0, rp / 10)
    while r - step >= 0 and not _helix_clash(sub, r - step, rise, twist, rp):
        r -= step
    for fine in (step / 3, step / 3):
        if r - fine >= 0 and not _helix_clash(sub, r - fine, rise, twist, rp):
            r -= fine
    return r


def _helical_rise(sub: PseudoAtoms, r: float, twist: float, rp: float, min_rise: float = 3.0,
                  start: float | None = None) -> float:
    """Tightest rise (stepping down from clash-free) for a subunit at radius r with this twist."""
    reach = 2 * rp + _CONTACT

    def clash(rise: float) -> bool:
        return _helix_clash(sub, r, rise, twist, rp)

    rise = reach if start is None else start
    step = max(1.0, rp / 10)
    while rise - step >= min_rise and not clash(rise - step):
        rise -= step
    for fine in (step / 3, step / 3, step / 9, step / 9):
        if rise - fine >= min_rise and not clash(rise - fine):
            rise -= fine
    return rise


def _filament_atoms(rng, subunit_kda: float, length_A: float, twist: float | None = None,
                    max_radius: float | None = None) -> tuple[PseudoAtoms, dict]:
    sub = _globular_atoms(rng, subunit_kda, max_domains=2)[0]
    sub = sub.transformed(_rotation(rng))
    sub = sub.transformed(None, -sub.com)
    rp = sub.max_radius(np.zeros(3))
    # a tube: neighbours along the 1-start helix sit side by side (2 r sin(twist/2) ~ c * 2 rp),
    # and the rise is the tightest without clashes, so successive turns (or strands) touch
    c = float(rng.uniform(0.75, 1.0))
    lim = np.inf if max_radius is None else max_radius
    if twist is None:
        per_turn = float(rng.uniform(2.05, 12.0))
        while per_turn > 2.05 and rp * (1 + c / math.sin(math.pi / per_turn)) > lim:
            per_turn = max(2.05, 0.85 * per_turn)
        twist = float(rng.choice([-1, 1]) * 360.0 / per_turn)
    r = min(c * rp / max(math.sin(math.radians(abs(twist)) / 2), 1e-3), max(lim - rp, 0.0))
    rise = _helical_rise(sub, r, twist, rp)
    for _ in range(2):  # tighten: radius in until contact, then the rise again
        r = _helical_radius(sub, r, rise, twist, rp)
        rise = _helical_rise(sub, r, twist, rp, start=rise)
    x0 = sub.transformed(None, np.array([r, 0.0, 0.0]))
    zlo, zhi = float(x0.xyz[:, 2].min()), float(x0.xyz[:, 2].max())
    kmax = int(math.ceil(length_A / rise)) + 1
    ks = [k for k in range(-kmax, kmax + 1) if k * rise + zhi <= length_A / 2 and k * rise + zlo >= -length_A / 2]
    ks = ks or [0]
    copies = []
    for j, k in enumerate(ks):
        R = axis_rotation((0, 0, 1), k * twist)
        copies.append(PseudoAtoms(x0.xyz @ R.T + np.array([0, 0, k * rise]), x0.mass, x0.sigma,
                                  np.full(len(x0), j, np.int64)))
    atoms = PseudoAtoms.concat(copies)
    return atoms, {"rise_A": round(rise, 4), "twist_deg": round(twist, 4), "subunit_kda": round(sub.mass_kda, 2),
                   "n_subunits": len(copies), "subunit_radius_A": round(r, 2), "length_A": round(length_A, 1)}


def filament(rng_or_seed, box: int = 64, pixel_size: float = 3.0, subunit_kda: float = 30.0,
             length_A: float | None = None, twist_deg: float | None = None, resolution: float | None = None,
             fit: bool = True) -> Phantom:
    """A helical filament segment along z (kind 'filament'): one subunit at a radius from the
    axis, copies by the screw (rise, twist). The twist is drawn (2-12 subunits a turn, either
    hand) unless given; the radius is the one of a few giving the densest packing and the rise is
    the tightest without clashes. The segment holds the whole subunits within ``length_A``
    (default 0.8 of the box) along z; ``fits`` means it lies in the cylinder of radius and
    half-length 0.45 * box * pixel_size. Symmetry 'H(rise,twist)'.
    """
    rng, seed = _rng(rng_or_seed)
    length_A = 0.8 * box * pixel_size if length_A is None else float(length_A)
    lim = FIT_FRACTION * box * pixel_size
    pad = 2 * math.sqrt(1.9 ** 2 + resolution_sigma(resolution, pixel_size) ** 2)

    def extent(res):
        xyz = res[0].xyz
        return max(np.sqrt((xyz[:, :2] ** 2).sum(1)).max(), np.abs(xyz[:, 2] - xyz[:, 2].mean()).max()) + pad

    (atoms, info), m, tries = _fitting(lambda mm: _filament_atoms(rng, mm, length_A, twist_deg, lim - pad),
                                       subunit_kda, box, pixel_size, resolution, tries=6 if fit else 1, extent=extent)
    atoms = _centre(atoms, axis_only=True)
    sym = helical_symbol(info["rise_A"], info["twist_deg"])
    ph = _finish(atoms, box, pixel_size, resolution,
                 name=f"filament-{info['subunit_kda']:.0f}kDa-x{info['n_subunits']}{_seed_tag(seed)}",
                 kind="filament", symmetry=sym,
                 provenance={"builder": "filament", "seed": seed, "requested_subunit_kda": subunit_kda,
                             "fit_tries": tries, **info})
    ph.max_radius_A = round(extent((atoms,)), 2)
    ph.fits = bool(ph.max_radius_A < lim)
    return ph


def max_subunit_kda(box: int, pixel_size: float, length_A: float | None = None, n_min: int = 4) -> float:
    """Largest filament subunit for which a segment of ``length_A`` (default 0.8 box) holds
    about ``n_min`` subunits."""
    length_A = 0.8 * box * pixel_size if length_A is None else length_A
    rg = length_A / (n_min * 1.6 * 1.5)
    return (rg / 2.2) ** (1 / 0.38) * DALTON_PER_RESIDUE / 1000.0


# -- membrane proteins ---------------------------------------------------------------------------
def _tm_subunit(rng, n_helices: int, soluble_kda: Sequence[tuple[float, int]]) -> tuple[PseudoAtoms, PseudoAtoms, dict]:
    """A bundle of transmembrane helices about z (membrane slab at z = 0) with loops, and soluble
    domains docked from above (+1) or below (-1). Returns (all atoms, TM atoms, info)."""
    pos = [np.zeros(2)]
    tries = 0
    while len(pos) < n_helices and tries < 500:
        tries += 1
        j = int(rng.integers(len(pos)))
        a = rng.uniform(0, 2 * np.pi)
        p = pos[j] + rng.uniform(9.5, 11.0) * np.array([np.cos(a), np.sin(a)])
        if min(np.linalg.norm(p - q) for q in pos) >= 9.0:
            pos.append(p)
    pos = np.array(pos) - np.mean(pos, 0)
    cas = []
    prev_end = None
    for i, p in enumerate(pos):
        m = int(rng.integers(21, 27))
        tilt = rng.normal(0, 0.15, 2)
        d = np.array([tilt[0], tilt[1], 1.0])
        d /= np.linalg.norm(d)
        if i % 2:
            d = -d
        R = _frame_from_z(d)
        h = _helix(m, rng)
        h = h - h.mean(0)
        h = h @ R.T + np.array([p[0], p[1], rng.normal(0, 1.5)])
        if prev_end is not None:  # loop outside the slab, bulging away from it
            a, b = prev_end, h[0]
            k = max(2, int(math.ceil(np.linalg.norm(b - a) / 3.3)))
            s = np.linspace(0, 1, k + 2)[1:-1, None]
            bulge = np.sign(a[2]) * 5.0 * np.sin(np.pi * s)
            cas.append(a + s * (b - a) + bulge * np.array([0, 0, 1.0]))
        cas.append(h)
        prev_end = h[-1]
    ca = np.concatenate(cas)
    tm = _residue_atoms(ca, float(rng.uniform(1.2, 1.7)))
    model = tm
    for kda, side in soluble_kda:
        dom = _globular_atoms(rng, kda, max_domains=2)[0]
        dom = _dock(rng, model, dom, direction=(0.3 * rng.normal(), 0.3 * rng.normal(), float(side)),
                    towards=np.array([0.0, 0.0, 0.0]))
        model = PseudoAtoms.concat([model, dom])
    return model, tm, {"tm_helices": len(pos), "soluble_kda": [round(k, 1) for k, _ in soluble_kda],
                       "soluble_side": [int(s) for _, s in soluble_kda]}


def _frame_from_z(d: np.ndarray) -> np.ndarray:
    """A rotation taking +z to the unit vector d."""
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(z, d)
    s, c = np.linalg.norm(v), float(z @ d)
    if s < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    return axis_rotation(v / s, math.degrees(math.atan2(s, c)))


def _smooth_step(x: np.ndarray, width: float) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / width))


def _belt_density(box: int, pixel_size: float, centre: np.ndarray, r_out: float, half_h: float, shape: str,
                  level: float, protein: np.ndarray) -> np.ndarray:
    """A low-density detergent micelle (oblate ellipsoid) or nanodisc lipid (flat cylinder)
    around the TM region, with the protein's own volume excluded."""
    ax = (np.arange(box) - box // 2) * pixel_size
    z = ax[:, None, None] - centre[2]
    y = ax[None, :, None] - centre[1]
    x = ax[None, None, :] - centre[0]
    rho = np.sqrt(x * x + y * y)
    if shape == "micelle":
        e = np.sqrt((rho / r_out) ** 2 + (z / half_h) ** 2)
        belt = _smooth_step((1 - e) * min(r_out, half_h), 2.0)
    else:
        belt = _smooth_step(r_out - rho, 2.0) * _smooth_step(half_h - np.abs(z), 2.0)
    smooth = ndimage.gaussian_filter(protein.astype(np.float64), 2.0 / pixel_size)
    excl = np.clip(smooth / (0.35 * PROTEIN_DENSITY), 0, 1)
    return (level * belt * (1 - excl)).astype(np.float32)


def _msp_belt(rng, radius: float, z0: float) -> PseudoAtoms:
    """Two membrane-scaffold-protein helices wrapped around a nanodisc (at z0 +- 5.5 A)."""
    rings = []
    n = int(round(2 * np.pi * radius / 1.5))
    j = np.arange(n)
    th = 2 * np.pi * j / n
    ph = np.deg2rad(100.0) * j
    for dz in (-5.5, 5.5):
        r = radius + 2.3 * np.cos(ph)
        rings.append(np.stack([r * np.cos(th), r * np.sin(th), z0 + dz + 2.3 * np.sin(ph)], -1))
    ca = np.concatenate(rings)
    return _residue_atoms(ca, 1.6)


def _membrane_atoms(rng, mass_kda: float, n_sub: int | None, belt: str,
                    soluble: bool = True) -> tuple[tuple[PseudoAtoms, PseudoAtoms], dict]:
    if n_sub is None:
        n_sub = int(rng.choice([1, 1, 2, 3, 4, 4, 5, 6]))
    sub_kda = mass_kda / n_sub
    n_helices = int(np.clip(round(rng.uniform(0.5, 1.5) * min(sub_kda, 120) / 12), 1, 14))
    if not soluble:  # all of the mass in the membrane
        n_helices = int(np.clip(round(sub_kda * 1000 / DALTON_PER_RESIDUE / 30), 1, 24))
    tm_kda = n_helices * 30 * DALTON_PER_RESIDUE / 1000
    rest = max(sub_kda - tm_kda, 0.0)
    domains = []
    if rest > 8 and soluble:
        n_dom = int(rng.integers(1, 3)) if rest > 40 else 1
        sides = rng.choice([-1, 1], n_dom) if rng.uniform() < 0.4 else np.full(n_dom, int(rng.choice([-1, 1])))
        domains = [(rest / n_dom, int(s)) for s in sides]
    sub, tm, info = _tm_subunit(rng, n_helices, domains)
    sub = sub.transformed(None, -np.array([*tm.com[:2], 0.0]))
    tm = tm.transformed(None, -np.array([*tm.com[:2], 0.0]))
    if n_sub > 1:
        G = point_group(f"C{n_sub}")
        rot = axis_rotation((0, 0, 1), rng.uniform(0, 360))
        sub, tm = sub.transformed(rot), tm.transformed(rot)
        phi = rng.uniform(0, 2 * np.pi)
        u = np.array([np.cos(phi), np.sin(phi), 0.0])
        r = _symmetric_radius(sub, G[1:], u)
        moved = _symmetric_settle(rng, sub.transformed(None, r * u), G[1:], planar=True)
        # the same rigid motion for the TM part (settling moves are rotations about z and xy shifts)
        A = moved.xyz - moved.xyz.mean(0)
        B = sub.xyz - sub.xyz.mean(0)
        U, _, Vt = np.linalg.svd(B.T @ A)
        Rm = (U @ np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))]) @ Vt).T
        tm = tm.transformed(Rm, moved.xyz.mean(0) - Rm @ sub.xyz.mean(0))
        sub = moved
        sub = PseudoAtoms.concat([sub.transformed(R) for R in G], relabel=True)
        tm = PseudoAtoms.concat([tm.transformed(R) for R in G], relabel=True)
        info["subunit_radius_A"] = round(float(np.hypot(*moved.com[:2])), 2)
    info.update(copies=n_sub, belt=belt)
    return (sub, tm), info


def membrane(rng_or_seed, box: int = 64, pixel_size: float = 3.0, mass_kda: float = 200.0,
             n_subunits: int | None = None, belt: str | None = None, belt_level: float | None = None,
             soluble: bool = True, resolution: float | None = None, fit: bool = True) -> Phantom:
    """A membrane protein in a detergent micelle or a nanodisc (kind 'membrane').

    One or more (C<n> about z) subunits, each a bundle of transmembrane helices with optional
    soluble domains; the belt (the lipid/detergent ring of real class averages) is a smooth
    low-density body around the TM region (``belt_level`` times the protein interior density,
    default 0.3-0.5), centred on the TM region in the membrane plane (``provenance['belt_centre_A']``
    about the box centre, z = ``membrane_z_A``), the protein's own volume excluded; a nanodisc adds the two scaffold-protein helices
    at its rim. ``mass_kda`` is the protein's mass; the belt's is ``provenance['belt_kda']``.
    ``soluble=False`` puts all the mass in transmembrane helices (no soluble domains).
    """
    rng, seed = _rng(rng_or_seed)
    belt = belt or str(rng.choice(["micelle", "micelle", "nanodisc"]))
    if belt not in ("micelle", "nanodisc"):
        raise ValueError(f"belt must be 'micelle' or 'nanodisc', got {belt!r}")
    belt_level = float(rng.uniform(0.3, 0.5)) if belt_level is None else float(belt_level)
    width = float(rng.uniform(12, 22)) if belt == "micelle" else float(rng.uniform(15, 30))
    half_h = float(rng.uniform(17, 22))

    def extent(res):
        (atoms, tm), _ = res
        c = atoms.com
        r_belt = np.sqrt((tm.xyz[:, :2] ** 2).sum(1)).max() + width + 6 + np.hypot(c[0], c[1])
        return max(density_extent(atoms, pixel_size, resolution, c), np.hypot(r_belt, abs(c[2]) + half_h))

    ((atoms, tm), info), m, tries = _fitting(lambda mm: _membrane_atoms(rng, mm, n_subunits, belt, soluble),
                                             mass_kda, box,
                                             pixel_size, resolution, tries=6 if fit else 1, extent=extent)
    # the protein's centre of mass to the box centre (on the axis already for C<n>, n > 1); the
    # membrane plane was z = 0 and the belt is centred on the TM region's axis
    shift = -atoms.com if info["copies"] == 1 else -np.array([0.0, 0.0, atoms.com[2]])
    atoms, tm = atoms.transformed(None, shift), tm.transformed(None, shift)
    z_mem = float(shift[2])
    tm_slab = tm.xyz[np.abs(tm.xyz[:, 2] - z_mem) < half_h]
    axis_xy = np.zeros(2) if info["copies"] > 1 or not len(tm_slab) else tm_slab[:, :2].mean(0)
    centre = np.array([axis_xy[0], axis_xy[1], z_mem])
    r_tm = float(np.sqrt(((tm_slab[:, :2] - axis_xy) ** 2).sum(1)).max()) if len(tm_slab) else 10.0
    r_out = r_tm + width
    msp = (_msp_belt(rng, r_out + 3.0, 0.0).transformed(None, centre) if belt == "nanodisc"
           else PseudoAtoms.empty())
    protein, _ = render(atoms, box, pixel_size, resolution)
    msp_map, _ = render(msp, box, pixel_size, resolution)
    lipid = _belt_density(box, pixel_size, centre, r_out, half_h, belt, belt_level * PROTEIN_DENSITY,
                          protein + msp_map)
    belt_kda = (float(lipid.sum()) * pixel_size ** 3 + float(msp.mass.sum())) / 1000
    r_all = max(density_extent(atoms, pixel_size, resolution),
                math.hypot(float(np.hypot(*axis_xy)) + r_out + 6, abs(z_mem) + half_h))
    sym = f"C{info['copies']}"
    ph = _finish(PseudoAtoms.concat([atoms, msp]) if len(msp) else atoms, box, pixel_size, resolution,
                 name=f"membrane-{sym}-{belt}-{atoms.mass_kda:.0f}kDa{_seed_tag(seed)}", kind="membrane",
                 symmetry=sym, mass_kda=atoms.mass_kda, extra_density=lipid,
                 provenance={"builder": "membrane", "seed": seed, "requested_kda": mass_kda, "fit_tries": tries,
                             **info, "membrane_z_A": z_mem, "belt_centre_A": centre, "belt_outer_radius_A": r_out,
                             "belt_half_thickness_A": half_h, "belt_level": belt_level, "belt_kda": belt_kda,
                             "tm_radius_A": r_tm})
    ph.atoms = atoms
    ph.max_radius_A = round(r_all, 2)
    ph.fits = bool(r_all < FIT_FRACTION * box * pixel_size)
    return ph


# -- conformational variants ---------------------------------------------------------------------
def _interface(a: PseudoAtoms, b: PseudoAtoms) -> np.ndarray:
    """Mean position of the closest pairs between two bodies (their contact point)."""
    d, i = cKDTree(a.xyz).query(b.xyz, k=1)
    near = np.argsort(d)[:12]
    return 0.5 * (b.xyz[near] + a.xyz[i[near]]).mean(0)


def _path_clearance(fixed: PseudoAtoms, mov: PseudoAtoms, axis, point, angle: float,
                    fractions=(0.25, 0.5, 0.75, 1.0)) -> float:
    """Closest approach (A) of the moving body to the fixed one along a rotation about the axis."""
    tree = cKDTree(fixed.xyz)
    out = np.inf
    for f in fractions:
        R = axis_rotation(axis, angle * f)
        out = min(out, float(tree.query(mov.xyz @ R.T + (point - R @ point), k=1)[0].min()))
    return out


def conformational(rng_or_seed, box: int = 64, pixel_size: float = 3.0, mass_kda: float = 200.0,
                   motion: str | None = None, max_angle_deg: float | None = None,
                   resolution: float | None = None, fit: bool = True, kind: str | None = None) -> Phantom:
    """A protein with conformational variants; the Phantom is state 0 / t = 0 and carries a
    :class:`Conformations` (``phantom.conformations.at(t)`` / ``.states``).

    * ``'hinge'``: a rigid body (1-3 domains) and a moving domain (20-40 % of the mass) swung
      about an axis through the edge of their interface, perpendicular to the line between
      their centres, by up to 20-50 degrees (opening the cleft; as an IgG Fab arm or a kinase);
    * ``'ratchet'``: two bodies (about 2:1, as the ribosome's subunits); the smaller turns by
      6-15 degrees about the axis through the interface joining their centres;
    * ``'composition'``: discrete states of a complex with and without a peripheral subunit.

    ``kind`` labels it (default 'globular' for a hinge, 'complex' otherwise).
    """
    rng, seed = _rng(rng_or_seed)
    motion = motion or str(rng.choice(["hinge", "hinge", "ratchet", "composition"]))
    if motion not in ("hinge", "ratchet", "composition"):
        raise ValueError(f"motion must be 'hinge', 'ratchet' or 'composition', got {motion!r}")

    def build(m):
        if motion == "composition":
            atoms, info = _complex_atoms(rng, m, n_sub=int(rng.integers(3, 7)))
            return (atoms, None, info)
        frac = rng.uniform(0.2, 0.4) if motion == "hinge" else rng.uniform(0.3, 0.4)
        if motion == "hinge":
            fixed = _globular_atoms(rng, m * (1 - frac))[0]
            mov = _globular_atoms(rng, m * frac, max_domains=1)[0]
        else:
            fixed = _globular_atoms(rng, m * (1 - frac))[0]
            mov = _globular_atoms(rng, m * frac)[0]
        fixed = PseudoAtoms(fixed.xyz, fixed.mass, fixed.sigma, np.zeros(len(fixed), np.int64))
        mov = _dock(rng, fixed, PseudoAtoms(mov.xyz, mov.mass, mov.sigma, np.ones(len(mov), np.int64)))
        return (PseudoAtoms.concat([fixed, mov]), (fixed, mov), {"moving_fraction": round(float(frac), 3)})

    (atoms, parts, info), m, tries = _fitting(build, mass_kda, box, pixel_size, resolution, tries=6 if fit else 1,
                                              extent=lambda res: density_extent(res[0], pixel_size, resolution) * 1.1)
    shift = -atoms.com
    atoms = atoms.transformed(None, shift)
    tpl_prov = {"builder": "conformational", "seed": seed, "requested_kda": mass_kda, "fit_tries": tries,
                "motion": motion, **info}
    kind = kind or ("globular" if motion == "hinge" else "complex")
    name = f"{kind}-{motion}-{atoms.mass_kda:.0f}kDa{_seed_tag(seed)}"
    if motion == "composition":
        chains = np.unique(atoms.chain)
        # the peripheral subunit: farthest centre of mass from the whole
        far = max(chains, key=lambda c: np.linalg.norm(atoms.select(atoms.chain == c).com))
        states = [atoms, atoms.select(atoms.chain != far)]
        tpl = {"name": name, "mass_kda": atoms.mass_kda, "symmetry": "C1", "kind": kind,
               "provenance": {**tpl_prov, "removed_chain": int(far)}}
        conf = Conformations("composition", atoms, None, box=box, pixel_size=pixel_size, resolution=resolution,
                             template=tpl, state_atoms=states)
    else:
        fixed, mov = (p.transformed(None, shift) for p in parts)
        cf, cm = fixed.com, mov.com
        nvec = (cm - cf) / np.linalg.norm(cm - cf)
        contact = _interface(fixed, mov)
        if motion == "ratchet":
            axis, point = nvec, contact
            angle = float(rng.uniform(6, 15)) if max_angle_deg is None else float(max_angle_deg)
            angle *= float(rng.choice([-1, 1]))
        else:
            axis = np.cross(nvec, _unit(rng))
            axis /= np.linalg.norm(axis)
            w = np.cross(axis, nvec)  # in the plane of motion, perpendicular to the centre line
            rb = mov.max_radius(cm)
            angle = float(rng.uniform(20, 50)) if max_angle_deg is None else float(max_angle_deg)
            best = None  # hinge at either edge of the interface, either sense: the one that opens
            for sgn in (1.0, -1.0):
                p = contact + sgn * 0.5 * rb * w
                for a in (angle, -angle):
                    clear = _path_clearance(fixed, mov, axis, p, a)
                    if best is None or clear > best[0]:
                        best = (clear, p, a)
            _, point, angle = best
        tpl = {"name": name, "mass_kda": atoms.mass_kda, "symmetry": "C1", "kind": kind, "provenance": tpl_prov}
        conf = Conformations(motion, fixed, mov, box=box, pixel_size=pixel_size, resolution=resolution,
                             template=tpl, axis_point=point, axis=axis, max_angle_deg=angle)
        tpl_prov.update(axis=conf.axis, axis_point_A=conf.axis_point, max_angle_deg=angle,
                        path_min_distance_A=round(_path_clearance(fixed, mov, axis, point, angle), 2))
    ph = _finish(atoms, box, pixel_size, resolution, name=name, kind=kind, symmetry="C1", provenance=tpl_prov)
    if conf.continuous:  # exactly the map at(0) gives (the fixed part is rendered on its own)
        ph.density = conf.density(0.0)
    ph.conformations = conf
    return ph


# -- the simplest phantom ------------------------------------------------------------------------
def blob(seed: int = 0, box: int = 64, pixel_size: float = 3.0, mass_kda: float | None = None) -> Phantom:
    """``example.blob_phantom`` as a Phantom (the trivial baseline), scaled to ``mass_kda`` if given."""
    d = blob_phantom(box, seed).astype(np.float32)
    d = np.roll(d, tuple(box // 2 - np.rint(ndimage.center_of_mass(d)).astype(int)), (0, 1, 2))
    m = float(d.sum()) * pixel_size ** 3 / 1000
    if mass_kda is not None:
        d *= mass_kda / m
        m = mass_kda
    return Phantom(d, float(pixel_size), f"blob-s{seed}", round(m, 3), "C1",
                   {"builder": "example.blob_phantom", "seed": seed}, "globular", max_radius_A=0.45 * box * pixel_size)


# -- the training source -------------------------------------------------------------------------
_KIND_P = {"globular": 0.2, "complex": 0.25, "assembly": 0.25, "filament": 0.1, "membrane": 0.2}
_MASS_RANGE = {"globular": (100, 500), "complex": (150, 2000), "assembly": (150, 2000), "membrane": (100, 1000)}


def random_phantom(rng_or_seed, box: int = 64, pixel_size: float = 3.0, kind: str | None = None,
                   mass_kda: float | None = None, resolution: float | None = None,
                   p_conformations: float = 0.3) -> Phantom:
    """One phantom of any kind with sensible distributions (the training-data source).

    Kinds: globular 20 %, complex 25 %, assembly 25 % (C2-C8 45 %, D2-D7 30 %, T, O, I),
    filament 10 %, membrane 20 %. Mass log-uniform in the kind's range (globular 100-500 kDa,
    complex/assembly 150-2000, membrane 100-1000; filaments: subunits of 10-120 kDa), capped so
    the particle fits the box (``max_mass_kda``); a phantom that still does not fit is rebuilt
    smaller. A fraction ``p_conformations`` of globular/complex phantoms carry conformational
    variants (hinge, ratchet or compositional). With ``mass_kda`` the mass is fixed (for a
    filament: the subunit mass). The same seed gives byte-identical maps.
    """
    rng, seed = _rng(rng_or_seed)
    if kind is None:
        kind = str(rng.choice(list(_KIND_P), p=list(_KIND_P.values())))
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "filament":
        hi = float(np.clip(max_subunit_kda(box, pixel_size), 15.0, 120.0))
        m = float(np.exp(rng.uniform(np.log(10), np.log(hi)))) if mass_kda is None else float(mass_kda)
        ph = filament(rng, box, pixel_size, subunit_kda=m, resolution=resolution)
    else:
        if mass_kda is None:
            lo, hi = _MASS_RANGE[kind]
            compact = {"assembly": 1.9, "membrane": 2.4, "complex": 2.5}.get(kind, 2.2)  # max radius / R_g
            cap = max_mass_kda(box, pixel_size, compactness=compact)
            hi = max(min(hi, cap), 30.0)
            lo = min(lo, hi / 2)
            m = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        else:
            m = float(mass_kda)
        if kind in ("globular", "complex") and rng.uniform() < p_conformations:
            motion = "hinge" if kind == "globular" else str(rng.choice(["ratchet", "composition", "hinge"]))
            ph = conformational(rng, box, pixel_size, m, motion=motion, resolution=resolution, kind=kind)
        elif kind == "globular":
            ph = globular(rng, box, pixel_size, m, resolution)
        elif kind == "complex":
            ph = complex_(rng, box, pixel_size, m, resolution=resolution)
        elif kind == "assembly":
            ph = assembly(rng, box, pixel_size, m, resolution=resolution)
        else:
            ph = membrane(rng, box, pixel_size, m, resolution=resolution)
    if seed is not None:
        ph.provenance["seed"] = seed
        ph.provenance["source"] = f"random_phantom({seed}, box={box}, pixel_size={pixel_size}, kind={kind!r}, " \
                                  f"mass_kda={mass_kda!r})"
        ph.name = f"{ph.name}-s{seed}"
        if ph.conformations is not None:
            ph.conformations.template["name"] = ph.name
    return ph


def phantom_library(n: int, seed: int = 0, box: int = 64, pixel_size: float = 3.0,
                    kinds: Sequence[str] | None = None, resolution: float | None = None) -> list[Phantom]:
    """n distinct phantoms, deterministic in ``seed``: the kinds are stratified (every kind
    appears in proportion, shuffled) and each phantom has its own seed from
    ``SeedSequence(seed)``, recorded in its provenance so it can be rebuilt alone with
    ``random_phantom(phantom.provenance['seed'], box, pixel_size, kind=phantom.kind)``."""
    return list(iter_phantoms(n, seed, box, pixel_size, kinds, resolution))


def iter_phantoms(n: int, seed: int = 0, box: int = 64, pixel_size: float = 3.0,
                  kinds: Sequence[str] | None = None, resolution: float | None = None) -> Iterator[Phantom]:
    """``phantom_library``'s phantoms one at a time (a caller can stop between two)."""
    kinds = list(kinds or KINDS)
    p = np.array([_KIND_P.get(k, 1.0) for k in kinds])
    counts = np.floor(p / p.sum() * n).astype(int)
    rem = n - counts.sum()
    order = np.argsort(-(p / p.sum() * n - counts), kind="stable")
    counts[order[:rem]] += 1
    rng = np.random.default_rng(seed)
    plan = rng.permutation(np.repeat(np.arange(len(kinds)), counts))
    seeds = np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)
    for s, k in zip(seeds, plan):
        yield random_phantom(int(s), box, pixel_size, kind=kinds[k], resolution=resolution)
