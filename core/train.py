"""The one training loop: AdamW + cosine schedule, AMP on CUDA, gradient clipping, atomic
versioned checkpoints with exact resume, kNN-retrieval validation with best-model keeping, and
multi-process DDP when launched by ``torchrun`` (gloo on CPU, nccl on CUDA).

Data come from a *batch source*: either a callable ``source(step, rank, world) -> (images, labels)``
(the simulator generates batches on the fly; it should be a pure function of its arguments so
that runs and resumes are reproducible) or a plain iterable of ``(images, labels)``, which is
sharded round-robin across ranks (rank r takes items r, r + world, ...) and fast-forwarded on resume.

Randomness: augmentations get a fresh ``torch.Generator`` seeded from (seed, step, rank) each
step; the global torch/numpy/python RNG states (dropout etc.) are saved per rank in checkpoints.
On CPU, the same seed gives the same weights, and a resumed run the uninterrupted run's weights.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .artifacts import CHECKPOINT, load_torch, save_torch
from .index import EmbeddingIndex, retrieval_metrics
from .nn.embed import run_batched
from .runtime import resolve_device, seed_everything


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-4
    lr_min: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    amp: str = "auto"                 # auto (bf16 if supported else fp16, CUDA only) | bf16 | fp16 | off
    seed: int = 0
    device: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0         # 0: only at the end (and on abort)
    val_every: int = 0                # 0: only at the end (when validation data are given)
    select_metric: str = "top1"       # top1 | top5 | mrr | knn
    log_every: int = 10
    embed_batch: int = 256


@dataclass
class Validation:
    """kNN retrieval validation: queries against a library; without a library, leave-one-out
    retrieval within the query set."""
    images: torch.Tensor
    labels: Any
    library_images: torch.Tensor | None = None
    library_labels: Any = None
    k: int = 5


@dataclass
class TrainResult:
    step: int
    stopped: bool
    best_metric: float | None
    best_step: int | None
    last_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None


# ------------------------------------------------------------------------------------ helpers


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def cosine_lr_lambda(steps: int, lr: float, lr_min: float, warmup: int = 0) -> Callable[[int], float]:
    """Multiplier of ``lr`` at step s: linear warm-up to lr over ``warmup`` steps, then cosine to lr_min."""
    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        t = min(1.0, (s - warmup) / max(1, steps - warmup))
        return (lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t))) / lr
    return f


def step_seed(seed: int, step: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729) % (2**63 - 1)


def _rng_state() -> dict[str, Any]:
    st, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"name": st, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Read and check a checkpoint (format ``cryolens.checkpoint``; weights_only: no pickled code runs)."""
    return load_torch(path, CHECKPOINT, map_location)


def load_encoder(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """Rebuild the encoder stored in a checkpoint from its config and load its weights."""
    from .nn.encoders import encoder_from_config
    ck = load_checkpoint(path, map_location)
    model = encoder_from_config(ck["model_config"])
    model.load_state_dict(ck["model"])
    return model.eval()


def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device=None) -> torch.Tensor:
    """Embeddings (N, D) float32 on the CPU, model in eval mode (restored afterwards)."""
    m = unwrap(model)
    return run_batched(m, images, lambda x: m(x).float(), batch_size, device)


def evaluate(model: nn.Module, val: Validation, batch_size: int = 256, device=None) -> dict[str, float]:
    """Retrieval metrics (top1, top5, mrr, knn) of ``model`` on ``val`` (see ``Validation``)."""
    q = embed(model, val.images, batch_size, device)
    qlab = np.asarray(val.labels.cpu() if isinstance(val.labels, torch.Tensor) else val.labels)
    index = EmbeddingIndex(q.shape[1])
    exclude = None
    if val.library_images is None:
        index.add(q, qlab)
        exclude = torch.arange(q.shape[0])
    else:
        lab = val.library_labels
        index.add(embed(model, val.library_images, batch_size, device),
                  np.asarray(lab.cpu() if isinstance(lab, torch.Tensor) else lab))
    _, idx = index.search(q, max(5, val.k), exclude=exclude)
    return retrieval_metrics(index.neighbour_labels(idx), qlab, val.k)


# -------------------------------------------------------------------------------- distributed


