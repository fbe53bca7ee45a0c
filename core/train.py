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

from .atomic import atomic_path
from .errors import InputError
from .index import EmbeddingIndex, retrieval_metrics
from .runtime import resolve_device

CHECKPOINT_FORMAT = "cryolens.checkpoint"
CHECKPOINT_VERSION = 1


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


def _seed_rank(seed: int, rank: int) -> None:
    s = seed + 1000 * rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Read and check a checkpoint (weights_only: no pickled code runs)."""
    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint not found", path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise InputError(f"cannot read checkpoint ({type(err).__name__}: {err})", path) from err
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a cryolens checkpoint", path)
    if ck.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"checkpoint format version {ck.get('version')!r} is not supported "
                         f"(this cryolens reads version {CHECKPOINT_VERSION})", path)
    return ck


def load_encoder(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """Rebuild the encoder stored in a checkpoint from its config and load its weights."""
    from .nn.encoders import encoder_from_config
    ck = load_checkpoint(path, map_location)
    model = encoder_from_config(ck["model_config"])
    model.load_state_dict(ck["model"])
    return model.eval()


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device=None) -> torch.Tensor:
    """Embeddings (N, D) float32 on the CPU, model in eval mode (restored afterwards)."""
    m = unwrap(model)
    was = m.training
    m.eval()
    dev = device or next(m.parameters()).device
    out = [m(images[i:i + batch_size].to(dev)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    m.train(was)
    return torch.cat(out, 0)


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


def _setup_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world, we_initialised). Initialises the process group when torchrun set WORLD_SIZE > 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


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
    device = resolve_device(config.device)
    rank, world, own_pg = _setup_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count()))))
        torch.cuda.set_device(device)
    base = unwrap(model)
    config_dict = getattr(base, "config", None)
    base.to(device)

    ckdir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    resume_path: Path | None = None
    if resume is True:
        if ckdir is not None and (ckdir / "last.pt").exists():
            resume_path = ckdir / "last.pt"
    elif resume:
        resume_path = Path(resume)

    opt = torch.optim.AdamW(base.parameters(), lr=config.lr, betas=tuple(config.betas),
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_lr_lambda(config.steps, config.lr, config.lr_min, config.warmup_steps))

    amp_dtype = None
    if device.type == "cuda" and config.amp != "off":
        if config.amp == "fp16" or (config.amp == "auto" and not torch.cuda.is_bf16_supported()):
            amp_dtype = torch.float16
        else:
            amp_dtype = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start, best_metric, best_step = 0, None, None
    if resume_path is not None:
        ck = load_checkpoint(resume_path, map_location=device)
        base.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start = int(ck["step"])
        best_metric, best_step = ck.get("best_metric"), ck.get("best_step")
        rngs = ck.get("rng") or []
        if len(rngs) == world:
            _set_rng_state(rngs[rank])
        else:
            _seed_rank(config.seed + start, rank)
    else:
        _seed_rank(config.seed, rank)

    net: nn.Module = base
    if world > 1:
        net = nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)

    batches = _Source(source, rank, world, start)
    result = TrainResult(step=start, stopped=False, best_metric=best_metric, best_step=best_step)
    if ckdir is not None and (ckdir / "best.pt").exists() and best_step is not None:
        result.best_checkpoint = ckdir / "best.pt"

    def save(name: str, step: int) -> Path | None:
        rng = _rng_state()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        if ckdir is None or rank != 0:
            return None
        ck = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_config": config_dict,
              "model": base.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
              "scaler": scaler.state_dict() if scaler.is_enabled() else None, "step": step,
              "best_metric": result.best_metric, "best_step": result.best_step,
              "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
              "rng": rng_all, "world_size": world}
        path = ckdir / name
        with atomic_path(path) as tmp:
            torch.save(ck, tmp)
        return path

    def validate(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if validation is not None and rank == 0:
            metrics = evaluate(base, validation, config.embed_batch, device)
            value = metrics[config.select_metric]
            if result.best_metric is None or value > result.best_metric:
                result.best_metric, result.best_step = value, step
                p = None
                if ckdir is not None:
                    # best.pt: rank 0 writes it directly (no collective: the other ranks don't validate)
                    ck = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_config": config_dict,
                          "model": base.state_dict(), "step": step, "metrics": metrics,
                          "best_metric": value, "best_step": step}
                    p = ckdir / "best.pt"
                    with atomic_path(p) as tmp:
                        torch.save(ck, tmp)
                result.best_checkpoint = p
        result.last_metrics = metrics or result.last_metrics
        return metrics

    net.train()
    step = start
    t0 = time.perf_counter()
    while step < config.steps:
        stop = bool(should_stop()) if should_stop is not None else False
        if world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        if stop:
            result.stopped = True
            break
        batch = batches.get(step)
        if batch is None:
            break
        images, labels = batch
        images = torch.as_tensor(images).to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device)
        if augment is not None:
            g = torch.Generator().manual_seed(step_seed(config.seed, step, rank))
            images = augment(images, g)
        with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None) if device.type == "cuda" \
                else _nullcontext():
            emb = net(images)
            loss = loss_fn(emb.float(), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        gnorm = None
        if config.grad_clip:
            scaler.unscale_(opt)
            gnorm = float(torch.nn.utils.clip_grad_norm_(base.parameters(), config.grad_clip))
        scaler.step(opt)
        scaler.update()
        lr = sched.get_last_lr()[0]
        sched.step()
        step += 1
        result.step = step

        metrics = {}
        last = step == config.steps
        if validation is not None and ((config.val_every and step % config.val_every == 0) or last):
            metrics = validate(step)
        if ckdir is not None and config.checkpoint_every and step % config.checkpoint_every == 0 and not last:
            result.last_checkpoint = save("last.pt", step) or result.last_checkpoint
        if on_log is not None and (step % max(1, config.log_every) == 0 or metrics or last or step == start + 1):
            rec = {"step": step, "loss": float(loss.detach()), "lr": lr, "grad_norm": gnorm,
                   "seconds": time.perf_counter() - t0, "rank": rank, "world": world}
            rec.update(getattr(loss_fn, "last_stats", {}) or {})
            rec.update({f"val_{k}": v for k, v in metrics.items()})
            result.history.append(rec)
            on_log(rec)

    if ckdir is not None:
        result.last_checkpoint = save("last.pt", step) or result.last_checkpoint
    if world > 1:
        dist.barrier()
    if own_pg:
        dist.destroy_process_group()
    return result


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
