"""RELION Class2D output -> ClassSet.

A Class2D iteration is four files sharing a root, ``run_itNNN_{data,model,optimiser}.star`` and
``run_itNNN_classes.mrcs``. Any one of them (or the job directory: the last iteration is taken)
finds the others; the optimiser names the model and data files, so it is trusted first.
Empty classes carry ``inf``/``-nan`` resolutions and ``999`` accuracies in real output: they
become inf/NaN statistics, never a parse error.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.core.errors import InputError
from cryolens.core.particles import ClassSet, ParticleSet

from .star import find_project_root, format_image_names, read_blocks, read_particles, split_image_names

_ITER = re.compile(r"^(?P<root>.*_it(?P<it>\d+))_(?P<kind>data|model|optimiser)\.star$")
UNKNOWN_ACCURACY = 999.0  # RELION's sentinel for "not estimated" (empty classes)


@dataclass
class Class2DFiles:
    data: Path | None
    model: Path
    optimiser: Path | None
    iteration: int


def is_class2d(path: str | os.PathLike) -> bool:
    """A Class2D iteration's STAR file (by its name), or a job directory holding one."""
    p = Path(path)
    return bool(_ITER.match(p.name)) or (p.is_dir() and any(p.glob("*_it[0-9][0-9][0-9]_model.star")))


def find_class2d_files(path: str | os.PathLike) -> Class2DFiles:
    """From any of data/model/optimiser star (or the job directory), find the siblings."""
    path = Path(path)
    if path.is_dir():
        its = sorted(path.glob("*_it[0-9][0-9][0-9]_model.star"))
        if not its:
            raise InputError("no run_itNNN_model.star in this directory (not a Class2D job?)", path)
        path = its[-1]
    if not path.exists():
        raise InputError("file not found", path)
    m = _ITER.match(str(path))
    if not m:
        raise InputError("not a Class2D output (expected run_itNNN_data.star, _model.star or _optimiser.star)", path)
    root, it = m.group("root"), int(m.group("it"))
    data, model, opt = (Path(f"{root}_{k}.star") for k in ("data", "model", "optimiser"))
    if opt.exists():
        general = read_blocks(opt).get("optimiser_general", {})
        # the optimiser's own paths are relative to the project dir; prefer siblings on disk
        for key, cur in (("rlnModelStarFile", "model"), ("rlnExperimentalDataStarFile", "data")):
            named = general.get(key) if isinstance(general, dict) else None
            if named and not (data if cur == "data" else model).exists():
                cand = find_project_root(opt, str(named)) / str(named)
                if cand.exists():
                    if cur == "data":
                        data = cand
                    else:
                        model = cand
    if not model.exists():
        raise InputError(f"the model star of this iteration is missing ({model.name})", path)
    return Class2DFiles(data if data.exists() else None, model, opt if opt.exists() else None, it)


def _numeric(col: pd.Series) -> np.ndarray:
    # real files hold 'inf' and '-nan' in numeric columns: starfile then gives strings
    return pd.to_numeric(col, errors="coerce").to_numpy(np.float64)


CLASS_LABELS = ("rlnReferenceImage", "rlnClassDistribution", "rlnEstimatedResolution", "rlnAccuracyRotations",
                "rlnAccuracyTranslationsAngst", "rlnAccuracyTranslations", "rlnOverallFourierCompleteness")


def class_table(classes: pd.DataFrame, pixel_size: float | None, path: Path) -> pd.DataFrame:
    """``data_model_classes`` -> canonical per-class statistics (row k is class k+1).

    999 accuracies become NaN (not estimated), ``inf`` resolutions stay inf, ``-nan`` is NaN.
    """
    stack, index, _ = split_image_names(classes["rlnReferenceImage"], path)
    table = pd.DataFrame({"class_id": np.arange(1, len(classes) + 1, dtype=np.int64),
                          "image_stack": stack.values, "image_index": index.values})
    if "rlnClassDistribution" in classes:
        table["distribution"] = _numeric(classes["rlnClassDistribution"])
    if "rlnEstimatedResolution" in classes:
        table["resolution"] = _numeric(classes["rlnEstimatedResolution"])
    for label, field, scale in (("rlnAccuracyRotations", "acc_rot", 1.0),
                                ("rlnAccuracyTranslationsAngst", "acc_trans", 1.0),
                                ("rlnAccuracyTranslations", "acc_trans", pixel_size or np.nan)):
        if label in classes and field not in table:
            vals = _numeric(classes[label])
            table[field] = np.where(vals >= UNKNOWN_ACCURACY, np.nan, vals * scale)
    if "rlnOverallFourierCompleteness" in classes:
        table["completeness"] = _numeric(classes["rlnOverallFourierCompleteness"])
    for label in classes.columns:  # everything else passes through
        if label not in CLASS_LABELS:
            table[label] = classes[label].to_numpy()
    return table


