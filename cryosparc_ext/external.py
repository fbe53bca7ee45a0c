"""Every registered cryolens job as a cryoSPARC external job (CryoSPARC v5.0, cryosparc-tools 5.0).

    cryolens-cryosparc <job> --project P3 --workspace W1 --particles J12.particles_selected
        [--classes-in J12.class_averages] [--volume J20.volume] [--mask J21.mask] [--<param> value ...]
    cryolens-cryosparc <job> --offline --particles J12_particles.cs --out DIR ...   (offline.py)
    cryolens-cryosparc --list

It runs where it is started (e.g. a GPU node that reaches the master's base URL): an external job
is never queued on a lane. Life of a run: log in (client.py) -> create an external job titled with
the cryolens job and its parameters -> add and connect one input per source given, declaring the
slots the job reads -> ``with job.run()``: load the inputs, run the core job (progress in one event
updated in place), declare and save the outputs -> completed. Any failure marks the job failed
with one readable line, and no output is saved unless all of them could be prepared.

Outputs: particle sets keep every upstream slot through ``passthrough`` and their ``uid``s; a slot
is re-saved only when the job changed it or created it (poses -> ``alignments3D``), else ``blob``
is re-emitted (an output needs one slot). Scores: see offline.py and docs/cryosparc.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from cryolens.core import signals
from cryolens.core.errors import CryolensError, ExitCode, Interrupted, JobAborted, exit_code, user_error
from cryolens.core.jobs import JobContext, JobSpec, get_job, load_all, prepare_params, run_job
from cryolens.core.jobs.flags import add_param_arguments, describe_job, given_params

from . import csfile
from .client import JobFailed, connect, describe_error
from .offline import slot_dtype, write_results

# job input kind -> (cryoSPARC datatype, slots declared on the external job's input)
INPUTS = {
    "particles": ("particle", ["blob", "?ctf", "?alignments2D", "?alignments3D", "?location", "?pick_stats"]),
    "classes": ("template", ["blob"]),
    "volume": ("volume", [{"name": "map", "dtype": "blob"}]),
    "mask": ("mask", [{"name": "mask", "dtype": "blob"}]),
}
FLAGS = {"particles": "--particles", "classes": "--classes-in", "volume": "--volume", "mask": "--mask"}
_REF = re.compile(r"^(J\d+)[./]([A-Za-z][0-9A-Za-z_]*)$")
STOP_CHECK_S = 10.0  # how often a running job asks CryoSPARC whether it was killed


# -- command line ----------------------------------------------------------------------------------
def build_parser(spec: JobSpec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"cryolens-cryosparc {spec.name}", description=spec.summary, allow_abbrev=False)
    kinds = {i.kind for i in spec.inputs}
    src = "a source output JOB.OUTPUT (e.g. J12.particles_selected), or a file with --offline"
    if kinds & {"particles", "classes"}:
        p.add_argument("--particles", help=f"particles: {src}")
    if "classes" in kinds:
        p.add_argument("--classes-in", "--class-averages", dest="classes_in",
                       help=f"2D class averages (templates): {src}; membership comes from --particles")
    for kind in ("volume", "mask"):
        if kind in kinds:
            p.add_argument(f"--{kind}", help=f"{kind}: {src} (an .mrc with --offline)")
    g = p.add_argument_group("CryoSPARC (password: env CRYOSPARC_PASSWORD, a prompt, or a saved "
                             "`python -m cryosparc.tools login`; never on the command line)")
    g.add_argument("--url", default=os.environ.get("CRYOSPARC_BASE_URL"),
                   help="CryoSPARC web address, e.g. http://master:39000 (default $CRYOSPARC_BASE_URL)")
    g.add_argument("--email", default=os.environ.get("CRYOSPARC_EMAIL"), help="default $CRYOSPARC_EMAIL")
    g.add_argument("--project", help="project uid, e.g. P3")
    g.add_argument("--workspace", help="workspace uid for the new external job, e.g. W1")
    g.add_argument("--title", help="job title (default: the cryolens job and its parameters)")
    g.add_argument("--project-dir", help="the project directory as seen from this machine (default: the "
                   "server's; needed where jobs read images); offline: what blob/path is relative to")
    g.add_argument("--work-dir", help="local scratch folder (default: a temporary one, removed afterwards)")
    o = p.add_argument_group("offline (no server)")
    o.add_argument("--offline", action="store_true", help="read .cs files, write .cs + .csg into --out")
    o.add_argument("--out", help="output folder for --offline")
    r = p.add_argument_group("run")
    r.add_argument("--score-slot", choices=["pick_stats", "none"], default="pick_stats",
                   help="also put the job's score into pick_stats/ncc_score (default) or only into side-car CSVs")
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--debug", action="store_true", help="print tracebacks")
    add_param_arguments(p, spec)
    return p


def parse_ref(text: str, flag: str) -> tuple[str, str]:
    m = _REF.match(text.strip())
    if not m:
        raise CryolensError(f"{flag} {text!r}: expected JOB.OUTPUT, e.g. J12.particles_selected")
    return m.group(1), m.group(2)


def default_title(spec: JobSpec, params: dict[str, Any]) -> str:
    given = ", ".join(f"{k}={v if v is not None else 'yes'}" for k, v in params.items())
    title = f"cryolens {spec.name}" + (f" ({given})" if given else "")
    return title if len(title) <= 120 else title[:117] + "..."


def list_jobs() -> int:
    for _, spec in sorted(load_all().items()):
        print("\n".join(describe_job(spec, lambda i: f"{FLAGS.get(i.kind, '--' + i.name)} ({INPUTS[i.kind][0]})")))
    return ExitCode.SUCCESS


# -- progress, abort ----------------------------------------------------------------------------------
class JobProgress:
    """One event in the job's log, updated in place (and a line on stdout), at most every few s."""

    def __init__(self, job, name: str, interval_s: float = 2.0):
        self.job, self.name, self.interval_s, self.last = job, name, interval_s, -1e9

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.interval_s:
            return
        self.last = now
        text = f"{self.name}: {done}/{total} ({int(100 * done / max(total, 1))}%)"
        print(text, flush=True)
        self.job.log(text, name="progress")


