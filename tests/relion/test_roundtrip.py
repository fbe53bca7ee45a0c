"""RELION <-> cryoSPARC conversion is lossless both ways, on every real particle file in ../shared/data.

STAR -> .cs -> STAR: every block, column, row and value comes back (strings identical, numbers
within the precision the original file printed them with). .cs -> STAR -> .cs: every field with
its dtype and shape, every uid, every value bit for bit. The files are read in place.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from cryosparc.dataset import Dataset

from cryolens.formats import read_particles, write_particles

# particle STAR files: those with an rlnImageName label (job.star files name it only in values)
STARS = sorted(p for p in SHARED_DATA.rglob("*.star")
               if re.search(r"^\s*_rlnImageName\b", p.read_text(errors="replace"), re.M)) \
    if SHARED_DATA.is_dir() else []
CSS = sorted(SHARED_DATA.rglob("*.cs")) if SHARED_DATA.is_dir() else []
NO_DATA = "real test data not available: ../shared/data is absent (a user's clone has none)"


def _ids(paths):
    return [str(p.relative_to(SHARED_DATA)) for p in paths]


def star_tokens(path: Path) -> dict[str, dict[str, list[str]]]:
    """{block: {label: [value text per row]}} of a STAR file, as printed (loops and key-value blocks)."""
    blocks: dict[str, dict[str, list[str]]] = {}
    block = labels = None
    in_loop = False
    for line in Path(path).read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("data_"):
            block, labels, in_loop = blocks.setdefault(s[5:], {}), [], False
        elif s == "loop_":
            in_loop, labels = True, []
        elif s.startswith("_"):
            parts = s.split()
            if in_loop:
                labels.append(parts[0][1:])
                block[parts[0][1:]] = []
            else:
                block[parts[0][1:]] = [parts[1]]
        elif in_loop:
            for label, value in zip(labels, s.split()):
                block[label].append(value)
    return blocks


def _close(a: str, b: str) -> bool:
    """Equal strings, or numbers equal within the precision ``a`` was printed with."""
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    m = re.fullmatch(r"[-+]?\d*\.?(\d*)(?:[eE]([-+]?\d+))?", a)
    decimals, exp = (len(m.group(1)), int(m.group(2) or 0)) if m else (15, 0)
    return abs(x - y) <= 0.5 * 10.0 ** (exp - decimals) + 1e-12 * abs(x)


def star_differences(orig: Path, back: Path) -> list[str]:
    a, b = star_tokens(orig), star_tokens(back)
    out = []
    if list(a) != list(b):
        out.append(f"blocks {list(a)} -> {list(b)}")
    for name, cols in a.items():
        got = b.get(name, {})
        if list(cols) != list(got):
            out.append(f"data_{name} columns: lost {[c for c in cols if c not in got]}, "
                       f"added {[c for c in got if c not in cols]}, order same: {set(cols) == set(got)}")
        for label, values in cols.items():
            if label not in got:
                continue
            bad = [i for i, (x, y) in enumerate(zip(values, got[label])) if not _close(x, y)]
            if len(values) != len(got[label]) or bad:
                i = bad[0] if bad else 0
                out.append(f"data_{name}/{label}: {len(bad)} of {len(values)} rows differ, e.g. row {i + 1} "
                           f"{values[i]!r} -> {got[label][i]!r}" if bad else f"{label}: row count changed")
    return out


def cs_differences(a: Dataset, b: Dataset) -> list[str]:
    out = []
    if a.descr() != b.descr():
        da, db = [tuple(x) for x in a.descr()], [tuple(x) for x in b.descr()]
        out.append(f"fields lost {[x for x in da if x not in db]}, added {[x for x in db if x not in da]}, "
                   f"same order: {set(da) == set(db)}")
    for f in a.fields():
        if f not in b.fields():
            continue
        x, y = np.asarray(a[f]), np.asarray(b[f])
        same = (x.shape == y.shape and bool((x == y).all())) if x.dtype == object else \
            (x.dtype == y.dtype and x.tobytes() == y.tobytes())
        if not same:
            out.append(f"{f}: {x[:2]!r} -> {y[:2]!r}")
    return out


@pytest.mark.parametrize("star", STARS or [None], ids=_ids(STARS) or ["no-data"])
def test_star_to_cs_to_star_is_lossless(star, tmp_path):
    if star is None:
        pytest.skip(NO_DATA)
    ps = read_particles(star)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # micrographs absent: coordinates stay in rln/ fields
        write_particles(ps, tmp_path / "p.cs")
    back = read_particles(tmp_path / "p.cs", project_dir=ps.root)
    write_particles(back, tmp_path / "back.star")
    diff = star_differences(star, tmp_path / "back.star")
    assert not diff, f"{star.name}: STAR -> .cs -> STAR changed:\n  " + "\n  ".join(diff)


@pytest.mark.parametrize("cs", CSS or [None], ids=_ids(CSS) or ["no-data"])
def test_cs_to_star_to_cs_is_lossless(cs, tmp_path):
    if cs is None:
        pytest.skip(NO_DATA)
    ps = read_particles(cs)
    write_particles(ps, tmp_path / "p.star")
    back = read_particles(tmp_path / "p.star", project_dir=ps.root)
    write_particles(back, tmp_path / "back.cs")
    diff = cs_differences(Dataset.load(cs), Dataset.load(tmp_path / "back.cs"))
    assert not diff, f"{cs.name}: .cs -> STAR -> .cs changed:\n  " + "\n  ".join(diff)


def test_a_value_changed_on_the_other_side_wins_and_nothing_else_moves(tmp_path):
    """RELION -> cryoSPARC (defocus refined there) -> RELION, and .cs -> RELION (defocus edited) -> .cs."""
    star = SHARED_DATA / "real-particles" / "relion31.6opticsgroups.star"
    cs = SHARED_DATA / "real-particles" / "empiar_10076_7.cs"
    if not (star.exists() and cs.exists()):
        pytest.skip(NO_DATA)
    ps = read_particles(star)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_particles(ps, tmp_path / "p.cs")
    back = read_particles(tmp_path / "p.cs", project_dir=ps.root)
    back.table.loc[0, "defocus_u"] += 500.0
    write_particles(back, tmp_path / "back.star")
    diff = star_differences(star, tmp_path / "back.star")
    assert len(diff) == 1 and diff[0].startswith("data_particles/rlnDefocusU: 1 of 139"), diff

    ps = read_particles(cs)
    write_particles(ps, tmp_path / "e.star")
    back = read_particles(tmp_path / "e.star", project_dir=ps.root)
    back.table.loc[2, "defocus_u"] = 12345.5
    write_particles(back, tmp_path / "e.cs")
    a, b = Dataset.load(cs), Dataset.load(tmp_path / "e.cs")
    assert [d.split(":")[0] for d in cs_differences(a, b)] == ["ctf/df1_A"]
    assert float(b["ctf/df1_A"][2]) == 12345.5 and np.array_equal(np.delete(a["ctf/df1_A"], 2), np.delete(b["ctf/df1_A"], 2))


def test_new_mappings_fill_cryosparc_fields(tmp_path):
    """Beam tilt -> ctf/tilt_A (via Cs), rlnMagMat -> ctf/anisomag (identity subtracted), per optics group."""
    star = SHARED_DATA / "real-particles" / "relion31.6opticsgroups.star"
    if not star.exists():
        pytest.skip(NO_DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_particles(read_particles(star), tmp_path / "p.cs")
    d = Dataset.load(tmp_path / "p.cs")
    first = int(np.flatnonzero(np.asarray(d["ctf/exp_group_id"]) == 0)[0])  # optics group 1
    assert np.allclose(d["ctf/anisomag"][first], [0.011472, 0.004231, 0.004560, 0.008858], atol=1e-6)
    tilt_mrad = np.arcsin(np.asarray(d["ctf/tilt_A"][first], float) / (2.7 * 1e7)) * 1e3
    assert np.allclose(tilt_mrad, [0.657334, 0.884982], atol=1e-6)
    assert str(d["rln/rlnCtfFigureOfMerit"].dtype) == "float64" and d["rln_optics/rlnOpticsGroupName"][first] == "opticsGroup5"