@dataclass
class _Processes:
    """This process's place in the run: rank and world size (1 without torchrun), its device, and
    whether it initialised the process group (then it also tears it down)."""
    rank: int
    world: int
    device: torch.device
    own_group: bool

    @classmethod
    def join(cls, device_name: str) -> "_Processes":
        """Initialise the process group when torchrun set WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU);
        each CUDA rank takes the GPU of its LOCAL_RANK."""
        device = resolve_device(device_name)
        if dist.is_available() and dist.is_initialized():
            rank, world, own = dist.get_rank(), dist.get_world_size(), False
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            rank, world, own = dist.get_rank(), dist.get_world_size(), True
        else:
            rank, world, own = 0, 1, False
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count()))))
            torch.cuda.set_device(device)
        return cls(rank, world, device, own)

    def any_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop request reaches all ranks)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a collective: every rank must call it)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def leave(self) -> None:
        if self.world > 1:
            dist.barrier()
        if self.own_group:
            dist.destroy_process_group()


class _Source:
    def __init__(self, source, rank: int, world: int, start: int):
        self.fn = source if callable(source) and not hasattr(source, "__iter__") else None
        if self.fn is None:
            it = iter(source)
            self.it = itertools.islice(it, rank + start * world, None, world)
        self.rank, self.world = rank, world

    def get(self, step: int):
        if self.fn is not None:
            return self.fn(step, self.rank, self.world)
        try:
            return next(self.it)
        except StopIteration:
            return None


# ------------------------------------------------------------------------------- optimisation


class _Optimiser:
    """AdamW with the cosine schedule, mixed precision on CUDA (bf16 where supported, else fp16
    with a gradient scaler) and gradient clipping: one ``step`` is one update."""

    def __init__(self, base: nn.Module, config: TrainConfig, device: torch.device):
        self.base, self.grad_clip = base, config.grad_clip
        self.opt = torch.optim.AdamW(base.parameters(), lr=config.lr, betas=tuple(config.betas),
                                     weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, cosine_lr_lambda(config.steps, config.lr, config.lr_min, config.warmup_steps))
        self.amp_dtype = None
        if device.type == "cuda" and config.amp != "off":
            fp16 = config.amp == "fp16" or (config.amp == "auto" and not torch.cuda.is_bf16_supported())
            self.amp_dtype = torch.float16 if fp16 else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.device = device

    def step(self, net: nn.Module, loss_fn, images: torch.Tensor, labels: torch.Tensor):
        """(loss, gradient norm before clipping or None, learning rate of this step)."""
        autocast = torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None) \
            if self.device.type == "cuda" else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(net(images).float(), labels)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        gnorm = None
        if self.grad_clip:
            self.scaler.unscale_(self.opt)
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.base.parameters(), self.grad_clip))
        self.scaler.step(self.opt)
        self.scaler.update()
        lr = self.sched.get_last_lr()[0]
        self.sched.step()
        return loss, gnorm, lr

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def load_state(self, ck: dict[str, Any]) -> None:
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])


# -------------------------------------------------------------------------------- checkpoints


class _Checkpoints:
    """``last.pt`` (everything a resume needs, the RNG states of every rank) and ``best.pt`` (the
    weights at the best validation) in ``directory``; rank 0 writes, through ``core.artifacts``."""

    def __init__(self, directory: str | None, base: nn.Module, config: TrainConfig, optimiser: _Optimiser,
                 procs: _Processes):
        self.dir = Path(directory) if directory else None
        self.base, self.config, self.optimiser, self.procs = base, config, optimiser, procs
        self.model_config = getattr(base, "config", None)

    def resume_path(self, resume: str | os.PathLike | bool | None) -> Path | None:
        """``True``: ``last.pt`` when there is one; a path: that checkpoint."""
        if resume is True:
            return self.dir / "last.pt" if self.dir is not None and (self.dir / "last.pt").exists() else None
        return Path(resume) if resume else None

    def restore(self, path: Path) -> tuple[int, float | None, int | None]:
        """Load weights, optimiser and RNG states from ``path``: (step, best metric, best step).
        Resumed by a different number of ranks, the RNGs are seeded afresh from (seed, step)."""
        ck = load_checkpoint(path, map_location=self.procs.device)
        self.base.load_state_dict(ck["model"])
        self.optimiser.load_state(ck)
        start = int(ck["step"])
        rngs = ck.get("rng") or []
        if len(rngs) == self.procs.world:
            _set_rng_state(rngs[self.procs.rank])
        else:
            seed_everything(self.config.seed + start, self.procs.rank)
        return start, ck.get("best_metric"), ck.get("best_step")

    def best_path(self) -> Path | None:
        return self.dir / "best.pt" if self.dir is not None and (self.dir / "best.pt").exists() else None

    def write_last(self, step: int, result: TrainResult) -> Path | None:
        """``last.pt``; a collective (every rank's RNG state is gathered), written by rank 0."""
        rng = self.procs.gather(_rng_state())
        if self.dir is None or self.procs.rank != 0:
            return None
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}
        return save_torch(self.dir / "last.pt", CHECKPOINT, {
            "model_config": self.model_config, "model": self.base.state_dict(), **self.optimiser.state(),
            "step": step, "best_metric": result.best_metric, "best_step": result.best_step,
            "train_config": cfg, "rng": rng, "world_size": self.procs.world})

    def write_best(self, step: int, metrics: dict[str, float], value: float) -> Path | None:
        """``best.pt``; rank 0 alone calls it (no collective: the other ranks don't validate)."""
        if self.dir is None:
            return None
        return save_torch(self.dir / "best.pt", CHECKPOINT, {
            "model_config": self.model_config, "model": self.base.state_dict(), "step": step,
            "metrics": metrics, "best_metric": value, "best_step": step})


