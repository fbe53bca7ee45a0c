"""A library of known maps, as reference images rendered like real 2D class averages.

Each entry (one map: a user ``.mrc``, a phantom, or an atomic model made into a map) is resampled
to the library's box and pixel size, projected at ``n_views`` near-uniform view directions
(a Fibonacci sphere; the in-plane angle is left to the search or to the embedding's invariance),
low-passed, masked and normalised as a CTF-corrected class average would be. Entries carry their
name, accession ID and provenance. Adding a map never recomputes the others. The references'
embeddings under one identity model (``core.identify``) are stored with the fingerprint of that
model, and only new references are embedded when entries are added.

A library also carries its decoys (``core.identify.decoys``: fixed proteins that are in no
library, rendered at its sampling, the null distribution of the confidence) and their embeddings,
so that scoring needs neither the simulator nor a second pass over them.

Saved as one ``.npz`` of ``core.artifacts`` (format ``cryolens.library``; no pickles): references
(float16), per-view table, per-entry table, embeddings and the decoys.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..artifacts import LIBRARY, array_text, load_npz, save_npz, text_array
from ..errors import InputError
from ..geometry import euler_to_matrix
from ..images import lowpass, normalize_in_mask, soft_circular_mask
from ..projector import Projector

def fibonacci_views(n: int) -> np.ndarray:
    """(n, 3) RELION (rot, tilt, psi=0) angles whose view directions cover the sphere evenly."""
    i = np.arange(n) + 0.5
    tilt = np.rad2deg(np.arccos(1 - 2 * i / n))
    rot = np.rad2deg((np.pi * (1 + 5 ** 0.5) * i) % (2 * np.pi)) - 180.0
    return np.stack([rot, tilt, np.zeros(n)], -1)


def render_references(volume: np.ndarray, pixel_size: float, n_views: int = 200, resolution_A: float = 15.0,
                      mask_radius_px: float | None = None, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(images (n_views, box, box) float32, angles (n_views, 3)): projections rendered like class
    averages (low-passed at ``resolution_A``, soft-masked, zero mean and unit variance inside)."""
    box = volume.shape[0]
    angles = fibonacci_views(n_views)
    proj = Projector(volume, device=device).project(torch.as_tensor(euler_to_matrix(angles), dtype=torch.float32))
    proj = lowpass(proj, pixel_size, max(resolution_A, 2.05 * pixel_size))
    r = 0.45 * box if mask_radius_px is None else mask_radius_px
    proj = normalize_in_mask(proj, soft_circular_mask(box, r, max(2.0, 0.05 * box), device=proj.device))
    return proj.cpu().numpy().astype(np.float32), angles


@dataclass
class Decoys:
    """The decoy proteins rendered like the library's references (``n_views`` per protein, in
    order), with their embeddings under one identity model (float32, as embedded)."""

    references: np.ndarray  # (n_decoys * n_views, box, box) float16
    n_views: int
    names: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # (n_decoys * n_views, dim) float32
    embedding_model: str = ""  # fingerprint of the model that made them

    def __len__(self) -> int:
        return len(self.references) // self.n_views

    def entry_of_reference(self) -> np.ndarray:
        return np.repeat(np.arange(len(self), dtype=np.int64), self.n_views)

    def header(self) -> dict:
        return {"n_views": self.n_views, "names": list(self.names), "embedding_model": self.embedding_model}

    def arrays(self) -> dict[str, np.ndarray]:
        emb = self.embeddings if self.embeddings is not None else np.zeros((0, 0), np.float32)
        return {"decoy_references": self.references, "decoy_embeddings": emb}

    @classmethod
    def from_file(cls, header: dict, arrays: dict[str, np.ndarray]) -> "Decoys":
        emb = arrays["decoy_embeddings"]
        return cls(arrays["decoy_references"], int(header["n_views"]), list(header.get("names", [])),
                   emb if emb.size else None, header.get("embedding_model", ""))


