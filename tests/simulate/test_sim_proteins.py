"""Phantom proteins (core.simulate.proteins / symmetry): determinism, mass, symmetry, belts,
conformations; and the maps they are built on (core.maps): rendering, atomic models (gemmi,
optional), user maps and resampling."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from conftest import shared_path
from cryolens.core.geometry import random_rotations
from cryolens.core import maps as M
from cryolens.core.mrc import read_map
from cryolens.core.simulate import proteins as P
from cryolens.core.simulate.symmetry import axis_rotation, generated_order, group_order, point_group

BOX, PX = 48, 4.0  # small maps keep the file fast; the physics is in Angstrom


def ncc(a, b) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def transform_map(vol: np.ndarray, R: np.ndarray, shift_A=(0.0, 0.0, 0.0), px: float = PX) -> np.ndarray:
    """The map moved by x -> R x + t about the box centre: out(x) = vol(R^T (x - t)); arrays (z, y, x)."""
    D = vol.shape[0]
    c = np.full(3, D // 2, float)
    Pm = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    M = Pm @ np.asarray(R).T @ Pm
    t = np.asarray(shift_A, float)[::-1] / px
    return ndimage.affine_transform(vol, M, offset=c - M @ c - M @ t, order=3, mode="constant")


def outer_shell_max(d: np.ndarray, frac: float = 0.48) -> float:
    D = d.shape[0]
    z, y, x = np.indices(d.shape) - D // 2
    return float(d[np.sqrt(x * x + y * y + z * z) > frac * D].max())


def faces_max(d: np.ndarray) -> float:
    return float(max(d[0].max(), d[-1].max(), d[:, 0].max(), d[:, -1].max(), d[:, :, 0].max(), d[:, :, -1].max()))


@pytest.fixture(scope="module")
def one_of_each():
    return {k: P.random_phantom(11, BOX, PX, kind=k) for k in P.KINDS}


# -- determinism ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_same_seed_same_bytes_different_seed_different_map(one_of_each):
    for kind, ph in one_of_each.items():
        again = P.random_phantom(11, BOX, PX, kind=kind)
        assert again.density.tobytes() == ph.density.tobytes(), kind
        assert again.name == ph.name and again.provenance == ph.provenance
        other = P.random_phantom(12, BOX, PX, kind=kind)
        assert other.density.shape == ph.density.shape
        assert ncc(other.density, ph.density) < 0.95, kind
    # a Generator works too, and draws from its stream
    rng = np.random.default_rng(5)
    a, b = P.random_phantom(rng, BOX, PX), P.random_phantom(rng, BOX, PX)
    assert a.density.tobytes() != b.density.tobytes()


@pytest.mark.slow
def test_phantom_library_is_deterministic_distinct_and_covers_all_kinds():
    lib = P.phantom_library(5, seed=3, box=40, pixel_size=5.0)
    again = P.phantom_library(5, seed=3, box=40, pixel_size=5.0)
    assert [p.density.tobytes() for p in lib] == [p.density.tobytes() for p in again]
    assert sorted(p.kind for p in lib) == sorted(P.KINDS)
    assert len({p.name for p in lib}) == 5
    for i in range(5):
        for j in range(i + 1, 5):
            assert ncc(lib[i].density, lib[j].density) < 0.9
    # each member can be rebuilt alone from its recorded seed
    p = lib[2]
    alone = P.random_phantom(p.provenance["seed"], 40, 5.0, kind=p.kind)
    assert alone.density.tobytes() == p.density.tobytes()


# -- every map: format, centring, inside the box -------------------------------------------------
def test_maps_are_centred_non_negative_in_mass_units_and_inside_the_box(one_of_each):
    for kind, ph in one_of_each.items():
        d = ph.density
        assert d.dtype == np.float32 and d.shape == (BOX,) * 3 and d.min() >= 0, kind
        assert ph.fits and ph.max_radius_A < 0.45 * BOX * PX, kind
        assert faces_max(d) < 1e-3 * d.max(), kind
        if kind != "filament":  # a filament segment reaches its length along z, not a sphere
            assert outer_shell_max(d) < 1e-2 * d.max(), kind
        # protein centre of mass at D//2 (the belt of a membrane protein is not protein)
        com = ph.atoms.com
        assert np.abs(com[:2]).max() < 1.0, kind
        if kind not in ("membrane",):
            assert abs(com[2]) < 1.0, kind
            assert np.allclose(ndimage.center_of_mass(d), BOX // 2, atol=0.5), kind
        # the map integrates to the mass: Da / A^3
        total = float(d.sum()) * PX ** 3 / 1000
        extra = ph.provenance.get("belt_kda", 0.0)
        assert total == pytest.approx(ph.mass_kda + extra, rel=0.01), kind
        assert ph.provenance["mass_lost_outside_box"] < 1e-4
        assert ph.kind == kind and ph.pixel_size == PX
        json.dumps(ph.provenance)  # JSON-able


def test_render_is_exact_in_mass_and_centred_on_the_atom():
    atoms = M.PseudoAtoms(np.array([[3.3, -5.1, 7.7]]), np.array([1000.0]), np.array([1.5]), np.zeros(1, np.int64))
    d, lost = M.render(atoms, 32, 2.0)
    assert lost == pytest.approx(0.0, abs=1e-9)
    assert float(d.sum()) * 8 == pytest.approx(1000.0, rel=1e-5)
    zc, yc, xc = ndimage.center_of_mass(d)
    assert np.allclose([xc - 16, yc - 16, zc - 16], np.array([3.3, -5.1, 7.7]) / 2.0, atol=0.02)
    # an atom outside the box loses its mass, and says so
    far = M.PseudoAtoms(np.array([[100.0, 0, 0]]), np.array([10.0]), np.array([1.0]), np.zeros(1, np.int64))
    assert M.render(far, 32, 2.0)[1] == pytest.approx(1.0)


# -- folds and mass --------------------------------------------------------------------------------
def test_folded_domain_is_a_compact_self_avoiding_chain_with_secondary_structure():
    rng = np.random.default_rng(0)
    ca, ss, info = P.fold_domain(rng, 150, style="alpha_beta")
    bonds = np.linalg.norm(np.diff(ca, axis=0), axis=1)
    assert np.all((bonds > 3.6) & (bonds < 4.1))
    d = np.sqrt(((ca[:, None] - ca[None]) ** 2).sum(-1))
    nonbonded = d[np.triu_indices(len(ca), 2)]
    assert nonbonded.min() > 3.3 and np.mean(nonbonded < 4.0) < 0.01
    assert (ss == "H").mean() > 0.15 and (ss == "E").mean() > 0.05
    rg = np.sqrt(((ca - ca.mean(0)) ** 2).sum(1).mean())
    assert 0.8 * P.expected_rg(150) < rg < 1.3 * P.expected_rg(150)
    # helices: i -> i+3 CA distance ~5 A (1.5 A rise, 100 deg/residue), strands ~10 A
    idx = np.flatnonzero((ss[:-3] == "H") & (ss[3:] == "H"))
    assert 4.5 < np.median(np.linalg.norm(ca[idx + 3] - ca[idx], axis=1)) < 5.8


def test_mass_scaling_volume_and_radius_of_gyration():
    vols, rgs, n_atoms = [], [], []
    for m in (50, 100, 200):
        ph = P.globular(4, 64, 4.0, mass_kda=m, fit=False)
        assert ph.mass_kda == pytest.approx(m, rel=0.02)
        n_atoms.append(len(ph.atoms))
        rgs.append(ph.atoms.rg)
        vols.append(M.estimate_mass_kda(ph.density, 4.0)[0])
        n_res = m * 1000 / P.DALTON_PER_RESIDUE
        assert 0.85 * P.expected_rg(n_res) < ph.atoms.rg < 1.45 * P.expected_rg(n_res), m
        # the volume-based estimate finds the mass back (the unit convention holds)
        assert 0.7 * m < vols[-1] < 1.4 * m, m
    assert n_atoms[0] < n_atoms[1] < n_atoms[2]
    assert vols[0] < vols[1] < vols[2]
    assert rgs[0] < rgs[1] < rgs[2]


def test_a_large_request_is_rebuilt_smaller_to_fit_and_max_mass_helps():
    ph = P.globular(1, 32, 3.0, mass_kda=400)  # 96 A box cannot hold 400 kDa
    assert ph.fits and ph.mass_kda < 400 and ph.provenance["fit_tries"] > 1
    assert P.max_mass_kda(64, 3.0) < P.max_mass_kda(128, 3.0)
    assert P.box_for(80.0, 3.0) * 3.0 * 0.45 > 80.0


# -- symmetry ------------------------------------------------------------------------------------
def test_point_groups_in_relion_orientation():
    for sym, n in (("C1", 1), ("C7", 7), ("D2", 4), ("D7", 14), ("T", 12), ("O", 24), ("I", 60)):
        G = point_group(sym)
        assert G.shape == (n, 3, 3) and group_order(sym) == n and np.allclose(G[0], np.eye(3))
        assert np.allclose(G @ G.transpose(0, 2, 1), np.eye(3), atol=1e-12)
        assert generated_order(G[1:]) == n or n == 1
        for A in G[1:4]:  # closed
            for B in G[1:4]:
                assert np.abs(G - A @ B).sum((1, 2)).min() < 1e-9

    def has(G, axis, fold):
        return np.abs(G - axis_rotation(axis, 360 / fold)).sum((1, 2)).min() < 1e-9

    assert has(point_group("D5"), (1, 0, 0), 2) and has(point_group("D5"), (0, 0, 1), 5)
    assert has(point_group("T"), (0, 0, 1), 3)
    assert all(has(point_group("O"), ax, 4) for ax in ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    assert has(point_group("I"), (0, 0, 1), 2) and has(point_group("I"), (1, 0, (1 + 5 ** 0.5) / 2), 5)
    with pytest.raises(ValueError):
        point_group("Q3")


@pytest.mark.parametrize("sym", ["C5", "D3", "T", "O"])
def test_assembly_is_invariant_under_its_group_only(sym):
    ph = P.assembly(7, BOX, PX, mass_kda=250, symmetry=sym)
    assert ph.symmetry == sym and ph.kind == "assembly" and ph.fits
    assert ph.provenance["connected"]  # every subunit touches copies that generate the group
    G = point_group(sym)
    d = ph.density
    picks = G[1:] if len(G) <= 6 else G[[1, len(G) // 2, len(G) - 1]]
    for R in picks:
        assert ncc(d, transform_map(d, R)) > 0.97
    for R in random_rotations(2, seed=3):
        assert ncc(d, transform_map(d, R)) < 0.9
    # identical subunits: the chains are copies of one another
    a = ph.atoms
    assert len(np.unique(a.chain)) == len(G)
    assert np.allclose(a.xyz[a.chain == 1], a.xyz[a.chain == 0] @ G[1].T, atol=1e-6)


def test_helical_filament_is_invariant_under_its_screw_only():
    ph = P.filament(3, BOX, PX, subunit_kda=15)
    pr = ph.provenance
    rise, twist = pr["rise_A"], pr["twist_deg"]
    assert ph.symmetry == f"H({rise:.3f},{twist:.3f})" and ph.kind == "filament" and pr["n_subunits"] >= 4
    d = ph.density
    z = (np.arange(BOX) - BOX // 2) * PX
    central = np.broadcast_to((np.abs(z) < pr["length_A"] / 2 - 2 * rise - 10)[:, None, None], d.shape)
    assert central.any() and d[central].sum() > 0.2 * d.sum()
    screw = transform_map(d, axis_rotation((0, 0, 1), twist), (0, 0, rise))
    assert ncc(d[central], screw[central]) > 0.95
    wrong_hand = transform_map(d, axis_rotation((0, 0, 1), -twist), (0, 0, rise))
    assert ncc(d[central], wrong_hand[central]) < 0.8
    rotation_only = transform_map(d, axis_rotation((0, 0, 1), twist))
    assert ncc(d[central], rotation_only[central]) < 0.8


# -- membrane proteins ---------------------------------------------------------------------------
@pytest.mark.parametrize("belt", ["micelle", "nanodisc"])
def test_membrane_belt_is_a_ring_at_the_equator(belt):
    ph = P.membrane(2, 64, PX, mass_kda=120, n_subunits=4, belt=belt, soluble=False)
    pr = ph.provenance
    assert ph.kind == "membrane" and ph.symmetry == "C4" and pr["belt"] == belt and ph.fits
    d = ph.density
    D = d.shape[0]
    ax = (np.arange(D) - D // 2) * PX
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    rho = np.hypot(x, y)
    zm, r_tm, r_out, h = pr["membrane_z_A"], pr["tm_radius_A"], pr["belt_outer_radius_A"], pr["belt_half_thickness_A"]
    ring = (rho > r_tm + 4) & (rho < r_out - 4)
    level = pr["belt_level"] * M.PROTEIN_DENSITY
    equator = ring & (np.abs(z - zm) < 6)
    above = ring & (np.abs(z - zm) > h + 8) & (np.abs(z - zm) < h + 20)
    outside = (rho > r_out + 14) & (rho < r_out + 24) & (np.abs(z - zm) < 6)  # beyond the MSP rim
    assert d[equator].mean() > 0.6 * level
    assert d[above].mean() < 0.05 * level
    assert d[outside].mean() < 0.05 * level
    # the radial profile in the membrane plane: protein, then the belt plateau, then nothing
    prof = [d[(np.abs(z - zm) < 6) & (rho >= r) & (rho < r + PX)].mean() for r in np.arange(0, r_out + 24, PX)]
    assert max(prof[int((r_tm + 4) // PX):int((r_out - 4) // PX)]) < 1.5 * level or belt == "nanodisc"
    assert prof[-1] < 0.05 * level
    # the belt is not protein: mass_kda is the protein's, the belt's mass is recorded apart
    assert ph.mass_kda == pytest.approx(ph.atoms.mass_kda, rel=1e-3) and pr["belt_kda"] > 0
    assert float(d.sum()) * PX ** 3 / 1000 == pytest.approx(ph.mass_kda + pr["belt_kda"], rel=0.01)


# -- conformations -------------------------------------------------------------------------------
def _moving_angle(conf, t):
    """Angle (deg) of the moving part's centre of mass about the hinge axis."""
    m = conf.atoms_at(t)
    c = m.select(m.chain == 1).com - conf.axis_point
    c = c - (c @ conf.axis) * conf.axis
    c0 = conf.moving.com - conf.axis_point
    c0 = c0 - (c0 @ conf.axis) * conf.axis
    return np.degrees(np.arctan2(np.cross(c0, c) @ conf.axis, c0 @ c))