# ---------------------------------------------------------------------------------- the loop


def train(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], source,
          config: TrainConfig, *, augment: Callable | None = None, validation: Validation | None = None,
          on_log: Callable[[dict[str, Any]], None] | None = None, should_stop: Callable[[], bool] | None = None,
          resume: str | os.PathLike | bool | None = None) -> TrainResult:
    """Train ``model`` in place on batches from ``source``; see the module docstring.

    ``augment(images, generator)`` runs on the device before the forward pass. ``resume``: a
    checkpoint path, or True for ``<checkpoint_dir>/last.pt`` when present. Checkpoints (rank 0
    only) go to ``<checkpoint_dir>/last.pt`` and, when validation improves ``select_metric``,
    ``best.pt``. ``should_stop()`` is polled every step (ranks agree: any rank stopping stops all);
    on stop the last checkpoint is written and the result has ``stopped=True``.
    """
    procs = _Processes.join(config.device)
    rank, world, device = procs.rank, procs.world, procs.device
    base = unwrap(model)
    base.to(device)
    optimiser = _Optimiser(base, config, device)
    checkpoints = _Checkpoints(config.checkpoint_dir, base, config, optimiser, procs)

    start, best_metric, best_step = 0, None, None
    resume_path = checkpoints.resume_path(resume)
    if resume_path is not None:
        start, best_metric, best_step = checkpoints.restore(resume_path)
    else:
        seed_everything(config.seed, rank)

    net: nn.Module = base
    if world > 1:
        net = nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)

    batches = _Source(source, rank, world, start)
    result = TrainResult(step=start, stopped=False, best_metric=best_metric, best_step=best_step)
    if best_step is not None:
        result.best_checkpoint = checkpoints.best_path()

    def validate(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if validation is not None and rank == 0:
            metrics = evaluate(base, validation, config.embed_batch, device)
            value = metrics[config.select_metric]
            if result.best_metric is None or value > result.best_metric:
                result.best_metric, result.best_step = value, step
                result.best_checkpoint = checkpoints.write_best(step, metrics, value)
        result.last_metrics = metrics or result.last_metrics
        return metrics

    net.train()
    step = start
    t0 = time.perf_counter()
    while step < config.steps:
        if procs.any_true(bool(should_stop()) if should_stop is not None else False):
            result.stopped = True
            break
        batch = batches.get(step)
        if batch is None:
            break
        images, labels = batch
        images = torch.as_tensor(images).to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device)
        if augment is not None:
            images = augment(images, torch.Generator().manual_seed(step_seed(config.seed, step, rank)))
        loss, gnorm, lr = optimiser.step(net, loss_fn, images, labels)
        step += 1
        result.step = step

        metrics = {}
        last = step == config.steps
        if validation is not None and ((config.val_every and step % config.val_every == 0) or last):
            metrics = validate(step)
        if checkpoints.dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0 and not last:
            result.last_checkpoint = checkpoints.write_last(step, result) or result.last_checkpoint
        if on_log is not None and (step % max(1, config.log_every) == 0 or metrics or last or step == start + 1):
            rec = {"step": step, "loss": float(loss.detach()), "lr": lr, "grad_norm": gnorm,
                   "seconds": time.perf_counter() - t0, "rank": rank, "world": world}
            rec.update(getattr(loss_fn, "last_stats", {}) or {})
            rec.update({f"val_{k}": v for k, v in metrics.items()})
            result.history.append(rec)
            on_log(rec)

    if checkpoints.dir is not None:
        result.last_checkpoint = checkpoints.write_last(step, result) or result.last_checkpoint
    procs.leave()
    return result