@dataclass
class Library:
    box: int
    pixel_size: float
    resolution_A: float = 15.0
    n_views: int = 200
    entries: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["entry", "name", "accession", "source", "provenance"]))
    views: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["entry", "rot", "tilt", "psi"]))
    references: np.ndarray | None = None  # (n_entries * n_views, box, box) float16
    embeddings: np.ndarray | None = None  # (n_embedded, dim) float16, the first references' embeddings
    embedding_model: str = ""  # fingerprint of the model that made them
    decoys: Decoys | None = None  # the null proteins at this library's sampling (``decoys.build_decoys``)
    path: str = ""  # the file it was loaded from (not saved): where a prepared library is saved back

    def __len__(self) -> int:
        return len(self.entries)

    def add_volume(self, volume: np.ndarray, name: str, accession: str = "", source: str = "",
                   provenance: dict | None = None, device="cpu") -> int:
        """Render one map (already at the library's box and pixel size) and append it."""
        if volume.shape != (self.box,) * 3:
            raise ValueError(f"{name}: map is {volume.shape}, the library needs {(self.box,) * 3}")
        if name in set(self.entries["name"]):
            raise InputError(f"the library already has an entry named {name!r}")
        refs, angles = render_references(volume, self.pixel_size, self.n_views, self.resolution_A, device=device)
        entry = len(self.entries)
        self.entries = pd.concat([self.entries, pd.DataFrame([{
            "entry": entry, "name": name, "accession": accession, "source": source,
            "provenance": json.dumps(provenance or {}, default=str)}])], ignore_index=True)
        self.entries["entry"] = self.entries["entry"].astype(np.int64)
        self.views = pd.concat([self.views, pd.DataFrame({"entry": entry, "rot": angles[:, 0], "tilt": angles[:, 1],
                                                          "psi": angles[:, 2]})], ignore_index=True)
        self.views["entry"] = self.views["entry"].astype(np.int64)
        self._append_references(refs.astype(np.float16))
        return entry

    def _append_references(self, refs: np.ndarray) -> None:
        """Append into a buffer that doubles when full, so building a library of n maps copies
        O(n) references, not O(n^2); ``references`` stays a plain array (a view of the buffer)."""
        cur, buf = self.references, getattr(self, "_ref_buffer", None)
        n = 0 if cur is None else len(cur)
        if buf is None or cur is None or cur.base is not buf or len(buf) < n + len(refs):
            buf = np.empty((2 * (n + len(refs)),) + refs.shape[1:], np.float16)
            if n:
                buf[:n] = cur
            self._ref_buffer = buf
        buf[n:n + len(refs)] = refs
        self.references = buf[:n + len(refs)]

    def add_map_file(self, path: str | os.PathLike, name: str | None = None, accession: str = "", device="cpu") -> int:
        """A user map (.mrc): resampled, recentred and masked by ``core.maps.from_map``."""
        from ..maps import from_map

        ph = from_map(path, self.box, self.pixel_size, name=name)
        self.check_fits(ph.provenance.get("extent_A"), name or Path(path).stem, path)
        return self.add_volume(ph.density, name or Path(path).stem, accession, str(path), ph.provenance, device)

    @property
    def mask_radius_A(self) -> float:
        """The references' soft mask (``render_references``): 0.45 of the box."""
        return 0.45 * self.box * self.pixel_size

    def check_fits(self, extent_A: float | None, name: str, path=None) -> None:
        """Refuse a map whose molecule reaches beyond the references' mask: it would be cut
        silently, and its references would match nothing. Says which box would hold it."""
        if extent_A is None or extent_A <= self.mask_radius_A:
            return
        need = int(np.ceil(extent_A / (0.45 * self.pixel_size) / 2) * 2)
        raise InputError(f"{name}: 99% of its density lies within {extent_A:.0f} A of its centre, beyond the "
                         f"library's mask ({self.mask_radius_A:.0f} A = 0.45 x box {self.box} x {self.pixel_size:g} "
                         f"A): it would be cut. Build a library with a box of at least {need} px at "
                         f"{self.pixel_size:g} A/px, or a larger pixel size", path)

    def entry_of_reference(self) -> np.ndarray:
        return self.views["entry"].to_numpy(np.int64)

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """One ``.npz`` (format ``cryolens.library``, ``core.artifacts``), written atomically."""
        header = {"box": self.box, "pixel_size": self.pixel_size, "resolution_A": self.resolution_A,
                  "n_views": self.n_views, "embedding_model": self.embedding_model}
        arrays = {"entries": text_array(self.entries.to_json(orient="table")),
                  "views": text_array(self.views.to_json(orient="table")),
                  "references": self.references if self.references is not None
                  else np.zeros((0, self.box, self.box), np.float16),
                  "embeddings": self.embeddings if self.embeddings is not None else np.zeros((0, 0), np.float16)}
        if self.decoys is not None:
            header["decoys"] = self.decoys.header()
            arrays.update(self.decoys.arrays())
        return save_npz(path, LIBRARY, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Library":
        """A saved library; one written by cryolens before the decoys were stored in it loads
        without them (``decoys.prepare_library`` adds them)."""
        header, z = load_npz(path, LIBRARY)
        try:
            lib = cls(header["box"], header["pixel_size"], header["resolution_A"], header["n_views"])
            lib.entries = pd.read_json(io.StringIO(array_text(z["entries"])), orient="table") \
                .reset_index(drop=True).astype({"entry": np.int64})
            lib.views = pd.read_json(io.StringIO(array_text(z["views"])), orient="table") \
                .reset_index(drop=True).astype({"entry": np.int64})
            refs, emb = z["references"], z["embeddings"]
            lib.decoys = Decoys.from_file(header["decoys"], z) if "decoys" in header else None
        except Exception as exc:
            raise InputError(f"damaged library ({type(exc).__name__}: {exc})", path) from None
        lib.references = refs if len(refs) else None
        lib.embeddings = emb if emb.size else None
        lib.embedding_model = header.get("embedding_model", "")
        n_ref = 0 if lib.references is None else len(lib.references)
        if len(lib.views) != n_ref or (lib.embeddings is not None and len(lib.embeddings) > n_ref):
            raise InputError(f"damaged library: {len(lib.views)} views, {n_ref} references, "
                             f"{0 if lib.embeddings is None else len(lib.embeddings)} embeddings", path)
        if lib.decoys is not None and lib.decoys.references.shape[1:] != (lib.box, lib.box):
            raise InputError(f"damaged library: decoys of {lib.decoys.references.shape[1:]} px, "
                             f"references of {(lib.box, lib.box)}", path)
        lib.path = str(path)
        return lib


# -- building a library from files: `cryolens library build` and identify's `maps` parameter --------
# a new library's geometry (the command's defaults; identify builds with them too)
DEFAULT_BOX, DEFAULT_PIXEL_SIZE, DEFAULT_RESOLUTION_A, DEFAULT_VIEWS = 64, 3.0, 15.0, 200
MAP_SUFFIXES = (".mrc", ".map")
MODEL_SUFFIXES = (".cif", ".pdb", ".ent", ".mmcif")


def source_kind(path: str | os.PathLike) -> str:
    """'model' for an atomic model (.cif/.pdb), else 'map'."""
    return "model" if Path(path).suffix.lower() in MODEL_SUFFIXES else "map"


def map_sources(spec: str | os.PathLike) -> list[tuple[str, str, str | None, str]]:
    """The maps (and atomic models) named by ``spec``: a folder (every .mrc/.map/.cif/.pdb in it,
    sorted), one file, or files separated by commas; as (kind, path, name, accession) sources for
    ``add_sources``. InputError naming what is missing or empty."""
    out = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        path = Path(part)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in MAP_SUFFIXES + MODEL_SUFFIXES)
            if not found:
                raise InputError("no maps (.mrc/.map) or models (.cif/.pdb) in the folder", path)
            out += [(source_kind(p), str(p), None, "") for p in found]
        elif path.is_file():
            out.append((source_kind(path), str(path), None, ""))
        else:
            raise InputError("map or folder of maps not found", path)
    return out


def add_sources(lib: Library, sources: list[tuple[str, str, str | None, str]], device="cpu",
                log: Callable[[str], None] | None = None) -> None:
    """Render each source (kind 'map' or 'model', path, name or None for the file's stem,
    accession) into ``lib``: maps through ``add_map_file``, atomic models through gemmi."""
    for kind, src, name, acc in sources:
        if kind == "map":
            lib.add_map_file(src, name=name, accession=acc, device=device)
        else:
            from ..maps import from_atomic_model

            ph = from_atomic_model(src, lib.box, lib.pixel_size)
            lib.check_fits(ph.max_radius_A, name or Path(src).stem, src)
            lib.add_volume(ph.density, name or Path(src).stem, acc, str(src), ph.provenance, device=device)
        if log:
            log(f"  + {lib.entries['name'].iloc[-1]}")
