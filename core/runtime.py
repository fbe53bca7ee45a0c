"""Device choice, seeding and the process's rank: every job runs on CUDA when asked/available,
else on the CPU."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import CryolensError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error, not a crash."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CryolensError("--device cuda was asked for but no CUDA GPU is visible "
                                "(check CUDA_VISIBLE_DEVICES and the torch build; use --device cpu)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise CryolensError(f"unknown device {name!r} (use auto, cpu or cuda)")


def seed_everything(seed: int, rank: int = 0) -> np.random.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a numpy Generator for explicit use.
    ``rank``: each process of a torchrun run draws its own streams (seed + 1000 * rank)."""
    seed = seed + 1000 * rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def is_main_process() -> bool:
    """False in the processes of a ``torchrun`` run other than rank 0 (which alone writes results)."""
    return int(os.environ.get("RANK", "0")) == 0


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(asked: int, log=None) -> int:
    """The thread count to use for ``--j``/``--threads``: at least 1, at most the CPUs available
    (more only oversubscribes, and torch cannot start 100000 threads); ``log`` gets a note."""
    cap = available_cpus()
    threads = min(max(1, int(asked)), cap)
    if threads != asked and log is not None:
        log(f"note: {asked} threads asked for, using {threads} (the CPUs available: {cap})")
    torch.set_num_threads(threads)
    return threads