def read_class2d(path: str | os.PathLike, root: str | os.PathLike | None = None,
                 load_images: bool = True) -> ClassSet:
    """Read a Class2D iteration (data + model + class stack) as a ClassSet."""
    files = find_class2d_files(path)
    blocks = read_blocks(files.model)
    general = blocks.get("model_general")
    classes = blocks.get("model_classes")
    if not isinstance(classes, pd.DataFrame) or "rlnReferenceImage" not in classes.columns:
        raise InputError("no model_classes table with rlnReferenceImage", files.model)
    if isinstance(general, dict) and int(general.get("rlnReferenceDimensionality", 2)) != 2:
        raise InputError("this is a 3D model (rlnReferenceDimensionality 3), not 2D classes", files.model)
    pixel_size = float(general["rlnPixelSize"]) if isinstance(general, dict) and "rlnPixelSize" in general else None

    table = class_table(classes, pixel_size, files.model)

    particles: ParticleSet | None = None
    if files.data is not None:
        particles = read_particles(files.data, root=root)
    project = Path(root) if root is not None else (
        particles.root if particles is not None else find_project_root(files.model, str(table["image_stack"].iloc[0])))
    if particles is not None and particles.has("class_id"):
        counts = particles.table["class_id"].value_counts()
        table["n_particles"] = [int(counts.get(k, 0)) for k in table["class_id"]]
        if particles.has("rlnMaxValueProbDistribution"):
            pmax = pd.to_numeric(particles.table["rlnMaxValueProbDistribution"], errors="coerce")
            mean = pmax.groupby(particles.table["class_id"]).mean()
            table["posterior"] = [float(mean.get(k, np.nan)) for k in table["class_id"]]
    elif "distribution" in table and isinstance(general, dict):
        table["n_particles"] = np.nan  # unknown without the data star

    images = None
    if load_images:
        from cryolens.core.images import ImageSource

        codes, stacks = pd.factorize(table["image_stack"].astype(str))
        src = ImageSource(list(stacks), codes.astype(np.int64), table["image_index"].to_numpy(np.int64), root=project)
        src.validate()
        images = src.read(np.arange(len(table)))
    meta = {"relion": {"files": {"data": str(files.data) if files.data else None, "model": str(files.model),
                                 "optimiser": str(files.optimiser) if files.optimiser else None},
                       "iteration": files.iteration, "model_classes": classes, "model_general": general,
                       "root": str(project)}}
    cs = ClassSet(table, images, pixel_size, particles, source=str(files.model), meta=meta)
    cs.check_finite_images(project)
    return cs


# score labels RELION knows from 4.0 on (its class ranker); 3.1 warns about each on every read
LABELS_FROM_40 = ("rlnClassScore", "rlnPredictedClassScore")


def class_rows(cs: ClassSet) -> pd.DataFrame:
    """RELION ``model_classes`` rows for the classes of ``cs`` (original values where known)."""
    rel = cs.meta.get("relion", {})
    raw = rel.get("model_classes")
    if isinstance(raw, pd.DataFrame) and "class_id" in cs.table:
        rows = raw.iloc[cs.table["class_id"].to_numpy(np.int64) - 1].reset_index(drop=True)
    else:
        rows = pd.DataFrame({"rlnReferenceImage": format_image_names(cs.table["image_stack"], cs.table["image_index"], 6)})
        for field, label in (("distribution", "rlnClassDistribution"), ("acc_rot", "rlnAccuracyRotations"),
                             ("acc_trans", "rlnAccuracyTranslationsAngst"), ("resolution", "rlnEstimatedResolution")):
            if field in cs.table:
                rows[label] = cs.table[field].fillna(UNKNOWN_ACCURACY).to_numpy()
    # scores a job added to the class table ride along under their RELION labels
    for label in LABELS_FROM_40:
        if label in cs.table:
            rows[label] = cs.table[label].to_numpy()
    return rows


def write_class_averages(cs: ClassSet, path: str | os.PathLike, version: str = "5.0", select: bool = True) -> bool:
    """Classes as RELION writes them. ``select``: as Select's ``class_averages.star`` (an unnamed
    block; the score as ``rlnPredictedClassScore``); otherwise as the class ranker's
    ``rank_model.star`` (a ``model_classes`` table; the score as ``rlnClassScore``). RELION 3.1
    knows neither score label: its class_averages.star has none (as 3.1's Select writes it).
    Returns whether the file holds only labels ``version`` knows (so it can be a pipeline node)."""
    from .star import write_blocks

    rows = class_rows(cs)
    if select:
        drop = LABELS_FROM_40 if version == "3.1" else ("rlnClassScore",) if "rlnPredictedClassScore" in rows else ()
        rows = rows.drop(columns=[c for c in drop if c in rows])
        write_blocks(path, {"": rows})
    else:
        rows = rows.drop(columns=[c for c in ("rlnPredictedClassScore",) if c in rows and "rlnClassScore" in rows])
        write_blocks(path, {"model_classes": rows})
    return version != "3.1" or not any(c in rows for c in LABELS_FROM_40)


def per_class_rows(table: pd.DataFrame, cs: ClassSet | None) -> pd.DataFrame:
    """A per-class table (``class_id`` column) with RELION labels where they exist: each class's
    image (``rlnReferenceImage``, from ``cs``) and number (``rlnClassNumber``) first, the job's
    own columns after (RELION keeps labels it does not know)."""
    rows = table.rename(columns={"class_id": "rlnClassNumber"})
    if cs is not None and len(cs):
        ref = pd.Series(class_rows(cs)["rlnReferenceImage"].to_numpy(), index=cs.class_ids)
        rows.insert(0, "rlnReferenceImage", ref.reindex(rows["rlnClassNumber"].to_numpy()).to_numpy())
    return rows


def write_backup_selection(selected: list[int], path: str | os.PathLike) -> None:
    """``backup_selection.star``: rlnSelected 0/1 per class, so relion_display shows the choice."""
    from .star import write_blocks

    write_blocks(path, {"": pd.DataFrame({"rlnSelected": [int(bool(s)) for s in selected]})})
