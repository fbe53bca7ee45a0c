"""What a job is: declared inputs, typed parameters, outputs, and a run function.

Adapters are generic over this: a job registered here appears in RELION (External job), in
cryoSPARC (external job) and in the shell without adapter code. A job sees only neutral
objects (ParticleSet, ClassSet, arrays) and a JobContext; it returns a JobResult.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from ..errors import CryolensError, JobAborted
from ..particles import ClassSet, ParticleSet
from .files import FILE_KINDS, load_file

INPUT_KINDS = ("particles", "classes", "volume", "mask")
OUTPUT_KINDS = ("particles", "classes", "table", "figure", "volume")


@dataclass(frozen=True)
class Param:
    """A typed parameter of a job or a command: its range is declared here, once, and ``parse``
    checks it before any work (what RELION shows as a param label/value, cryoSPARC as a flag).

    ``type`` is int, float, str, bool or Path. A Path parameter names a file the job needs
    (``file_kind``, one of ``files.FILE_KINDS``): every adapter loads and checks it before the job
    starts, and the job receives the loaded object. ``min``/``max`` bound numbers (inclusive;
    ``min_exclusive`` makes the lower bound strict, for a pixel size or an SNR); floats must be
    finite unless ``finite`` is false. ``unset`` says, for help texts, what an unset value (None
    or "") means; ``metavar`` overrides the placeholder derived from the type. ``aliases`` are
    older names still accepted (a note in the log says which was read). ``only_with`` says when the
    parameter applies: ``("select", ("threshold",))`` only with select threshold, ``("column", ())``
    only when column is set; otherwise the job's log says it was ignored (``report``).
    An empty yes/no value (RELION passes it as a bare flag) means the default.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    file_kind: str | None = None
    required: bool = False
    unset: str | None = None
    metavar: str | None = None
    min_exclusive: bool = False
    finite: bool = True
    aliases: tuple[str, ...] = ()
    only_with: tuple[str, tuple] | None = None

    def parse(self, raw: Any) -> Any:
        """Convert a command-line value (or a bare flag: None) and check it; CryolensError if bad."""
        if self.type is bool:
            if raw is True:
                return True  # a bare flag in the shell (--gallery)
            text = "" if raw is None else str(raw).strip().lower()
            if text == "":
                return self.default  # RELION passes an empty value as a bare flag: the default, not yes
            if text in ("1", "yes", "true", "y", "on"):
                return True
            if text in ("0", "no", "false", "n", "off"):
                return False
            raise CryolensError(f"parameter {self.flag}: expected yes/no, got {raw!r}")
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return self.default
        if self.type is Path:
            return Path(str(raw).strip())
        try:
            value = self.type(raw)
        except (TypeError, ValueError, OverflowError):
            raise CryolensError(f"parameter {self.flag}: expected {self.type.__name__}, got {raw!r}") from None
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        """The declared choices, finiteness and range; CryolensError naming the parameter."""
        if isinstance(value, float) and not math.isfinite(value) and (self.finite or math.isnan(value)):
            raise CryolensError(f"parameter {self.flag}: expected a finite number, got {value}")
        if self.choices is not None and value not in self.choices:
            raise CryolensError(f"parameter {self.flag}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        low = self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)
        if low or self.max is not None and value > self.max:
            raise CryolensError(f"parameter {self.flag}: {value} is outside {self.range_text()}")

    def range_text(self) -> str:
        """The allowed interval: [0, 1], (0, inf), [1, inf)."""
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"{'(' if self.min is None or self.min_exclusive else '['}{lo}, {hi}{')' if self.max is None else ']'}"

    @property
    def flag(self) -> str:
        """The spelling help texts show (``--top-k``); ``--top_k``, RELION's, is accepted too."""
        return "--" + self.name.replace("_", "-")

    def placeholder(self) -> str:
        """What stands for the value in help texts: PATH, N, X, {a,b,c}, yes|no."""
        if self.metavar:
            return self.metavar
        if self.choices:
            return "{" + ",".join(map(str, self.choices)) + "}"
        return {bool: "yes|no", int: "N", float: "X", Path: "PATH"}.get(self.type, "TEXT")

    def default_text(self) -> str:
        """'required', 'default: 5', 'default: yes', or what an unset value means."""
        if self.required:
            return "required"
        if self.type is bool:
            return f"default: {'yes' if self.default else 'no'}"
        if self.default is None or self.default == "":
            return f"default: {self.unset or 'none'}"
        return f"default: {self.default}"


@dataclass(frozen=True)
class Input:
    name: str
    kind: str  # one of INPUT_KINDS
    help: str
    required: bool = True


@dataclass(frozen=True)
class Output:
    name: str
    kind: str  # one of OUTPUT_KINDS
    help: str
    node: bool = False  # a table the user needs in RELION: declared as a node (per-class: with each class's image)


@dataclass
class JobContext:
    """What a running job may use besides its inputs: where to write, on what, and how to talk."""

    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    threads: int = 1
    progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None
    log: Callable[[str], None] = print

    def check_abort(self) -> None:
        """Call between batches: raises JobAborted when the user asked the job to stop."""
        if self.should_stop is not None and self.should_stop():
            raise JobAborted()

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


@dataclass
class JobResult:
    """Neutral results. Keys are output names declared by the job (a split job may add more
    particle sets than it declared: they share the declared output's kind)."""

    particles: dict[str, ParticleSet] = field(default_factory=dict)
    classes: dict[str, ClassSet] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    # per-class 0/1 selection in ClassSet order (RELION backup_selection.star, cryoSPARC selected)
    class_selection: dict[str, list[int]] = field(default_factory=dict)
    # other files (e.g. a library built from maps): file name -> a function that writes it to the path it
    # is given. Front ends call it inside their staging folder, so the file arrives with the other
    # outputs or, when the job fails, not at all (cryoSPARC: uploaded into the job's folder).
    files: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JobSpec:
    name: str
    summary: str
    inputs: tuple[Input, ...]
    params: tuple[Param, ...]
    outputs: tuple[Output, ...]
    run: Callable[[dict[str, Any], dict[str, Any], JobContext], JobResult]
    # at least one of these inputs must be given (e.g. particles OR classes)
    one_of: tuple[str, ...] = ()

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def parse_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Typed values for every parameter: given ones parsed, the rest defaulted."""
        known = {p.name for p in self.params}
        raw = resolve_aliases(self, raw)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CryolensError(f"job {self.name}: unknown parameter(s) {', '.join('--' + u for u in unknown)} "
                                f"(known: {', '.join('--' + k for k in sorted(known))})")
        values = {p.name: p.parse(raw[p.name]) if p.name in raw else p.default for p in self.params}
        for p in self.params:
            if p.required and values[p.name] in (None, ""):
                raise CryolensError(f"job {self.name} needs {p.flag} ({p.help})")
        return values

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        for inp in self.inputs:
            if inp.required and inputs.get(inp.name) is None:
                raise CryolensError(f"job {self.name} needs input '{inp.name}' ({inp.help})")
        if self.one_of and not any(inputs.get(n) is not None for n in self.one_of):
            raise CryolensError(f"job {self.name} needs one of: {', '.join(self.one_of)}")


def resolve_aliases(spec: JobSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with each old parameter name (``Param.aliases``) under its current name."""
    out = dict(raw)
    for p in spec.params:
        for alias in p.aliases:
            if alias in out:
                if p.name in raw:
                    raise CryolensError(f"job {spec.name}: --{p.name} and its old name --{alias} were both given")
                out[p.name] = out.pop(alias)
    return out


REGISTRY: dict[str, JobSpec] = {}


def register(spec: JobSpec) -> JobSpec:
    for o in spec.outputs:
        assert o.kind in OUTPUT_KINDS, o
    for i in spec.inputs:
        assert i.kind in INPUT_KINDS, i
    names = [n for p in spec.params for n in (p.name, *p.aliases)]
    assert len(names) == len(set(names)), spec.name
    for p in spec.params:
        assert (p.type is Path) == (p.file_kind is not None), p
        assert p.only_with is None or p.only_with[0] in names, p
        assert p.file_kind is None or p.file_kind in FILE_KINDS, p
    REGISTRY[spec.name] = spec
    return spec


def get_job(name: str) -> JobSpec:
    from . import load_all

    load_all()
    if name not in REGISTRY:
        raise CryolensError(f"unknown job {name!r} (available: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


class JobParams(dict):
    """Parameter values ready for ``JobSpec.run``: parsed, checked, and every file loaded;
    ``report``: the lines that say what each parameter is and did (``report.param_report``)."""

    report: list[str] = []


def prepare_params(spec: JobSpec, raw: dict[str, Any], device: torch.device | str = "cpu") -> JobParams:
    """Parse and check the raw flag values, then load each file parameter (the library, a model).
    Adapters call this before reading any input, so a bad value or a missing, unreadable or
    wrong file fails at once, naming the file."""
    from .report import param_report

    params = spec.parse_params(raw)
    report = param_report(spec, raw, params)
    for p in spec.params:
        if p.file_kind is not None:
            params[p.name] = load_file(p, params[p.name], device)
    params = JobParams(params)
    params.report = report
    return params


def run_job(spec: JobSpec, inputs: dict[str, Any], params: dict[str, Any], ctx: JobContext) -> JobResult:
    """Validate and run a job: the one entry point all adapters use. ``params`` are raw flag
    values, or the JobParams an adapter prepared before reading its inputs."""
    if not isinstance(params, JobParams):
        params = prepare_params(spec, params, ctx.device)
    spec.check_inputs(inputs)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    for line in params.report:  # the log's first lines: every parameter, its value, what applied
        ctx.log(line)
    return spec.run(inputs, params, ctx)


# the options every job that works on class-average images shares (identify, rank)
CLASS_AVERAGE_PARAMS = (
    Param("pixel_size", float, None, "pixel size of the class averages in A; given, it overrides the file's "
          "(for a bare stack whose header has none)", min=0.01, unset="from the file"),
    Param("gallery", bool, True, "draw the classes with the job's answer (a PDF; in RELION a LogFile node)"),
)


def with_pixel_size(classes: ClassSet, params: dict[str, Any]) -> ClassSet:
    """The classes with ``--pixel-size`` applied (the same ClassSet when it is not given)."""
    return replace(classes, pixel_size=params["pixel_size"]) if params["pixel_size"] else classes