def test_hinge_motion_moves_the_domain_and_keeps_the_rest():
    ph = P.conformational(1, BOX, PX, mass_kda=120, motion="hinge")
    conf = ph.conformations
    assert conf.continuous and conf.motion == "hinge" and 20 <= abs(conf.max_angle_deg) <= 50
    assert ph.provenance["path_min_distance_A"] >= 3.5  # the domain swings clear of the rest
    d0, dh, d1 = conf.density(0.0), conf.density(0.5), conf.density(1.0)
    assert np.array_equal(ph.density, d0)
    assert ncc(d0, d1) < 0.97
    assert ncc(dh, d0) > ncc(d0, d1) and ncc(dh, d1) > ncc(d0, d1)
    # the moving domain turns by t * max_angle about the hinge; t = 0.5 is halfway
    assert _moving_angle(conf, 0.5) == pytest.approx(conf.max_angle_deg / 2, abs=1e-6)
    assert _moving_angle(conf, 1.0) == pytest.approx(conf.max_angle_deg, abs=1e-6)
    # the rigid part is unchanged: where only it has density, the maps agree to float precision
    fixed = M.render(conf.fixed, BOX, PX)[0]
    moving = [M.render(conf.atoms_at(t).select(conf.atoms_at(t).chain == 1), BOX, PX)[0] for t in (0.0, 1.0)]
    only_fixed = (fixed > 0.2 * fixed.max()) & (moving[0] < 1e-6) & (moving[1] < 1e-6)
    assert only_fixed.sum() > 100
    assert np.abs(d0 - d1)[only_fixed].max() < 1e-5 * d0.max()
    # no clash along the path, and at(t) is a full Phantom
    ph_half = conf.at(0.5)
    assert ph_half.provenance["conformation_t"] == 0.5 and ph_half.mass_kda == ph.mass_kda
    assert np.array_equal(ph_half.density, dh)
    assert len(conf.states) == 3 and np.array_equal(conf.states[1].density, dh)


