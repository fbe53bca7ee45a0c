"""Job ``identify``: which protein is each 2D class average, against a library of maps.

Per class: the top-k library entries with their scores, a calibrated confidence that the first
is right, and the identity (or "unknown" below ``--min_conf``); the particles of each
identity as their own set (when the classes come with their particles); a gallery of every class
beside its best-matching reference projection. See ``core.identify`` for the three modes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import CryolensError
from ..particles import ClassSet
from .base import CLASS_AVERAGE_PARAMS, Input, JobContext, JobResult, JobSpec, Output, Param, register, with_pixel_size


def _tag(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_") or "unnamed"


LIBRARY_FILE = "library.npz"  # where a library built from ``maps`` is written, with the job's outputs
NO_LIBRARY = ("identify needs a map library of the proteins you expect. Either set the parameter maps to a "
              "folder of your maps (.mrc/.map, or .cif/.pdb models; or maps separated by commas): a library is "
              "built from them for this run and saved as library.npz in the job directory (give that file as "
              "library next time to skip the rendering); or set library to a library made with: cryolens "
              "library build lib.npz --maps map1.mrc map2.mrc")


def library_from_params(params: dict[str, Any], ctx: JobContext):
    """The library given (``library``), or one built now from ``maps`` (``core.identify.library``,
    the code of ``cryolens library build``); the job saves a built one with its outputs
    (``JobResult.files``), decoys and embeddings included."""
    from ..identify.library import (DEFAULT_BOX, DEFAULT_PIXEL_SIZE, DEFAULT_RESOLUTION_A, DEFAULT_VIEWS, Library,
                                    add_sources, map_sources)

    if params["maps"] and params["library"] is not None:
        raise CryolensError("give library (a built library) or maps (to build one now), not both")
    if not params["maps"]:
        if params["library"] is None:
            raise CryolensError(NO_LIBRARY)
        return params["library"]
    sources = map_sources(params["maps"])
    ctx.log(f"identify: building a library from {len(sources)} map(s) in {params['maps']} "
            f"({DEFAULT_BOX} px at {DEFAULT_PIXEL_SIZE:g} A/px, {DEFAULT_VIEWS} views each)")
    library = Library(DEFAULT_BOX, DEFAULT_PIXEL_SIZE, DEFAULT_RESOLUTION_A, DEFAULT_VIEWS)
    add_sources(library, sources, device=ctx.device, log=ctx.log)
    return library


def run(inputs: dict[str, Any], params: dict[str, Any], ctx: JobContext) -> JobResult:
    from ..identify import identify, prepare_library
    from ..identify.figures import gallery_figure

    classes: ClassSet = with_pixel_size(inputs["classes"], params)
    if classes.images is None or not len(classes.images):
        raise CryolensError(f"no class averages in {classes.source or 'the input'}")
    library = library_from_params(params, ctx)
    model, px = params["model"], classes.pixel_size
    ctx.log(f"identify: {len(classes)} classes against {len(library)} library entries "
            f"({library.n_views} views each), mode {params['mode']}")
    # decoys and embeddings are made once per library and saved back into it (only added, atomically)
    if prepare_library(library, None if params["mode"] == "correlation" else model, path=library.path or None,
                       log=ctx.log, should_stop=ctx.should_stop) and library.path:
        ctx.log(f"{library.path}: decoys/embeddings added and saved, so the next run starts ready")
    found = identify(classes.images, px, library, model, params["mode"], params["top_k"],
                     params["shortlist"], params["min_conf"], log=ctx.log, should_stop=ctx.should_stop,
                     search=params["search"], device=ctx.device)
    table = found.table
    table.insert(0, "class_id", classes.class_ids)
    counts = classes.known_counts()
    if counts is not None:
        counts = counts.to_numpy()
        table.insert(1, "n_particles", counts)
    res = JobResult()
    if params["maps"]:
        res.files[LIBRARY_FILE] = library.save
        res.summary.append(f"identify: the library built from the maps is saved as {LIBRARY_FILE} with the outputs: "
                           f"give it as library next time to skip the rendering")
    res.tables["identities"] = table
    if params["gallery"]:
        res.figures["identify_gallery"] = gallery_figure(found.queries, table, library, found.scores)
    if classes.particles is not None and classes.particles.has("class_id"):
        for name in table["identity"].unique():
            ids = table.loc[table["identity"] == name, "class_id"].tolist()
            subset = classes.members(ids)
            if len(subset):
                res.particles[f"particles_{_tag(name)}"] = subset
    res.summary.append(f"identify ({params['mode']}): {len(table)} classes, "
                       f"{int((table['identity'] != 'unknown').sum())} identified, "
                       f"{int((table['identity'] == 'unknown').sum())} unknown")
    for name, grp in table.groupby("identity", sort=False):
        n = "" if counts is None else f", {int(grp['n_particles'].sum())} particles"
        res.summary.append(f"  {name}: classes {', '.join(map(str, grp['class_id']))}{n}")
    return res


SPEC = register(JobSpec(
    name="identify",
    summary="Which protein is each 2D class average: top-k matches in a map library, calibrated "
            "confidence, 'unknown' for classes that match nothing",
    inputs=(Input("classes", "classes", "2D class averages (Class2D, cryoSPARC classes or a bare .mrcs)"),),
    params=(
        Param("library", Path, None, "map library (.npz) from: cryolens library build, or a library.npz an "
              "earlier identify job built", file_kind="library", unset="build one from maps"),
        Param("maps", str, "", "a folder of maps (.mrc/.map; or .cif/.pdb models), or maps separated by commas: a "
              "library is built from them for this run (names: the file names)", metavar="FOLDER",
              unset="use library"),
        Param("model", Path, None, "identity model (.pt) from: cryolens train identify", file_kind="identity_model",
              unset="the model shipped with cryolens", only_with=("mode", ("embedding", "combined"))),
        Param("mode", str, "combined", "embedding (fastest), correlation (NCC baseline) or combined "
                                       "(embedding shortlist, NCC re-ranking)",
              choices=("embedding", "correlation", "combined")),
        Param("search", str, "fast", "correlation and combined modes: fast (polar rotational correlation picks "
                                     "each class's best entries and views, NCC searches only those) or exhaustive "
                                     "(NCC on every reference; slow for large libraries)",
              choices=("fast", "exhaustive"), only_with=("mode", ("correlation", "combined"))),
        Param("top_k", int, 5, "matches listed per class", min=1, max=100),
        Param("shortlist", int, 10, "combined mode: at least this many entries go from the embedding to NCC "
                                    "(more when the model's calibrated bar lets more through)", min=1, max=100000,
              only_with=("mode", ("combined",))),
        Param("min_conf", float, 0.5, "below this calibrated confidence a class is 'unknown'", min=0, max=1,
              aliases=("min_confidence",)),
        *CLASS_AVERAGE_PARAMS,
    ),
    outputs=(Output("identities", "table", "per class: identity, confidence, top-k matches and scores", node=True),
             Output("particles", "particles", "one particle set per identity (particles_<name>, particles_unknown)"),
             Output("identify_gallery", "figure", "each class beside its best-matching reference")),
    run=run,
))
