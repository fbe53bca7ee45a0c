"""What a job is: declared inputs, typed parameters, outputs, and a run function.

Adapters are generic over this: a job registered here appears in RELION (External job), in
cryoSPARC (external job) and in the shell without adapter code. A job sees only neutral
objects (ParticleSet, ClassSet, arrays) and a JobContext; it returns a JobResult.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from ..errors import CryolensError, JobAborted
from ..particles import ClassSet, ParticleSet

INPUT_KINDS = ("particles", "classes", "volume", "mask")
OUTPUT_KINDS = ("particles", "classes", "table", "figure", "volume")


@dataclass(frozen=True)
class Param:
    """A typed job parameter (what RELION shows as a param label/value, cryoSPARC as a flag)."""

    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None

    def parse(self, raw: Any) -> Any:
        """Convert a command-line value (or a bare flag: None) and check it; CryolensError if bad."""
        if self.type is bool:
            if raw is None or raw is True:
                return True  # RELION passes an empty value as a bare flag
            text = str(raw).strip().lower()
            if text in ("1", "yes", "true", "y", "on"):
                return True
            if text in ("0", "no", "false", "n", "off", ""):
                return False
            raise CryolensError(f"parameter --{self.name}: expected yes/no, got {raw!r}")
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return self.default
        try:
            value = self.type(raw)
        except (TypeError, ValueError):
            raise CryolensError(f"parameter --{self.name}: expected {self.type.__name__}, got {raw!r}") from None
        if isinstance(value, float) and math.isnan(value):
            raise CryolensError(f"parameter --{self.name}: NaN is not allowed")
        if self.choices is not None and value not in self.choices:
            raise CryolensError(f"parameter --{self.name}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise CryolensError(f"parameter --{self.name}: {value} is outside [{self.min}, {self.max}]")
        return value


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
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CryolensError(f"job {self.name}: unknown parameter(s) {', '.join('--' + u for u in unknown)} "
                                f"(known: {', '.join('--' + k for k in sorted(known))})")
        return {p.name: p.parse(raw[p.name]) if p.name in raw else p.default for p in self.params}

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        for inp in self.inputs:
            if inp.required and inputs.get(inp.name) is None:
                raise CryolensError(f"job {self.name} needs input '{inp.name}' ({inp.help})")
        if self.one_of and not any(inputs.get(n) is not None for n in self.one_of):
            raise CryolensError(f"job {self.name} needs one of: {', '.join(self.one_of)}")


REGISTRY: dict[str, JobSpec] = {}


def register(spec: JobSpec) -> JobSpec:
    for o in spec.outputs:
        assert o.kind in OUTPUT_KINDS, o
    for i in spec.inputs:
        assert i.kind in INPUT_KINDS, i
    REGISTRY[spec.name] = spec
    return spec


def get_job(name: str) -> JobSpec:
    from . import load_all

    load_all()
    if name not in REGISTRY:
        raise CryolensError(f"unknown job {name!r} (available: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def run_job(spec: JobSpec, inputs: dict[str, Any], raw_params: dict[str, Any], ctx: JobContext) -> JobResult:
    """Validate and run a job: the one entry point all adapters use."""
    params = spec.parse_params(raw_params)
    spec.check_inputs(inputs)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return spec.run(inputs, params, ctx)


# -- command-line flags for job parameters (shared by the shell, RELION and cryoSPARC entries) -------
_DEST = "param__"


def add_param_arguments(parser, spec: JobSpec) -> None:
    """``--<param> [value]`` for every parameter. RELION passes an empty value as a bare flag, so
    the value is optional; a flag that is not given stays out of the namespace (default applies)."""
    import argparse

    taken = {a.dest for a in parser._actions}
    for prm in spec.params:
        if prm.name in taken:
            raise AssertionError(f"job {spec.name}: parameter --{prm.name} clashes with an adapter option")
        parser.add_argument(f"--{prm.name}", dest=_DEST + prm.name, nargs="?", const=None,
                            default=argparse.SUPPRESS, help=f"{prm.help} (default {prm.default!r})")


def given_params(namespace) -> dict[str, Any]:
    """The raw values of the parameter flags that were given (for ``JobSpec.parse_params``)."""
    return {k[len(_DEST):]: v for k, v in vars(namespace).items() if k.startswith(_DEST)}


def describe_params(spec: JobSpec) -> list[str]:
    return [f"    --{p.name} ({p.type.__name__}, default {p.default!r}): {p.help}" for p in spec.params]