def test_ratchet_and_compositional_variants():
    rat = P.conformational(2, BOX, PX, mass_kda=150, motion="ratchet").conformations
    assert rat.motion == "ratchet" and 6 <= abs(rat.max_angle_deg) <= 15
    assert 0.8 < ncc(rat.density(0), rat.density(1)) < 0.995
    comp = P.conformational(3, BOX, PX, mass_kda=150, motion="composition")
    c = comp.conformations
    assert not c.continuous and c.n_states == 2
    s0, s1 = c.states
    assert s1.mass_kda < s0.mass_kda and np.array_equal(s0.density, comp.density)
    assert ncc(s0.density, s1.density) < 0.99
    with pytest.raises(ValueError):
        c.at(0.5)


# -- user sources --------------------------------------------------------------------------------
_PDB = """\
CRYST1   80.000   80.000   80.000  90.00  90.00  90.00 P 1           1
ATOM      1  CA  ALA A   1      10.000  10.000  10.000  1.00 20.00           C
ATOM      2  CA  ALA A   2      22.000  10.000  10.000  1.00 20.00           C
ATOM      3  SD  MET B   3      10.000  25.000  14.000  1.00 20.00           S
HETATM    4  O   HOH W   4      40.000  40.000  40.000  1.00 20.00           O
END
"""


