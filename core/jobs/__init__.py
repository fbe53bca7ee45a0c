"""The job registry. Each module here registers one job (``select``, ``identify``, ``rank``,
``filter``; later ``pose``, ``cluster``); adapters list and run them through ``get_job``/``run_job``.
``base`` says what a job is, ``files`` loads the files a job takes as parameters, ``flags`` puts
the parameters on a command line."""
from __future__ import annotations

import importlib

from .base import (REGISTRY, Input, JobContext, JobParams, JobResult, JobSpec, Output, Param, get_job,
                   prepare_params, register, run_job)

JOB_MODULES = ("select", "identify", "rank", "filter")


def load_all() -> dict[str, JobSpec]:
    for mod in JOB_MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    return REGISTRY


__all__ = ["REGISTRY", "Input", "JobContext", "JobParams", "JobResult", "JobSpec", "Output", "Param", "get_job",
           "load_all", "prepare_params", "register", "run_job"]
