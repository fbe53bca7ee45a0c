"""The neutral data model: ParticleSet and ClassSet.

A ParticleSet is one pandas row per particle. Columns are either *canonical* (the names in
``FIELDS``, in neutral units: Angstrom, degrees, kV, mm, 0-based image index, 1-based class and
optics-group numbers) or *passthrough*: every other column of the input, kept under its original
name and written back untouched. Adapters (relion_ext, cryosparc_ext) translate file labels to
canonical fields and record in ``meta`` what they need to write the file back as it was.

Identity: a particle is its image, ``(image_stack, image_index)``; cryoSPARC's ``uid`` is kept
as a canonical column when the source has one, so both programs can always find their rows.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .finite import require_finite

# canonical field -> (dtype kind, meaning). Units are fixed: Angstrom, degrees, kV, mm.
FIELDS: dict[str, tuple[str, str]] = {
    "image_stack": ("str", "path of the image stack, relative to ParticleSet.root"),
    "image_index": ("int", "0-based index of the image in its stack"),
    "uid": ("uint", "cryoSPARC row identity (uint64), when the source has one"),
    "optics_group": ("int", "1-based optics group"),
    "pixel_size": ("float", "image pixel size (A)"),
    "box": ("int", "image box size (px)"),
    "voltage": ("float", "acceleration voltage (kV)"),
    "cs": ("float", "spherical aberration (mm)"),
    "amp_contrast": ("float", "amplitude contrast (fraction)"),
    "defocus_u": ("float", "defocus U (A, underfocus positive)"),
    "defocus_v": ("float", "defocus V (A)"),
    "defocus_angle": ("float", "astigmatism angle (deg)"),
    "phase_shift": ("float", "phase-plate phase shift (deg)"),
    "ctf_bfactor": ("float", "CTF B-factor (A^2)"),
    "ctf_scale": ("float", "CTF scale factor"),
    "rot": ("float", "RELION ZYZ Euler angle rot (deg)"),
    "tilt": ("float", "RELION ZYZ Euler angle tilt (deg)"),
    "psi": ("float", "RELION ZYZ Euler angle psi (deg)"),
    "shift_x": ("float", "origin shift x (A), RELION rlnOriginXAngst convention"),
    "shift_y": ("float", "origin shift y (A)"),
    "class_id": ("int", "1-based class number"),
    "half_set": ("int", "gold-standard half set, 1 or 2"),
    "micrograph": ("str", "micrograph path"),
    "coord_x": ("float", "x coordinate in the micrograph (px)"),
    "coord_y": ("float", "y coordinate in the micrograph (px)"),
    "beam_tilt_x": ("float", "beam tilt x (mrad)"),
    "beam_tilt_y": ("float", "beam tilt y (mrad)"),
    "mag_00": ("float", "anisotropic magnification matrix, row 0 col 0 (identity: none)"),
    "mag_01": ("float", "anisotropic magnification matrix, row 0 col 1"),
    "mag_10": ("float", "anisotropic magnification matrix, row 1 col 0"),
    "mag_11": ("float", "anisotropic magnification matrix, row 1 col 1"),
}
CTF_FIELDS = ("pixel_size", "voltage", "cs", "amp_contrast", "defocus_u", "defocus_v", "defocus_angle")
POSE_FIELDS = ("rot", "tilt", "psi", "shift_x", "shift_y")


def is_canonical(name: str) -> bool:
    return name in FIELDS


@dataclass
class ParticleSet:
    """One row per particle; canonical fields plus every other input column, untouched.

    ``root`` is the directory image paths are relative to (the RELION project directory);
    ``source`` the file it was read from (for error messages); ``meta`` holds what an adapter
    needs to write the set back in its own format (labels, column order, version...).
    """

    table: pd.DataFrame
    root: Path | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- basics -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        canon = [c for c in self.table.columns if c in FIELDS]
        extra = [c for c in self.table.columns if c not in FIELDS]
        return (f"ParticleSet({len(self)} particles, {len(canon)} canonical fields, "
                f"{len(extra)} passthrough columns, source={self.source!r})")

    def has(self, *names: str) -> bool:
        return all(n in self.table.columns for n in names)

    @property
    def canonical_columns(self) -> list[str]:
        return [c for c in self.table.columns if c in FIELDS]

    @property
    def passthrough_columns(self) -> list[str]:
        return [c for c in self.table.columns if c not in FIELDS]

    def label(self, name: str) -> str:
        """The source file's label for a canonical field (for messages), else the name."""
        return self.meta.get("labels", {}).get(name, name)

    def require(self, *names: str) -> None:
        """Raise InputError naming the file and the missing columns."""
        missing = [n for n in names if n not in self.table.columns]
        if missing:
            labels = ", ".join(self.label(n) for n in missing)
            raise InputError(f"missing column(s) {labels}", self.source)

    def check_finite(self, *names: str) -> None:
        """Raise InputError if a numeric canonical field holds NaN or inf."""
        for n in names or [c for c in self.canonical_columns if FIELDS[c][0] in ("float", "int")]:
            if n not in self.table.columns:
                continue
            vals = pd.to_numeric(self.table[n], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(vals)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputError(f"column {self.label(n)} has {int(bad.sum())} non-finite value(s) "
                                 f"(first at particle {row + 1}: {self.table[n].iloc[row]!r})", self.source)

    def copy(self) -> "ParticleSet":
        return ParticleSet(self.table.copy(), self.root, self.source, copy.deepcopy(self.meta))

    def _with_table(self, table: pd.DataFrame) -> "ParticleSet":
        return ParticleSet(table.reset_index(drop=True), self.root, self.source, copy.deepcopy(self.meta))

    # -- identity -----------------------------------------------------------------------
    def image_keys(self) -> pd.Series:
        """Identity of each particle: ``"<0-based index>@<stack>"`` (independent of digit width)."""
        self.require("image_stack", "image_index")
        return self.table["image_index"].astype(np.int64).astype(str) + "@" + self.table["image_stack"].astype(str)

    def identity(self, on: str = "auto") -> pd.Series:
        if on == "auto":
            on = "uid" if "uid" in self.table.columns else "image"
        if on == "uid":
            self.require("uid")
            return self.table["uid"]
        if on == "image":
            return self.image_keys()
        raise ValueError(f"unknown identity {on!r} (use 'uid', 'image' or 'auto')")

    # -- subset / concat / join -----------------------------------------------------------
    def subset(self, selector: Any) -> "ParticleSet":
        """Rows by boolean mask or integer positions; order of positions is kept."""
        sel = np.asarray(selector)
        if sel.dtype == bool:
            if len(sel) != len(self):
                raise ValueError(f"mask has {len(sel)} entries for {len(self)} particles")
            return self._with_table(self.table[sel])
        return self._with_table(self.table.iloc[sel.astype(np.int64)])

    def select_identities(self, ids: Iterable, on: str = "auto") -> "ParticleSet":
        """The particles whose identity is in ``ids``, in this set's order."""
        keys = self.identity(on)
        return self.subset(keys.isin(pd.Index(list(ids))).to_numpy())

    @staticmethod
    def concat(sets: Sequence["ParticleSet"]) -> "ParticleSet":
        """Stack sets row-wise; columns missing from one set become missing values there.

        Sets must share the image root (paths are relative to it); meta of the first set wins.
        """
        if not sets:
            raise ValueError("nothing to concatenate")
        roots = {None if s.root is None else Path(s.root).resolve() for s in sets}
        if len(roots) > 1:
            raise InputError("cannot concatenate particle sets whose images are relative to different "
                             f"project directories: {sorted(map(str, roots))}")
        tables = [s.table for s in sets]
        if any("uid" in t for t in tables):  # keep uint64 exact where some sets have no uid
            tables = [t.assign(uid=t["uid"].astype("UInt64")) if "uid" in t else t for t in tables]
        table = pd.concat(tables, ignore_index=True, sort=False)
        first = sets[0]
        return ParticleSet(table, first.root, first.source, copy.deepcopy(first.meta))

    def join(self, other: "ParticleSet", on: str = "auto", how: str = "inner",
             suffix: str = "_other") -> "ParticleSet":
        """Add ``other``'s columns to matching particles (matched by identity, not position).

        Columns present in both keep this set's values; other's copies get ``suffix``.
        """
        if on == "auto":
            on = "uid" if self.has("uid") and other.has("uid") else "image"
        left = self.table.copy()
        left["__key"] = self.identity(on).to_numpy()
        right = other.table.copy()
        right["__key"] = other.identity(on).to_numpy()
        if right["__key"].duplicated().any():
            raise InputError(f"duplicate particle identities in {other.source or 'the joined set'}")
        drop = [c for c in ("image_stack", "image_index", "uid") if c in right.columns and c in left.columns]
        right = right.drop(columns=drop)
        merged = left.merge(right, on="__key", how=how, suffixes=("", suffix), sort=False)
        return self._with_table(merged.drop(columns="__key"))

    # -- images -------------------------------------------------------------------------
    def image_source(self, validate: bool = True):
        """Lazy, memory-mapped access to this set's images (core.images.ImageSource)."""
        from .images import ImageSource

        self.require("image_stack", "image_index")
        codes, stacks = pd.factorize(self.table["image_stack"].astype(str))
        if self.root is not None:
            root = os.path.normpath(os.path.abspath(self.root))
            for stack in stacks:
                # RELION paths are project-relative; '..' that leaves the project is a broken or
                # hostile path (absolute paths are RELION-legal and allowed)
                if not os.path.isabs(stack):
                    full = os.path.normpath(os.path.join(root, stack))
                    if os.path.commonpath([root, full]) != root:
                        raise InputError(f"image path {stack!r} points outside the project directory {root}",
                                         self.source)
        src = ImageSource(list(stacks), codes.astype(np.int64),
                          self.table["image_index"].to_numpy(np.int64), root=self.root)
        if validate:
            src.validate()
            if self.has("box"):
                boxes = set(pd.unique(self.table["box"].astype(int)))
                if boxes and boxes != {src.box}:
                    raise InputError(f"{self.label('box')} says {sorted(boxes)} px but the stacks hold "
                                     f"{src.box} px images", self.source)
        return src

    def ctf_params(self) -> dict[str, np.ndarray]:
        """CTF parameters as float arrays (phase shift, B-factor, scale default to 0, 0, 1)."""
        self.require(*CTF_FIELDS)
        self.check_finite(*CTF_FIELDS)
        out = {k: self.table[k].to_numpy(np.float64) for k in CTF_FIELDS}
        for k, default in (("phase_shift", 0.0), ("ctf_bfactor", 0.0), ("ctf_scale", 1.0)):
            out[k] = self.table[k].to_numpy(np.float64) if k in self.table else np.full(len(self), default)
        return out

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        """(angles_deg (N,3) rot/tilt/psi, shifts_A (N,2)); missing angles/shifts are zero."""
        n = len(self)
        ang = np.stack([self.table[k].to_numpy(np.float64) if k in self.table else np.zeros(n)
                        for k in ("rot", "tilt", "psi")], axis=1)
        sh = np.stack([self.table[k].to_numpy(np.float64) if k in self.table else np.zeros(n)
                       for k in ("shift_x", "shift_y")], axis=1)
        return ang, sh


@dataclass
class ClassSet:
    """2D classes: class images, per-class statistics and membership.

    ``table`` has one row per class with ``class_id`` (1-based) and, where the source has
    them, the canonical statistics in ``CLASS_FIELDS``; other columns pass through.
    ``images`` is (K, box, box) float32 in class order of ``table``. ``particles`` (optional)
    carries ``class_id`` per particle: the membership.
    """

    table: pd.DataFrame
    images: np.ndarray | None
    pixel_size: float | None
    particles: ParticleSet | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        n = "no" if self.particles is None else len(self.particles)
        return f"ClassSet({len(self)} classes, {n} particles, source={self.source!r})"

    @property
    def class_ids(self) -> np.ndarray:
        return self.table["class_id"].to_numpy(np.int64)

    def counts(self) -> pd.Series:
        """Particles per class (0 for empty classes), from membership or the distribution."""
        counts = self.known_counts()
        if counts is None:
            raise InputError("class set has neither membership nor particle counts", self.source)
        return counts

    def known_counts(self) -> pd.Series | None:
        """``counts()``, or None where the input does not say (a bare stack, a model star alone)."""
        if self.particles is not None and self.particles.has("class_id"):
            vc = self.particles.table["class_id"].value_counts()
            return pd.Series([int(vc.get(k, 0)) for k in self.class_ids], index=self.class_ids, name="n_particles")
        if "n_particles" in self.table:
            return pd.Series(self.table["n_particles"].to_numpy(), index=self.class_ids, name="n_particles")
        return None

    def check_finite_images(self, root: str | os.PathLike | None = None) -> None:
        """The one rule for class averages from every reader (bare stack, RELION, cryoSPARC): an
        image is finite, or has no finite pixel at all (RELION's average of a class that lost its
        particles: blank, which jobs handle). An image with some NaN or infinite pixels is corrupt:
        InputError naming the class and its stack (relative to ``root``)."""
        if self.images is None:
            return
        fin = np.isfinite(np.asarray(self.images)).reshape(len(self.images), -1)
        bad = np.flatnonzero(~fin.all(1) & fin.any(1))
        if not len(bad):
            return
        row = self.table.iloc[int(bad[0])]
        stack = row.get("image_stack", self.source)
        path = Path(root) / str(stack) if root is not None and stack is not None else stack
        where = f"image {int(row['image_index']) + 1}" if "image_index" in row else "its image"
        others = f" ({len(bad) - 1} other class(es) too)" if len(bad) > 1 else ""
        require_finite(self.images[bad[0]], f"class {int(row['class_id'])}'s average ({where}){others}", path)

    def members(self, class_ids: int | Iterable[int]) -> ParticleSet:
        """The particles assigned to the given class number(s)."""
        if self.particles is None:
            raise InputError("class set carries no particles (membership unknown)", self.source)
        ids = [class_ids] if np.isscalar(class_ids) else list(class_ids)
        return self.particles.subset(self.particles.table["class_id"].isin(ids).to_numpy())

    def subset(self, class_ids: Iterable[int]) -> "ClassSet":
        """The given classes (table rows, images) and their member particles."""
        ids = list(class_ids)
        mask = self.table["class_id"].isin(ids).to_numpy()
        images = None if self.images is None else self.images[mask]
        parts = None if self.particles is None else self.members(ids)
        return ClassSet(self.table[mask].reset_index(drop=True), images, self.pixel_size, parts,
                        self.source, copy.deepcopy(self.meta))


CLASS_FIELDS: dict[str, str] = {
    "class_id": "1-based class number",
    "n_particles": "particles assigned to the class",
    "distribution": "fraction of particles in the class",
    "resolution": "estimated resolution (A); inf for empty classes",
    "acc_rot": "rotational accuracy (deg); NaN when unknown (RELION writes 999)",
    "acc_trans": "translational accuracy (A); NaN when unknown",
    "completeness": "overall Fourier completeness",
    "ess": "mean effective number of classes per member particle (cryoSPARC class_ess)",
    "posterior": "mean best-class posterior of member particles (RELION Pmax / cryoSPARC)",
    "image_stack": "stack that holds the class average",
    "image_index": "0-based index of the class average in that stack",
}