@pytest.mark.parametrize("method", ["gaussian", "gemmi"])
def test_atomic_model_density_peaks_at_the_atoms(tmp_path, method):
    pytest.importorskip("gemmi", reason="gemmi (optional extra 'models') is not installed")
    f = tmp_path / "tiny.pdb"
    f.write_text(_PDB)
    ph = M.from_atomic_model(f, 40, 1.5, method=method)
    assert ph.kind == "atomic_model" and ph.provenance["n_atoms"] == 3  # the water is gone
    assert ph.mass_kda == pytest.approx((12.011 * 2 + 32.06) / 1000, rel=1e-3)
    d = ph.density
    assert float(d.sum()) * 1.5 ** 3 / 1000 == pytest.approx(ph.mass_kda, rel=0.01)
    # the file's atoms, moved by the recorded shift (centre of mass to the box centre)
    xyz = np.array([[10, 10, 10], [22, 10, 10], [10, 25, 14]], float) + np.array(ph.provenance["shift_A"])
    assert np.allclose(xyz, ph.atoms.xyz, atol=1e-3)
    for p in xyz:
        i = np.rint(p / 1.5 + 20).astype(int)  # (x, y, z) voxel
        win = d[i[2] - 2:i[2] + 3, i[1] - 2:i[1] + 3, i[0] - 2:i[0] + 3]
        assert win.max() == d[i[2] - 1:i[2] + 2, i[1] - 1:i[1] + 2, i[0] - 1:i[0] + 2].max()  # local peak
        zc, yc, xc = ndimage.center_of_mass(win)
        assert np.allclose(np.array([xc, yc, zc]) - 2 + i - 20, p / 1.5, atol=0.3), (method, p)
    # the sulphur (32 Da) is the strongest peak
    s = np.rint(xyz[2] / 1.5 + 20).astype(int)
    assert d[s[2], s[1], s[0]] == pytest.approx(d.max(), rel=0.05)

    # the same model as mmCIF, with a C2 biological assembly (180 degrees about z)
    gemmi = pytest.importorskip("gemmi")
    st = gemmi.read_structure(str(f))
    st.setup_entities()
    gen = gemmi.Assembly.Gen()
    for name, mat in (("1", gemmi.Mat33()), ("2", gemmi.Mat33([[-1, 0, 0], [0, -1, 0], [0, 0, 1]]))):
        op = gemmi.Assembly.Operator()
        op.name, op.transform = name, gemmi.Transform(mat, gemmi.Vec3(0, 0, 0))
        gen.operators.append(op)
    gen.subchains = [sc.subchain_id() for ch in st[0] for sc in ch.subchains()]
    asm = gemmi.Assembly("1")
    asm.generators.append(gen)
    st.assemblies.append(asm)
    cif = tmp_path / "tiny.cif"
    st.make_mmcif_document().write_file(str(cif))
    again = M.from_atomic_model(cif, 40, 1.5, method=method)
    assert np.allclose(again.density, d, atol=1e-5 * d.max())
    dimer = M.from_atomic_model(cif, 40, 1.5, method=method, assembly_name="1", symmetry="C2")
    assert dimer.mass_kda == pytest.approx(2 * ph.mass_kda, rel=1e-4) and dimer.symmetry == "C2"
    dd = dimer.density
    assert ncc(dd, transform_map(dd, axis_rotation((0, 0, 1), 180), px=1.5)) > 0.99
    assert ncc(dd, transform_map(dd, axis_rotation((0, 0, 1), 90), px=1.5)) < 0.5
    with pytest.raises(ValueError, match="no assembly"):
        M.from_atomic_model(cif, 40, 1.5, assembly_name="7")


