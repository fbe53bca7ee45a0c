"""Offline mode, and the translation of a job's results into cryoSPARC files (both modes use it).

    cryolens-cryosparc <job> --offline --particles J12/J12_particles_selected.cs [--classes-in T.cs]
        [--volume map.mrc] --out DIR [--project-dir D] [--<param> value ...]

For a GPU node that cannot reach the master, or an exported job. A job's output ``.cs`` is joined
on ``uid`` with its ``*_passthrough_*.cs`` (csfile finds them). Every result goes into ``DIR`` as
one self-contained ``<output>.cs`` (all slots) plus ``<output>.csg``, the YAML group file that
CryoSPARC's *Import Result Group* job reads (format: see :func:`write_csg`).

Scores (no free cryoSPARC slot takes them, see docs/cryosparc.md): a column a job adds to a
particle set that is neither canonical nor a field of a known slot is a score. All of them go
to a side-car CSV keyed by ``uid``; the first numeric one is also written to
``pick_stats/ncc_score`` (unless ``--score-slot none``), the field Inspect Picks and Subset
Particles by Statistic threshold. Without a per-particle score, the first per-class score is
given to each particle of that class. Per-class scores go to a side-car CSV keyed by class.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryolens.core import signals
from cryolens.core.atomic import atomic_path, atomic_write_text, clear_outputs, staged
from cryolens.core.errors import ExitCode, exit_code, user_error
from cryolens.core.jobs import JobContext, JobResult, JobSpec, prepare_params, run_job
from cryolens.core.particles import FIELDS, ClassSet, ParticleSet

from . import csfile

# cryoSPARC's own names for what a job chose (Select 2D), so downstream users recognise them
OUTPUT_NAMES = {"particles": "particles_selected", "rejected": "particles_excluded",
                "class_averages": "templates_selected"}
# particle slots seen in real .cs headers / cryoSPARC docs; name -> dtype
_SLOT_DTYPES = {s: s for s in ("blob", "ctf", "location", "pick_stats", "alignments2D", "alignments3D",
                               "alignments3D_multi", "sym_expand", "filament", "quality_stats")}
_NUMBERED = ((re.compile(r"^alignments_class_\d+$"), "alignments3D"),
             (re.compile(r"^components_mode_\d+$"), "components"))
SCORE_FIELD = "pick_stats/ncc_score"
_PICK_STATS = (("pick_stats/ncc_score", np.float32), ("pick_stats/power", np.float32),
               ("pick_stats/template_idx", np.uint32), ("pick_stats/angle_rad", np.float32))


def output_name(name: str) -> str:
    """A cryoSPARC output name (``^[A-Za-z][0-9A-Za-z_]*$``) for a result name."""
    name = OUTPUT_NAMES.get(name, name)
    clean = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "output"
    return clean if clean[0].isalpha() else f"out_{clean}"


def slot_dtype(prefix: str) -> str | None:
    """The datatype of a particle slot, or None for a prefix cryoSPARC would not know."""
    if prefix in _SLOT_DTYPES:
        return _SLOT_DTYPES[prefix]
    for rx, dtype in _NUMBERED:
        if rx.match(prefix):
            return dtype
    return None


# -- scores --------------------------------------------------------------------------------------
def score_columns(table: pd.DataFrame, base: pd.DataFrame | None) -> list[str]:
    """Columns a job added that no cryoSPARC slot holds (not canonical, not ``<known slot>/x``).
    Without the input to compare with, ``prefix/x`` columns are taken as read from a .cs."""
    have = set() if base is None else set(base.columns)
    return [c for c in table.columns if c not in have and c not in FIELDS
            and not ("/" in str(c) and (base is None or slot_dtype(str(c).split("/")[0])))]


def _first_numeric(table: pd.DataFrame, cols: list[str]) -> str | None:
    return next((c for c in cols if pd.api.types.is_numeric_dtype(table[c])), None)


def _finite_fill(values: np.ndarray) -> np.ndarray:
    """Unscored particles sort as the worst score (NaN breaks thresholds)."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    return np.where(finite, v, v[finite].min() if finite.any() else 0.0)


