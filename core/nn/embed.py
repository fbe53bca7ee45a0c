"""The one batched forward pass for inference: class averages, library references and validation
images all go through ``run_batched``; what a caller does per batch (test-time rotations, a
(logit, embedding) pair) is its ``forward``."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


@torch.no_grad()
def run_batched(module: nn.Module, images: torch.Tensor, forward: Callable[[torch.Tensor], object] | None = None,
                batch_size: int = 256, device: torch.device | str | None = None,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                should_stop: Callable[[], bool] | None = None):
    """``forward(batch)`` (default ``module(batch)``) over ``images`` in batches of ``batch_size``
    moved to ``device`` (default: the module's), ``module`` in eval mode (its mode is restored
    afterwards), without gradients. ``prepare(batch)`` runs before the move (a resize on the CPU
    gives the same result whatever the device). Returns the outputs on the CPU, concatenated: a
    tensor, or a tuple of tensors when ``forward`` returns tuples. ``should_stop()`` is polled
    before each batch (``JobAborted``). ``images`` must not be empty (the caller knows the shape
    of an empty output)."""
    forward = module if forward is None else forward
    dev = device or next(module.parameters()).device
    was = module.training
    module.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            if should_stop is not None and should_stop():
                from ..errors import JobAborted

                raise JobAborted()
            x = images[i:i + batch_size]
            y = forward((x if prepare is None else prepare(x)).to(dev))
            out.append(tuple(t.cpu() for t in y) if isinstance(y, tuple) else y.cpu())
    finally:
        module.train(was)
    if out and isinstance(out[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*out))
    return torch.cat(out)