def test_user_map_trpv1_resampled_centred_with_mass():
    path = shared_path("maps", "trpv1_volume.mrc")
    ph = M.from_map(path, 64, 3.0)
    d = ph.density
    assert d.shape == (64,) * 3 and d.dtype == np.float32 and d.min() >= 0 and ph.kind == "map"
    assert ph.provenance["source_pixel_size"] == pytest.approx(4.88) and ph.provenance["resample"] == "spline"
    thr = ph.provenance["mass_threshold"]
    com = ndimage.center_of_mass(np.where(d > thr, d, 0))
    assert np.allclose(com, 32, atol=0.5)
    orig, vox = read_map(path)
    m0, _ = M.estimate_mass_kda(orig, vox)
    assert 200 < ph.mass_kda < 450 and ph.mass_kda == pytest.approx(m0, rel=1e-6)  # a tetramer, ~300-380 kDa
    assert float(d.sum()) * 27 / 1000 == pytest.approx(ph.mass_kda, rel=1e-3)
    # the volume above the threshold is kept by resampling (same physical size)
    assert M.estimate_mass_kda(d, 3.0, threshold=thr)[0] == \
        pytest.approx(m0, rel=0.1)
    assert ph.fits and faces_max(d) < 1e-4 * d.max() and outer_shell_max(d) < 1e-2 * d.max()