def apply_particle_scores(ps: ParticleSet, base: ParticleSet | None, class_score: pd.Series | None,
                          score_slot: str) -> tuple[ParticleSet, pd.DataFrame | None, str | None]:
    """(set to write, side-car table or None, description of what went into the score slot)."""
    cols = score_columns(ps.table, None if base is None else base.table)
    out = ps.copy()
    sidecar = None
    if cols:
        sidecar = pd.concat([ps.table[["uid"]] if "uid" in ps.table else pd.DataFrame(index=ps.table.index),
                             ps.table[cols]], axis=1)
        out.table = out.table.drop(columns=cols)
    primary = _first_numeric(ps.table, cols)
    if primary is not None:
        score, what = ps.table[primary].to_numpy(np.float64), f"particle score {primary!r}"
    elif class_score is not None and "class_id" in ps.table:
        score = ps.table["class_id"].map(class_score).to_numpy(np.float64)
        what = f"class score {class_score.name!r} of each particle's class"
    else:
        return out, sidecar, None
    if score_slot == "none":
        return out, sidecar, None
    score = _finite_fill(score).astype(np.float32)
    if SCORE_FIELD in out.table:  # the input had pick_stats: only the score changes
        out.table[SCORE_FIELD] = score
    else:
        for name, dtype in _PICK_STATS:
            out.table[name] = score if name == SCORE_FIELD else np.zeros(len(out), dtype=dtype)
    return out, sidecar, what


def class_table(cs: ClassSet, base: ClassSet | None, selection: list[int] | None) -> pd.DataFrame:
    """Per-class side-car: every input class, whether it was kept, and the job's class scores."""
    cols = score_columns(cs.table, None if base is None else base.table)
    ref = base.table if base is not None else cs.table
    out = ref[["class_id"] + (["uid"] if "uid" in ref else [])].copy()
    out["selected"] = (np.asarray(selection, dtype=int) if selection is not None and len(selection) == len(out)
                       else out["class_id"].isin(cs.table["class_id"]).astype(int).to_numpy())
    return out.merge(cs.table[["class_id"] + cols], on="class_id", how="left")


# -- results -> files ------------------------------------------------------------------------------
@dataclass
class Written:
    name: str  # cryoSPARC output name
    kind: str  # "particle" or "template"
    path: Path  # the .cs written by csfile
    count: int
    obj: Any  # the ParticleSet / ClassSet written
    scored: str | None = None  # what went into pick_stats/ncc_score


@dataclass
class Results:
    outputs: list[Written] = field(default_factory=list)
    sidecars: dict[str, Path] = field(default_factory=dict)  # file name -> local path
    figures: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # everything written, for cleanup
    summary: list[str] = field(default_factory=list)


def _csv(path: Path, table: pd.DataFrame, res: Results) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    res.sidecars[path.name] = path
    res.files.append(path)