def stop_check(job, interval_s: float | None = None):
    """should_stop for JobContext: the job was killed or marked done in CryoSPARC (one status call
    per interval)."""
    interval_s = STOP_CHECK_S if interval_s is None else interval_s
    state = {"t": time.monotonic(), "stop": False}

    def should_stop() -> bool:
        if not state["stop"] and time.monotonic() - state["t"] >= interval_s:
            state["t"] = time.monotonic()
            state["stop"] = job.status() not in ("running", "waiting")
        return state["stop"]

    return should_stop


# -- inputs ---------------------------------------------------------------------------------------------
def _fetch(session, project: str, paths, root: Path, mirror: Path) -> Path:
    """``root`` if every file is there, else a local mirror with the files downloaded from the project."""
    paths = sorted(set(str(p) for p in paths))
    if all((root / p).exists() for p in paths):
        return root
    for p in paths:
        if not (mirror / p).exists():
            session.download(project, p, mirror / p)
    return mirror


def load_inputs(spec: JobSpec, job, session, project: str, refs: dict[str, Any], root: Path,
                work: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Neutral inputs from the connected inputs (saved as .cs in ``work``); also the .cs paths."""
    names = {i.kind: i.name for i in spec.inputs}
    inputs: dict[str, Any] = {}
    files: dict[str, Path] = {}
    ps = None
    if "particles" in refs:
        files["particles"] = job.load_input("particles", work / "input_particles.cs")
        ps = csfile.read_particles(files["particles"], project_dir=root, find_passthrough=False)
        if "particles" in names:
            inputs[names["particles"]] = ps
    if "classes" in refs:
        files["classes"] = job.load_input("classes", work / "input_classes.cs")
        probe = csfile.read_classes(files["classes"], particles_cs=ps, project_dir=root, load_images=False)
        class_root = _fetch(session, project, probe.table["image_stack"], root, work / "mirror")
        inputs[names["classes"]] = csfile.read_classes(files["classes"], particles_cs=ps, project_dir=class_root)
    for kind in ("volume", "mask"):
        if kind in refs:
            from cryolens.core.mrc import read_map

            files[kind] = job.load_input(kind, work / f"input_{kind}.cs")
            dset = csfile.load_dataset(files[kind], what=f"cryoSPARC {kind} dataset")
            path = str(dset[f"{INPUTS[kind][1][0]['name']}/path"][0]).lstrip(">")
            inputs[names[kind]] = read_map(_fetch(session, project, [path], root, work / "mirror") / path)
    return inputs, files


# -- outputs --------------------------------------------------------------------------------------------
def _rows_in(full, src) -> np.ndarray:
    """Positions in ``src`` of ``full``'s uids; CryolensError if a row is not in the input."""
    s_uid = np.asarray(src["uid"])
    order = np.argsort(s_uid, kind="stable")
    pos = np.minimum(np.searchsorted(s_uid[order], np.asarray(full["uid"])), max(len(s_uid) - 1, 0))
    rows = order[pos] if len(s_uid) else np.zeros(0, dtype=np.int64)
    if len(full) and (not len(s_uid) or (s_uid[rows] != np.asarray(full["uid"])).any()):
        raise CryolensError("the job returned particles that are not in its input (uids differ): "
                            "cannot save them with passthrough")
    return rows


def _changed(full, src, prefix: str, rows: np.ndarray) -> bool:
    for f in (x for x in full.fields() if x.startswith(prefix + "/")):
        if f not in src.fields():
            return True
        a, b = np.asarray(full[f]), np.asarray(src[f])[rows]
        if a.dtype == object or b.dtype == object:
            if not (a.shape == b.shape and (a == b).all()):
                return True
        elif a.dtype != b.dtype or a.tobytes() != b.tobytes():
            return True
    return False


def output_slots(full, src, kind: str) -> tuple[list[str], list[str]]:
    """(slots to declare and save, prefixes cryoSPARC would not know). With a passthrough source
    only new or changed slots; with none, every known slot."""
    known = [p for p in full.prefixes() if (p == "blob" if kind == "template" else slot_dtype(p))]
    unknown = [p for p in full.prefixes() if p not in known]
    if src is None:
        return known, unknown
    rows = _rows_in(full, src)
    slots = [p for p in known if p not in src.prefixes() or _changed(full, src, p, rows)]
    if not slots and known:
        slots = ["blob"] if "blob" in known else known[:1]
    return slots, unknown


def _slot_spec(prefix: str, kind: str):
    dtype = "blob" if kind == "template" else slot_dtype(prefix)
    return prefix if dtype == prefix else {"name": prefix, "dtype": dtype}


def save_outputs(job, result, inputs: dict[str, Any], files: dict[str, Path], work: Path, score_slot: str) -> None:
    """Declare every output, build every dataset, upload side-car tables and figures, then save
    the outputs (so a failure before the last step saves none)."""
    res = write_results(result, inputs, work / "out", score_slot)
    ready = []
    for w in res.outputs:
        source = "particles" if w.kind == "particle" else "classes"
        src = csfile.load_dataset(files[source]) if source in files else None
        full = csfile.load_dataset(w.path)
        slots, unknown = output_slots(full, src, w.kind)
        if not slots:
            raise CryolensError(f"output {w.name}: no cryoSPARC slot to save (fields: {', '.join(full.prefixes())})")
        job.add_output(w.name, w.kind, [_slot_spec(p, w.kind) for p in slots],
                       passthrough=source if src is not None else None, title=w.name.replace("_", " "))
        dset = full.filter_prefixes(slots, copy=True)
        missing = [f for f in job.output_fields(w.name) if f[0] not in dset.fields()]
        if missing:  # the server's slot layout has fields our file lacks: its defaults
            dset = dset.add_fields(missing)
            job.log(f"{w.name}: default values for {', '.join(f[0] for f in missing)}")
        if unknown:
            job.log(f"{w.name}: not saved (no cryoSPARC slot; see the side-car CSVs): {', '.join(unknown)}",
                    level="warning")
        via = f" (+ passthrough of {source})" if src is not None else ""
        job.log(f"{w.name}: {len(dset)} {w.kind}s, slots {', '.join(slots)}{via}"
                + (f"; pick_stats/ncc_score = {w.scored}" if w.scored else ""))
        ready.append((w.name, dset))
    for fname, path in res.sidecars.items():  # side files first: a refusal here saves no output
        job.upload(fname, path.read_bytes())
        job.log(f"side-car table: {job.uid}/{fname}")
    for name, fig in res.figures.items():
        job.plot(fig, name)
    for name, dset in ready:
        job.save_output(name, dset)
    for line in result.summary + res.summary:
        job.log(line)


# -- the online run -------------------------------------------------------------------------------
def run_online(spec: JobSpec, args, params: dict[str, Any], device, title: str, command: str) -> int:
    if not args.project or not args.workspace:
        raise CryolensError("--project and --workspace are required (or run with --offline)")
    refs = {kind: parse_ref(getattr(args, dest), FLAGS[kind])
            for kind, dest in (("particles", "particles"), ("classes", "classes_in"), ("volume", "volume"),
                               ("mask", "mask")) if getattr(args, dest, None)}
    session = connect(args.url, args.email, os.environ.get("CRYOSPARC_PASSWORD"), prompt=sys.stdin.isatty())
    for kind, (src_job, src_out) in refs.items():  # refuse a wrong source before creating anything
        got = session.output_type(args.project, src_job, src_out)
        if got != INPUTS[kind][0]:
            raise CryolensError(f"{FLAGS[kind]} {src_job}.{src_out} is a {got} output, not {INPUTS[kind][0]}")
    job = session.create_job(args.project, args.workspace, title, f"cryolens: {command}")
    print(f"cryolens {spec.name}: external job {args.project}-{job.uid} in {args.workspace} at {session.url} "
          f"(CryoSPARC {session.server_version})", flush=True)
    try:
        for kind, (src_job, src_out) in refs.items():
            job.connect_input(kind, INPUTS[kind][0], INPUTS[kind][1], src_job, src_out, title=kind)
    except BaseException as err:  # a signal too: the job is marked failed, never left building
        signals.finishing()
        with contextlib.suppress(Exception):
            job.fail(describe_error(err))
        if isinstance(err, KeyboardInterrupt):
            raise
        raise CryolensError(describe_error(err)) from None
    with tempfile.TemporaryDirectory(prefix="cryolens-cryosparc-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            with job.running():  # any end but success, a signal included, marks the job failed
                _run_body(spec, job, session, args, refs, params, device, work)
        except JobFailed as err:
            signals.finishing()
            print(f"cryolens {spec.name}: job {args.project}-{job.uid} failed: {err}", file=sys.stderr, flush=True)
            sig = signals.received()
            return exit_code(Interrupted(sig)) if sig is not None else ExitCode.FAILED
    print(f"cryolens {spec.name}: job {args.project}-{job.uid} completed", flush=True)
    return ExitCode.SUCCESS


def _run_body(spec, job, session, args, refs, params, device, work: Path) -> None:
    try:
        root = Path(args.project_dir or session.project_dir(args.project))
        if not root.is_dir():
            job.log(f"the project directory {root} is not visible on this machine: jobs that read particle "
                    "images need it (pass --project-dir)", level="warning")
        params = prepare_params(spec, params, device)  # the library or model checked before any input
        inputs, files = load_inputs(spec, job, session, args.project, refs, root, work)
        ctx = JobContext(out_dir=work / "job", device=device, seed=args.seed, threads=args.threads,
                         progress=JobProgress(job, spec.name), should_stop=stop_check(job),
                         log=lambda s: (print(s, flush=True), job.log(s)))
        result = run_job(spec, inputs, params, ctx)
        ctx.check_abort()
        save_outputs(job, result, inputs, files, work, args.score_slot)
    except (CryolensError, KeyboardInterrupt):
        raise
    except JobAborted:
        raise CryolensError("stopped: the job was killed or marked done in CryoSPARC") from None
    except Exception as err:  # a bug or a server refusal: keep the traceback with the job
        if args.debug:
            traceback.print_exc()
        msg = describe_error(err)
        try:
            job.upload("cryolens_traceback.txt", traceback.format_exc().encode())
            msg += f" (traceback: {job.uid}/cryolens_traceback.txt)"
        except Exception:
            pass
        raise CryolensError(msg) from None


# -- entry point ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``cryolens-cryosparc <job> ...``; exit status from the ExitCode table: 0 success, 1 the job
    failed (online: CryoSPARC marked it failed), 2 bad input, usage or connection, 3 aborted,
    130/143 SIGINT/SIGTERM (online: the job is marked failed first)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("--list", "-l"):
        if not argv:
            print("usage: cryolens-cryosparc <job> --project P --workspace W --particles J12.particles ... "
                  "| <job> --offline ... | --list", file=sys.stderr)
        list_jobs()
        return ExitCode.SUCCESS if argv else ExitCode.BAD_INPUT
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return ExitCode.SUCCESS
    try:
        spec = get_job(argv[0])
    except CryolensError as err:
        print(f"cryolens-cryosparc: error: {err}", file=sys.stderr)
        return exit_code(err)
    args = build_parser(spec).parse_args(argv[1:])
    params = given_params(args)
    title = args.title or default_title(spec, params)
    command = "cryolens-cryosparc " + shlex.join(argv)
    try:
        with signals.raise_on_signals():
            from cryolens.core.runtime import cap_threads, resolve_device, seed_everything

            device = resolve_device(args.device)
            seed_everything(args.seed)
            args.threads = cap_threads(args.threads, lambda s: print(s, file=sys.stderr))
            if args.offline:
                from .offline import run_offline

                if not args.out:
                    raise CryolensError("--offline needs --out DIR")
                return run_offline(spec, args, params, device, title, command)
            return run_online(spec, args, params, device, title, command)
    except (Exception, KeyboardInterrupt) as err:
        plain = user_error(err)
        if args.debug:
            traceback.print_exc()
        what = f"interrupted ({err or 'SIGINT'})" if isinstance(err, KeyboardInterrupt) else \
            f"error: {plain}" if plain is not None else \
            f"internal error: {type(err).__name__}: {err} (run with --debug for the traceback)"
        print(f"cryolens-cryosparc {spec.name}: {what}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