def test_resampling_fourier_and_spline_agree_with_a_direct_render(tmp_path):
    fine = P.globular(3, 96, 1.5, mass_kda=60, resolution=6.0)
    direct = M.render(fine.atoms, 48, 3.0, resolution=6.0)[0]
    for method in ("fourier", "spline"):
        out, used = M.resample_map(fine.density, 1.5, 48, 3.0, method=method)
        assert used == method and out.shape == (48,) * 3
        assert ncc(out, direct) > 0.99, method
        assert float(out.sum()) * 27 == pytest.approx(float(fine.density.sum()) * 1.5 ** 3, rel=0.02)
    with pytest.raises(ValueError):
        M.resample_map(fine.density, 1.5, 48, 1.7, method="fourier")
    # from_map through a file, with the mass given
    from cryolens.core.mrc import write_map
    f = tmp_path / "fine.mrc"
    write_map(f, fine.density, 1.5)
    ph = M.from_map(f, 48, 3.0, mass_kda=fine.mass_kda)
    assert ph.provenance["resample"] == "fourier" and ph.mass_kda == fine.mass_kda
    assert ncc(ph.density, direct) > 0.98


def test_save_writes_the_map_and_its_metadata(tmp_path, one_of_each):
    ph = one_of_each["assembly"]
    path = ph.save(tmp_path / "a.mrc")
    d, vox = read_map(path)
    assert np.array_equal(d, ph.density) and vox == pytest.approx(PX)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["symmetry"] == ph.symmetry and meta["mass_kda"] == ph.mass_kda
    assert meta["provenance"]["seed"] == 11


def test_blob_baseline_is_a_phantom():
    b = P.blob(2, BOX, PX, mass_kda=100)
    assert b.density.shape == (BOX,) * 3 and b.mass_kda == 100
    assert float(b.density.sum()) * PX ** 3 / 1000 == pytest.approx(100, rel=1e-4)
