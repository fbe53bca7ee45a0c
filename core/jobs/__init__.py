"""The job registry. Each module here registers one job (``select``, later ``rank``, ``identify``,
``pose``, ``filter``, ``cluster``); adapters list and run them through ``get_job``/``run_job``."""
from __future__ import annotations

import importlib

from .base import REGISTRY, Input, JobContext, JobResult, JobSpec, Output, Param, get_job, register, run_job

JOB_MODULES = ("select", "identify", "rank")


def load_all() -> dict[str, JobSpec]:
    for mod in JOB_MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    return REGISTRY


__all__ = ["REGISTRY", "Input", "JobContext", "JobResult", "JobSpec", "Output", "Param", "get_job", "load_all",
           "register", "run_job"]