def write_results(result: JobResult, inputs: dict[str, Any], out_dir: Path, score_slot: str = "pick_stats") -> Results:
    """Every result as cryoSPARC files in ``out_dir``: ``<output>.cs`` per particle/class set,
    ``cryolens_*.csv`` side-cars for scores and tables. Returns what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    res = Results(figures=dict(result.figures))
    in_classes: ClassSet | None = inputs.get("classes")
    base_ps: ParticleSet | None = inputs.get("particles")
    if base_ps is None and in_classes is not None:
        base_ps = in_classes.particles
    class_score: pd.Series | None = None
    for name, cs in result.classes.items():
        oname = output_name(name)
        table = class_table(cs, in_classes, result.class_selection.get(name))
        if len(table.columns) > 3 or name in result.class_selection:
            _csv(out_dir / f"cryolens_classes_{oname}.csv", table, res)
        cols = score_columns(cs.table, None if in_classes is None else in_classes.table)
        primary = _first_numeric(cs.table, cols)
        if primary is not None and class_score is None:
            class_score = cs.table.set_index("class_id")[primary].rename(primary)
        keep = cs.table.drop(columns=cols)
        path = csfile.write_classes(replace(cs, table=keep), out_dir / f"{oname}.cs")
        res.files.append(path)
        res.outputs.append(Written(oname, "template", path, len(cs), cs))
    for name, ps in result.particles.items():
        oname = output_name(name)
        ps2, sidecar, what = apply_particle_scores(ps, base_ps, class_score, score_slot)
        if sidecar is not None:
            _csv(out_dir / f"cryolens_scores_{oname}.csv", sidecar, res)
        path = csfile.write_particles(ps2, out_dir / f"{oname}.cs")
        res.files.append(path)
        res.outputs.append(Written(oname, "particle", path, len(ps2), ps2, what))
        if what:
            res.summary.append(f"  {oname}: {SCORE_FIELD} holds the {what}")
    for name, table in result.tables.items():
        _csv(out_dir / f"cryolens_{output_name(name)}.csv", table, res)
    for name, write in result.files.items():  # e.g. a built library: a side file, uploaded like the tables
        write(out_dir / name)
        res.sidecars[name] = out_dir / name
        res.files.append(out_dir / name)
    return res


# -- .csg ------------------------------------------------------------------------------------------
def _q(text: str) -> str:
    """A YAML single-quoted scalar (a quote is doubled; one line)."""
    return "'" + " ".join(str(text).split()).replace("'", "''") + "'"


def write_csg(cs_path: Path, name: str, kind: str, title: str, description: str) -> Path:
    """``<output>.csg`` next to ``cs_path``: the group file of CryoSPARC's exports, read by Import
    Result Group. Layout as CryoSPARC writes it (keys sorted; an exported v4.4.1 file is quoted in
    docs/cryosparc.md): ``group`` (name, type, title, description) and one ``results`` entry per
    slot: ``metafile`` ('>' = relative to the .csg), ``num_items``, ``type`` ``<kind>.<dtype>``.
    Prefixes cryoSPARC would not know are left out (their data is in the side-car CSVs)."""
    from cryosparc import __version__ as tools_version

    dset = csfile.load_dataset(cs_path)
    prefixes = sorted(p for p in dset.prefixes())
    dtypes = {p: ("blob" if kind == "template" and p == "blob" else slot_dtype(p)) for p in prefixes}
    lines = [f"created: {dt.datetime.now():%Y-%m-%d %H:%M:%S.%f}", "group:",
             f"  description: {_q(description)}", f"  name: {name}", f"  title: {_q(title)}", f"  type: {kind}",
             "results:"]
    for p in prefixes:
        if dtypes[p] is None:
            continue
        lines += [f"  {p}:", f"    metafile: {_q('>' + cs_path.name)}", f"    num_items: {len(dset)}",
                  f"    type: {kind}.{dtypes[p]}"]
    lines.append(f"version: v{tools_version}")
    path = cs_path.with_suffix(".csg")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def link_stacks(obj: ParticleSet | ClassSet, out_dir: Path, final: Path | None = None) -> list[str]:
    """For '>' paths (relative to the group file, as in exports) make the referenced stacks exist
    under ``out_dir`` (symlinks; none where ``final``, the folder ``out_dir`` is moved into, has
    the stack); returns the stacks that could not be found."""
    cs = obj.meta.get("cryosparc") or {}
    table = obj.table
    if cs.get("blob_path_prefix") != ">" or "image_stack" not in table:
        return []
    root = Path(obj.root if isinstance(obj, ParticleSet) else cs.get("root") or ".")
    missing = []
    for stack in pd.unique(table["image_stack"].astype(str)):
        src, dst = root / stack, out_dir / stack
        there = (final or out_dir) / stack
        if dst.exists() or dst.is_symlink() or (there.exists() and not there.is_symlink()):
            continue
        if not src.exists():
            missing.append(stack)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src.resolve(), dst)
    return missing


# -- the offline run -------------------------------------------------------------------------------
def load_inputs(spec: JobSpec, args) -> dict[str, Any]:
    kinds = {i.kind: i.name for i in spec.inputs}
    inputs: dict[str, Any] = {}
    ps = None
    if getattr(args, "particles", None):
        ps = csfile.read_particles(args.particles, project_dir=args.project_dir)
        if "particles" in kinds:
            inputs[kinds["particles"]] = ps
    if getattr(args, "classes_in", None) and "classes" in kinds:
        probe = csfile.read_classes(args.classes_in, particles_cs=ps, project_dir=args.project_dir, load_images=False)
        root = Path(probe.meta["cryosparc"]["root"])
        found = all((root / s).exists() for s in probe.table["image_stack"].astype(str))
        if not found:  # jobs that need the images say so; the others (select) do not need them
            print(f"note: class average stacks not found under {root}: images not loaded", file=sys.stderr)
        inputs[kinds["classes"]] = probe if not found else \
            csfile.read_classes(args.classes_in, particles_cs=ps, project_dir=root)
    for kind in ("volume", "mask"):
        if getattr(args, kind, None) and kind in kinds:
            from cryolens.core.mrc import read_map

            inputs[kinds[kind]] = read_map(getattr(args, kind))
    return inputs


def output_files(spec: JobSpec) -> list[str]:
    """The files an offline run of ``spec`` may write (its declared outputs): what a re-run clears."""
    names = []
    for o in spec.outputs:
        oname = output_name(o.name)
        if o.kind in ("particles", "classes"):
            names += [f"{oname}.cs", f"{oname}.csg", f"cryolens_scores_{oname}.csv", f"cryolens_classes_{oname}.csv"]
        elif o.kind == "table":
            names.append(f"cryolens_{oname}.csv")
        elif o.kind == "figure":
            names.append(f"cryolens_{oname}.pdf")
    return names


def write_offline(result: JobResult, inputs: dict[str, Any], out: Path, score_slot: str, title: str,
                  command: str, final: Path | None = None) -> Results:
    """What an offline run leaves in ``out`` (a staging folder that becomes ``final``) for Import
    Result Group: ``write_results``, a .csg per output, links to the image stacks the outputs
    name, and the figures as PDF."""
    final = out if final is None else final
    res = write_results(result, inputs, out, score_slot)
    missing: set[str] = set()
    for w in res.outputs:
        res.files.append(write_csg(w.path, w.name, w.kind, f"{title}: {w.name}", command))
        missing.update(link_stacks(w.obj, out, final))
    res.summary += [f"  warning: {s} not found: put it at {final / s} before importing" for s in sorted(missing)]
    for name, fig in res.figures.items():
        path = out / f"cryolens_{output_name(name)}.pdf"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="pdf")
        res.files.append(path)
    return res


def run_offline(spec: JobSpec, args, params: dict[str, Any], device, title: str, command: str) -> int:
    """Run ``spec`` on files, write results + .csg into ``args.out``; the exit status of the
    ExitCode table (0 ok, 1 failed, 2 bad input, 3 aborted, 130/143 SIGINT/SIGTERM)."""
    from cryolens.core.progress import Progress

    out = Path(args.out)
    t0 = time.monotonic()
    try:
        params = prepare_params(spec, params, device)  # the library or model checked before any input
        inputs = load_inputs(spec, args)
        # an earlier run's outputs in --out are not this run's: gone before it starts (only those)
        clear_outputs(out, output_files(spec), inputs=[getattr(args, k, None) for k in ("particles", "classes_in",
                                                                                       "volume", "mask")])
        with Progress(spec.name) as prog:
            ctx = JobContext(out_dir=out, device=device, seed=args.seed, threads=args.threads, progress=prog,
                             log=lambda s: print(s, flush=True))
            result = run_job(spec, inputs, params, ctx)
        with staged(out) as stage:  # written together or not at all (an error, a signal)
            res = write_offline(result, inputs, stage.dir, args.score_slot, title, command, final=out)
            signals.finishing()
            stage.commit()
    except (Exception, KeyboardInterrupt) as err:
        signals.finishing()
        code = exit_code(err)
        if code == ExitCode.ABORTED or isinstance(err, KeyboardInterrupt):
            print(f"cryolens-cryosparc {spec.name}: " + ("aborted" if code == ExitCode.ABORTED else
                                                         f"interrupted ({err or 'SIGINT'})"), file=sys.stderr)
            return code
        if args.debug:
            import traceback

            traceback.print_exc()
        plain = user_error(err)
        msg = str(plain) if plain is not None else \
            f"internal error: {type(err).__name__}: {err} (run with --debug for the traceback)"
        print(f"cryolens-cryosparc {spec.name}: ERROR: {msg}", file=sys.stderr)
        return code
    for line in result.summary + res.summary:
        print(line)
    for w in res.outputs:
        path = out / w.path.name
        print(f"wrote {path} and {path.with_suffix('.csg')} ({w.count} {w.kind}s)")
    print(f"cryolens {spec.name}: done in {time.monotonic() - t0:.1f} s; import the .csg files with "
          "CryoSPARC's Import Result Group job")
    return ExitCode.SUCCESS
