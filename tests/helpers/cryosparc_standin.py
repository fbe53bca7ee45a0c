"""A STAND-IN for the CryoSPARC v5 API, for tests only. It is NOT CryoSPARC.

It serves, on 127.0.0.1 only, the ~25 operations of CryoSPARC's REST API (``/api/cmd``) that
cryolens drives through the real, unmodified cryosparc-tools 5.0 client. cryosparc-tools has no
hard-coded URLs: it reads ``/api/cmd/openapi.json`` and binds every operation's ``summary`` (e.g.
``jobs.load_input``) as a method, so the URL paths below are this stand-in's own; the summaries,
parameters and the pydantic models it answers with are the client's.

Adapted from ../shared/research/cryosparc-standin/fake_server.py (rewritten). Rules it enforces,
from the cryosparc-tools v5.0.0 changelog and the v5 API docstrings in cryosparc/api.pyi:

* bearer auth on everything but ``health``/``login``; login checks email and sha256(password);
* inputs and outputs need at least one slot, names ``^[A-Za-z][0-9A-Za-z_]*$``, external jobs only;
  none added to a completed/failed/killed job ("clear the job first"); connections only while
  building (one revision of the v5.0.0 changelog forbids them once a job has started);
* ``connect``: datatypes match and the source output has every required slot;
* ``mark_running`` only from building; outputs saved only while running/waiting;
* a saved dataset holds every field the declared slots need, no slot it did not declare, unique
  uids, and with ``passthrough`` only uids of that input's rows.

Where it is weaker than the real server (say so, don't trust it for these): slot field layouts
are copied from real .cs headers (not the server's registry), output versions are not kept,
custom slot names/dtypes are not validated, file paths are not sandboxed beyond the project dir.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from cryosparc.dataset import Dataset
from cryosparc.models.job import Job
from cryosparc.models.job_spec import (Connection, Input, InputResult, InputSpec, JobSpec, Output, OutputResult,
                                       OutputSlot, OutputSpec, ResourceSpec)
from cryosparc.models.project import Project
from cryosparc.models.user import Email, User

EMAIL, PASSWORD = "lab@example.org", "not-a-real-password"
TOKEN = "standin-token"
DSET = "application/x-cryosparc-dataset"
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
NAME = re.compile(r"^[A-Za-z][0-9A-Za-z_]*$")

_ALIGN = [("split", "<u4"), ("shift", "<f4", (2,)), ("pose", "<f4"), ("psize_A", "<f4"), ("error", "<f4"),
          ("error_min", "<f4"), ("resid_pow", "<f4"), ("slice_pow", "<f4"), ("image_pow", "<f4"),
          ("cross_cor", "<f4"), ("alpha", "<f4"), ("alpha_min", "<f4"), ("weight", "<f4"), ("pose_ess", "<f4"),
          ("shift_ess", "<f4"), ("class_posterior", "<f4"), ("class", "<u4"), ("class_ess", "<f4")]
# slot dtype -> fields (from real CryoSPARC .cs headers: 4k_dataset.cs and the cryoDRGN fixtures)
SLOT_FIELDS: dict[str, list[tuple]] = {
    "blob": [("path", "O"), ("idx", "<u4"), ("shape", "<u4", (2,)), ("psize_A", "<f4"), ("sign", "<f4"),
             ("import_sig", "<u8")],
    "ctf": [("type", "O"), ("exp_group_id", "<u4"), ("accel_kv", "<f4"), ("cs_mm", "<f4"), ("amp_contrast", "<f4"),
            ("df1_A", "<f4"), ("df2_A", "<f4"), ("df_angle_rad", "<f4"), ("phase_shift_rad", "<f4"),
            ("scale", "<f4"), ("scale_const", "<f4"), ("shift_A", "<f4", (2,)), ("tilt_A", "<f4", (2,)),
            ("trefoil_A", "<f4", (2,)), ("tetra_A", "<f4", (4,)), ("anisomag", "<f4", (4,)), ("bfactor", "<f4")],
    "alignments2D": _ALIGN,
    "alignments3D": [f if f[0] != "pose" else ("pose", "<f4", (3,)) for f in _ALIGN],
    "location": [("micrograph_uid", "<u8"), ("exp_group_id", "<u4"), ("micrograph_path", "O"),
                 ("micrograph_shape", "<u4", (2,)), ("center_x_frac", "<f4"), ("center_y_frac", "<f4"),
                 ("min_dist_A", "<f4"), ("micrograph_psize_A", "<f4")],
    "pick_stats": [("ncc_score", "<f4"), ("power", "<f4"), ("template_idx", "<u4"), ("angle_rad", "<f4")],
}


def slot_fields(name: str, dtype: str) -> list[tuple]:
    return [(f"{name}/{f[0]}",) + tuple(f[1:]) for f in SLOT_FIELDS.get(dtype, [])]


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class Raw(bytes):
    """A plain file body (downloads)."""


class StandIn:
    """In-memory state of one project (P1) and its jobs; .cs files under ``project_dir``."""

    def __init__(self, project_dir: Path):
        self.project_dir = Path(project_dir)
        self.user = User(_id="6372a35e821ed2b71d9fe4e3", name="lab", first_name="L", last_name="Ab",
                         emails=[Email(address=EMAIL, verified=True)], created_at=NOW)
        self.project = Project(_id="67292e95282b26b45d0e8fae", uid="P1", uid_num=1, title="stand-in",
                               project_dir=str(self.project_dir), owner_user_id=self.user.id, size_last_updated=NOW)
        self.jobs: dict[str, Job] = {}
        self.saved: dict[tuple[str, str], Dataset] = {}  # (job, output) -> saved (non-passthrough) slots
        self.events: dict[str, list[dict]] = {}
        self.failures: dict[str, str] = {}  # job -> error given to mark_failed
        self.assets: list[tuple] = []  # uploaded plot files (name, format, bytes)
        self.version = "v5.0.3"  # what config.get_version answers
        self.calls: list[tuple[str, list, dict]] = []
        self.lock = threading.Lock()

    # -- seeding and inspection (tests) --
    def add_job(self, type_: str, title: str = "", workspace: str = "W1", status: str = "building") -> Job:
        n = len(self.jobs) + 1
        job = Job(_id=f"{n:024x}", uid=f"J{n}", uid_num=n, project_uid="P1", project_uid_num=1,
                  workspace_uids=[workspace], job_dir=f"J{n}", status=status, status_num=0,
                  created_by_user_id=self.user.id, title=title,
                  spec=JobSpec(type=type_, ui_tile_width=1, ui_tile_height=1, resource_spec=ResourceSpec()),
                  build_errors=[], job_dir_size_last_updated=NOW)
        self.jobs[job.uid] = job
        (self.project_dir / job.uid).mkdir(parents=True, exist_ok=True)
        return job

    def add_result(self, job_uid: str, name: str, type_: str, dset: Dataset, slots: dict[str, str]) -> None:
        """A completed upstream output (slot name -> dtype), as a real job would leave it."""
        path = f"{job_uid}/{job_uid}_{name}.cs"
        dset.save(self.project_dir / path)
        results = [OutputResult(name=s, dtype=d, versions=[0], metafiles=[path], num_items=[len(dset)])
                   for s, d in slots.items()]
        self.jobs[job_uid].spec.outputs.root[name] = Output(type=type_, title=name, results=results,
                                                            num_items=len(dset))
        self.saved[(job_uid, name)] = dset

    def set_status(self, job_uid: str, status: str) -> None:
        self.jobs[job_uid].status = status

    def ops(self, job_uid: str | None = None) -> list[str]:
        return [c[0] for c in self.calls if job_uid is None or (len(c[1]) > 1 and c[1][1] == job_uid)]

    # -- helpers --
    def _job(self, project: str, uid: str) -> Job:
        if project != "P1" or uid not in self.jobs:
            raise Refused(404, f"job {project}-{uid} not found")
        return self.jobs[uid]

    def _external(self, project: str, uid: str, what: str) -> Job:
        job = self._job(project, uid)
        if job.spec.type != "snowflake":
            raise Refused(422, f"{uid} is not an external job")
        if job.status in ("completed", "failed", "killed"):
            raise Refused(422, f"cannot {what} on a {job.status} job: clear it first")
        return job

    def output_dataset(self, job_uid: str, name: str) -> Dataset:
        out = self.jobs[job_uid].spec.outputs.root.get(name)
        if out is None:
            raise Refused(404, f"{job_uid} has no output {name}")
        if (job_uid, name) not in self.saved:
            raise Refused(422, f"output {name} of {job_uid} has no saved results")
        dset = self.saved[(job_uid, name)]
        passed = [r.name for r in out.results if r.passthrough]
        if out.passthrough and passed:  # join the input's inherited slots on uid, as CryoSPARC does
            src = self.input_dataset(self.jobs[job_uid], out.passthrough)
            dset = dset.innerjoin(src.filter_prefixes(passed, copy=True))
        return dset

    def input_dataset(self, job: Job, name: str) -> Dataset:
        inp = job.spec.inputs.root.get(name)
        if inp is None:
            raise Refused(404, f"{job.uid} has no input {name}")
        if not inp.connections:
            raise Refused(422, f"input {name} of {job.uid} is not connected")
        parts = [self.output_dataset(c.job_uid, c.output) for c in inp.connections]
        return parts[0] if len(parts) == 1 else Dataset.append(*parts)

    @staticmethod
    def _slots(dset: Dataset, slots: Any, default: list[str]) -> Dataset:
        if slots in (None, "all", "passthrough"):
            return dset
        return dset.filter_prefixes(default if slots == "default" else list(slots), copy=True)

    # -- operations: (path args, query, body) -> result --
    def health(self, a, q, b):
        return "OK"

    def login(self, a, q, b):
        ok = b.get("username") == EMAIL and b.get("password") == hashlib.sha256(PASSWORD.encode()).hexdigest()
        if not ok:
            raise Refused(401, "Incorrect email or password")
        return {"access_token": TOKEN, "token_type": "bearer"}

    def users_me(self, a, q, b):
        return self.user

    def config_get_version(self, a, q, b):
        return self.version

    def projects_find_one(self, a, q, b):
        if a[0] != "P1":
            raise Refused(404, f"project {a[0]} not found")
        return self.project

    def projects_get_directory(self, a, q, b):
        return str(self.project_dir)

    def jobs_find_one(self, a, q, b):
        return self._job(a[0], a[1])

    def jobs_get_directory(self, a, q, b):
        return str(self.project_dir / self._job(a[0], a[1]).uid)

    def jobs_create(self, a, q, b):
        if q.get("type") != "snowflake":
            raise Refused(422, "the stand-in only creates external jobs")
        job = self.add_job("snowflake", q.get("title", ""), workspace=a[1])
        job.description = q.get("description", "")
        return job

    def jobs_add_external_input(self, a, q, b):
        job = self._external(a[0], a[1], "add inputs")
        spec = InputSpec.model_validate(b)
        if not NAME.match(a[2]) or not spec.slots:
            raise Refused(422, f"input {a[2]!r}: bad name or no slots")
        job.spec.inputs.root[a[2]] = Input(**spec.model_dump(exclude={"slots"}), slots=spec.slots)
        return job

    def jobs_add_external_output(self, a, q, b):
        job = self._external(a[0], a[1], "add outputs")
        spec = OutputSpec.model_validate(b)
        if not NAME.match(a[2]) or not spec.slots:
            raise Refused(422, f"output {a[2]!r}: bad name or no slots")
        slots = [s if isinstance(s, OutputSlot) else OutputSlot(name=s, dtype=s) for s in spec.slots]
        results = [OutputResult(name=s.name, dtype=s.dtype) for s in slots]
        if spec.passthrough:
            inp = job.spec.inputs.root.get(spec.passthrough)
            if inp is None:
                raise Refused(422, f"passthrough input {spec.passthrough} does not exist")
            have = {r.name for r in results}
            for c in inp.connections:
                for r in c.results:
                    if r.result not in have:
                        results.append(OutputResult(name=r.result, dtype=r.dtype, passthrough=True))
                        have.add(r.result)
        job.spec.outputs.root[a[2]] = Output(type=spec.type, title=spec.title, passthrough=spec.passthrough,
                                             slots=slots, results=results)
        return job

    def jobs_connect(self, a, q, b):
        job = self._external(a[0], a[1], "connect inputs")
        if job.status != "building":
            raise Refused(422, "connect every input before starting an external job")
        src = self._job(a[0], q["source_job_uid"])
        out = src.spec.outputs.root.get(q["source_output_name"])
        inp = job.spec.inputs.root.get(a[2])
        if out is None or inp is None:
            raise Refused(404, "no such source output or input")
        if inp.type != out.type:
            raise Refused(422, f"cannot connect a {out.type} output to a {inp.type} input")
        have = {r.name for r in out.results}
        missing = [s.name for s in inp.slots if s.required and s.name not in have]
        if missing:
            raise Refused(422, f"{src.uid}.{q['source_output_name']} lacks required slots {missing}")
        inp.connections.append(Connection(job_uid=src.uid, output=q["source_output_name"], results=[
            InputResult(name=r.name, dtype=r.dtype, job_uid=src.uid, output=q["source_output_name"], result=r.name)
            for r in out.results]))
        return job

    def jobs_load_input(self, a, q, b):
        job = self._job(a[0], a[1])
        return self._slots(self.input_dataset(job, a[2]), q.get("slots", "default"),
                           [s.name for s in job.spec.inputs.root[a[2]].slots])

    def jobs_load_output(self, a, q, b):
        job = self._job(a[0], a[1])
        out = job.spec.outputs.root.get(a[2])
        return self._slots(self.output_dataset(a[1], a[2]), q.get("slots", "default"),
                           [r.name for r in (out.results if out else [])])

    def jobs_get_output_fields(self, a, q, b):
        out = self._job(a[0], a[1]).spec.outputs.root.get(a[2])
        if out is None:
            raise Refused(404, f"no output {a[2]}")
        fields = []
        for r in out.results:
            if not r.passthrough:
                fields += [[f[0], f[1]] if len(f) == 2 else [f[0], f[1], list(f[2])] for f in slot_fields(r.name, r.dtype)]
        return fields

    def jobs_save_output(self, a, q, b):
        job = self._job(a[0], a[1])
        if job.status not in ("running", "waiting"):
            raise Refused(422, f"job must be running or waiting to save outputs (it is {job.status})")
        out = job.spec.outputs.root.get(a[2])
        if out is None:
            raise Refused(404, f"output {a[2]} was not declared")
        dset = Dataset.load(io.BytesIO(b))
        own = [r for r in out.results if not r.passthrough]
        names = set(dset.fields())
        missing = [f[0] for r in own for f in slot_fields(r.name, r.dtype) if f[0] not in names]
        extra = sorted(set(dset.prefixes()) - {r.name for r in own})
        if missing or extra:
            raise Refused(422, f"dataset for {a[2]}: missing fields {missing}, undeclared slots {extra}")
        uid = np.asarray(dset["uid"])
        if len(np.unique(uid)) != len(uid):
            raise Refused(422, "duplicate uids")
        if out.passthrough:
            src = self.input_dataset(job, out.passthrough)
            outside = set(uid.tolist()) - set(np.asarray(src["uid"]).tolist())
            if outside:
                raise Refused(422, f"{len(outside)} uids are not rows of input {out.passthrough}")
            passed = [r.name for r in out.results if r.passthrough]
            pt = src.filter_prefixes(passed, copy=True).query({"uid": uid})
            pt.save(self.project_dir / job.uid / f"{job.uid}_passthrough_{a[2]}.cs")
        path = f"{job.uid}/{job.uid}_{a[2]}.cs"
        dset.save(self.project_dir / path)
        self.saved[(job.uid, a[2])] = dset
        for r in out.results:
            r.versions, r.metafiles, r.num_items = [int(q.get("version", 0))], [path], [len(dset)]
        out.num_items = len(dset)
        return job

    def jobs_mark_running(self, a, q, b):
        job = self._job(a[0], a[1])
        if job.status != "building":
            raise Refused(422, f"cannot start a {job.status} job")
        job.status = q.get("status", "running")
        return job

    def jobs_mark_completed(self, a, q, b):
        job = self._job(a[0], a[1])
        if job.status not in ("running", "waiting", "failed", "killed"):
            raise Refused(422, f"cannot complete a {job.status} job")
        job.status = "completed"
        return job

    def jobs_mark_failed(self, a, q, b):
        job = self._job(a[0], a[1])
        if job.status == "completed":
            raise Refused(422, "cannot fail a completed job")
        job.status = "failed"
        self.failures[job.uid] = q.get("error") or ""
        return job

    def _event(self, a, type_: str, text: Any, **extra) -> dict:
        events = self.events.setdefault(a[1], [])
        ev = {"_id": f"{len(events) + 1:024x}", "project_uid": a[0], "job_uid": a[1], "type": type_,
              "text": text, **extra}
        events.append(ev)
        return ev

    def jobs_add_event_log(self, a, q, b):
        self._job(a[0], a[1])
        return self._event(a, q.get("type", "text"), b)

    def jobs_update_event_log(self, a, q, b):
        for ev in self.events.get(a[1], []):
            if ev["_id"] == a[2]:
                ev["text"], ev["type"] = b, q.get("type") or ev["type"]
                ev["updates"] = ev.get("updates", 0) + 1
                return ev
        raise Refused(404, "no such event")

    def jobs_add_checkpoint(self, a, q, b):
        return self._event(a, "checkpoint", "", meta=b or {})

    def assets_upload(self, a, q, b):
        self.assets.append((q.get("filename"), q.get("format"), b))
        return {"fileid": f"{len(self.assets):024x}", "filename": q.get("filename") or "asset",
                "filetype": q.get("format") or "png"}

    def jobs_add_image_log(self, a, q, b):
        return self._event(a, "image", q.get("text"), imgfiles=b)

    def _file(self, rel: str) -> Path:
        path = (self.project_dir / rel).resolve()
        if self.project_dir.resolve() not in path.parents:
            raise Refused(403, "outside the project")
        return path

    def projects_upload_file(self, a, q, b):
        path = self._file(q["path"])
        if path.exists() and str(q.get("overwrite")).lower() not in ("true", "1"):
            raise Refused(409, f"{q['path']} exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b)
        return None

    def projects_download_file(self, a, q, b):
        path = self._file(q["path"])
        if not path.is_file():
            raise Refused(404, f"no file {q['path']}")
        return Raw(path.read_bytes())


# -- the OpenAPI description the client binds to (paths are the stand-in's own) ----------------
def _p(name):
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _q(name, required=False):
    return {"name": name, "in": "query", "required": required, "schema": {}}


def _ref(model):
    return {"200": {"description": "", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}


def _body(title, required=True):
    return {"required": required, "content": {"application/json": {"schema": {"title": title}}}}


_STR = {"200": {"description": "", "content": {"application/json": {"schema": {"type": "string"}}}}}
_ANY = {"200": {"description": "", "content": {"application/json": {"schema": {}}}}}
_BIN = {"200": {"description": "", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
_DS = {"200": {"description": "", "content": {DSET: {"schema": {"type": "string", "format": "binary"}}}}}
_STREAM = {"required": True, "content": {"application/octet-stream": {"schema": {"title": "Stream", "type": "string",
                                                                                  "format": "binary"}}}}
PJ, JB = [_p("project_uid")], [_p("project_uid"), _p("job_uid")]
OPS = [  # (method, path, summary, parameters, request body, responses)
    ("get", "/health", "health", [], None, _STR),
    ("post", "/login", "login", [], {"content": {"application/x-www-form-urlencoded": {"schema": {}}}}, _ref("Token")),
    ("get", "/users/me", "users.me", [], None, _ref("User")),
    ("get", "/config/version", "config.get_version", [], None, _STR),
    ("get", "/projects/{project_uid}", "projects.find_one", PJ, None, _ref("Project")),
    ("get", "/projects/{project_uid}/directory", "projects.get_directory", PJ, None, _STR),
    ("get", "/jobs/{project_uid}/{job_uid}", "jobs.find_one", JB, None, _ref("Job")),
    ("get", "/jobs/{project_uid}/{job_uid}/directory", "jobs.get_directory", JB, None, _STR),
    ("post", "/jobs/{project_uid}/{workspace_uid}/create", "jobs.create",
     [_p("project_uid"), _p("workspace_uid"), _q("type", True), _q("title"), _q("description")],
     _body("Params", False), _ref("Job")),
    ("post", "/jobs/{project_uid}/{job_uid}/external/inputs/{input_name}", "jobs.add_external_input",
     JB + [_p("input_name")], _body("Body"), _ref("Job")),
    ("post", "/jobs/{project_uid}/{job_uid}/external/outputs/{output_name}", "jobs.add_external_output",
     JB + [_p("output_name")], _body("Body"), _ref("Job")),
    ("post", "/jobs/{project_uid}/{job_uid}/connect/{input_name}", "jobs.connect",
     JB + [_p("input_name"), _q("source_job_uid", True), _q("source_output_name", True)], None, _ref("Job")),
    ("get", "/jobs/{project_uid}/{job_uid}/inputs/{input_name}/dataset", "jobs.load_input",
     JB + [_p("input_name"), _q("slots"), _q("force_join")], None, _DS),
    ("get", "/jobs/{project_uid}/{job_uid}/outputs/{output_name}/dataset", "jobs.load_output",
     JB + [_p("output_name"), _q("slots"), _q("version")], None, _DS),
    ("post", "/jobs/{project_uid}/{job_uid}/outputs/{output_name}/fields", "jobs.get_output_fields",
     JB + [_p("output_name")], _body("Dtype Params", False), _ANY),
    ("post", "/jobs/{project_uid}/{job_uid}/outputs/{output_name}/dataset", "jobs.save_output",
     JB + [_p("output_name"), _q("filename"), _q("version")],
     {"required": True, "content": {DSET: {"schema": {"title": "Dataset", "type": "string", "format": "binary"}}}},
     _ref("Job")),
    ("patch", "/jobs/{project_uid}/{job_uid}/mark_running", "jobs.mark_running", JB + [_q("status")], None, _ref("Job")),
    ("patch", "/jobs/{project_uid}/{job_uid}/mark_completed", "jobs.mark_completed", JB, None, _ref("Job")),
    ("patch", "/jobs/{project_uid}/{job_uid}/mark_failed", "jobs.mark_failed", JB + [_q("error")], None, _ref("Job")),
    ("post", "/jobs/{project_uid}/{job_uid}/events", "jobs.add_event_log", JB + [_q("type")], _body("Text"),
     _ref("TextEvent")),
    ("put", "/jobs/{project_uid}/{job_uid}/events/{event_id}", "jobs.update_event_log",
     JB + [_p("event_id"), _q("type")], _body("Text", False), _ref("TextEvent")),
    ("post", "/jobs/{project_uid}/{job_uid}/checkpoints", "jobs.add_checkpoint", JB, _body("Meta"),
     _ref("CheckpointEvent")),
    ("post", "/assets/{project_uid}/{job_uid}", "assets.upload", JB + [_q("filename"), _q("format")], _STREAM,
     _ref("GridFSAsset")),
    ("post", "/jobs/{project_uid}/{job_uid}/events/image", "jobs.add_image_log",
     JB + [_q("text", True), _q("flags")], _body("Images"), _ref("ImageEvent")),
    ("put", "/projects/{project_uid}/files", "projects.upload_file", PJ + [_q("path", True), _q("overwrite")],
     _STREAM, {"200": {"description": ""}}),
    ("get", "/projects/{project_uid}/files", "projects.download_file", PJ + [_q("path", True)], None, _BIN),
]


def openapi() -> dict:
    paths: dict[str, dict] = {}
    for method, path, summary, params, body, responses in OPS:
        op = {"summary": summary, "parameters": params, "responses": responses}
        if body:
            op["requestBody"] = body
        paths.setdefault(path, {})[method] = op
    return {"openapi": "3.1.0", "info": {"title": "CryoSPARC v5 API STAND-IN (tests only)", "version": "5.0.3"},
            "paths": paths, "components": {"schemas": {}}}


def _handler(state: StandIn, prefix: str = "/api/cmd"):
    routes = [(m.upper(), re.compile("^" + prefix + re.sub(r"\{[^}]+\}", "([^/]+)", p) + "$"), s)
              for m, p, s, *_ in OPS]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 1 << 16  # one write per response (flushed after each request): no Nagle/delayed-ACK stalls
        disable_nagle_algorithm = True

        def log_message(self, *args):  # quiet
            pass

        def _read(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # httpx streams uploads
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0].strip(), 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, code: int, payload: Any, ctype: str = "application/json") -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            raw = self._read()
            if url.path == prefix + "/openapi.json":
                return self._send(200, openapi())
            match = next(((s, m) for meth, rx, s in routes if meth == self.command and (m := rx.match(url.path))), None)
            if match is None:
                return self._send(404, {"detail": f"no route {self.command} {url.path}"})
            summary, m = match
            if summary not in ("health", "login") and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._send(401, {"detail": "Not authenticated"})
            qs = urllib.parse.parse_qs(url.query)
            query = {k: v[0] for k, v in qs.items()}
            if "slots" in qs and qs["slots"] not in (["all"], ["default"], ["passthrough"]):
                query["slots"] = qs["slots"]
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("application/json"):
                body = json.loads(raw) if raw else None
            elif ctype.startswith("application/x-www-form-urlencoded"):
                body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            else:
                body = raw
            args = [urllib.parse.unquote(g) for g in m.groups()]
            with state.lock:
                state.calls.append((summary, args, query))
                try:
                    res = getattr(state, summary.replace(".", "_"))(args, query, body)
                except Refused as err:
                    return self._send(err.status, {"detail": err.detail})
            if isinstance(res, Raw):
                return self._send(200, bytes(res), "application/octet-stream")
            if isinstance(res, Dataset):
                return self._send(200, b"".join(res.stream()), DSET)
            if res is None:
                return self._send(200, b"", "application/json")
            if hasattr(res, "model_dump"):
                res = res.model_dump(mode="json", by_alias=True)
            return self._send(200, res)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    return Handler


@contextlib.contextmanager
def serve(state: StandIn) -> Iterator[str]:
    """Serve ``state`` on 127.0.0.1 (ephemeral port) in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run(url, *args, project="P1"):
    """``cryolens-cryosparc <job> ...`` against the stand-in at ``url`` (workspace W1)."""
    from cryolens.cryosparc_ext import external

    return external.main(list(args[:1]) + ["--url", url, "--email", EMAIL, "--project", project,
                                           "--workspace", "W1", *args[1:]])


def client(url):
    """The real cryosparc-tools client, logged in to the stand-in."""
    from cryosparc.tools import CryoSPARC

    return CryoSPARC(url, host=None, base_port=None, email=EMAIL, password=PASSWORD)


def same_values(a, b) -> bool:
    """Two dataset columns hold the same values: bytes and dtype for numbers, equality for strings."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and bool((a == b).all())
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()
