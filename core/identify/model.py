"""The identity model: an embedding encoder with per-mode confidence calibration, and the
embedding of class averages, library references and decoys under it (``core.nn.run_batched``
with the four 90-degree rotations as test-time augmentation)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..artifacts import CHECKPOINT, load_torch, save_torch
from ..errors import CryolensError, InputError
from ..nn.embed import run_batched
from .library import Decoys, Library

MODES = ("embedding", "correlation", "combined")
TASK = "identify"
SHORTLIST = 10  # combined mode: entries passed to NCC at least
FEATURES = ("top_score", "decoy_z", "margin")


@dataclass
class IdentityModel:
    """An embedding encoder plus the per-mode confidence calibration."""

    encoder: torch.nn.Module
    calibration: dict[str, list[float]] = field(default_factory=dict)  # mode -> [bias, w_top, w_z, w_margin]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.encoder.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike, half: bool = True) -> Path:
        """A weights-only checkpoint (format ``cryolens.checkpoint``, task ``identify``)."""
        state = {k: (v.half() if half and v.is_floating_point() else v).cpu()
                 for k, v in self.encoder.state_dict().items()}
        return save_torch(path, CHECKPOINT, {
            "task": TASK, "model_config": dict(self.encoder.config), "model": state,
            "calibration": {m: [float(x) for x in w] for m, w in self.calibration.items()}, "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device="cpu") -> "IdentityModel":
        """Load a model file; ``None``: the default weights shipped with cryolens."""
        from ..nn.encoders import encoder_from_config

        if path is None:
            from ..weights import default_weights

            path = default_weights(TASK)
        ck = load_torch(path, CHECKPOINT)
        if ck.get("task", TASK) != TASK:
            raise InputError(f"this is a {ck.get('task')!r} model, not an identity model", path)
        enc = encoder_from_config(ck["model_config"])
        enc.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
        return cls(enc.to(device).eval(), dict(ck.get("calibration") or {}), dict(ck.get("meta") or {}), str(path))


def embed_images(encoder: torch.nn.Module, images, batch_size: int = 256, tta: bool = True,
                 should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """(N, D) L2-normalised embeddings on the CPU. ``tta``: the mean over the four exact 90-degree
    rotations (the encoder is trained rotation-invariant; this removes what is left)."""
    images = torch.as_tensor(images)
    if not len(images):
        return torch.zeros((0, encoder.config["embed_dim"]))

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        e = sum(encoder(torch.rot90(x, k, (-2, -1))) for k in range(4 if tta else 1))
        return torch.nn.functional.normalize(e.float(), dim=1)

    return run_batched(encoder, images, forward, batch_size, should_stop=should_stop)


def embed_library(library: Library, model: IdentityModel, log: Callable[[str], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Reference embeddings under ``model``: reuses what the library holds for the same model and
    embeds only references added since (all of them for another model). Updates ``library``."""
    if library.references is None:
        raise CryolensError("the library has no entries")
    fp = model.fingerprint()
    have = library.embeddings if (library.embedding_model == fp and library.embeddings is not None) else None
    n_have = 0 if have is None else len(have)
    if n_have < len(library.references):
        if log:
            log(f"embedding {len(library.references) - n_have} library references")
        new = embed_images(model.encoder, torch.from_numpy(library.references[n_have:].astype(np.float32)),
                           should_stop=should_stop).numpy().astype(np.float16)
        library.embeddings = new if have is None else np.concatenate([have, new])
        library.embedding_model = fp
    return library.embeddings


def embed_decoys(decoys: Decoys, model: IdentityModel, log: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """The decoys' embeddings under ``model`` (float32, kept as embedded): those ``decoys`` hold
    when they are this model's, else embedded now and stored in ``decoys``."""
    fp = model.fingerprint()
    if decoys.embeddings is None or decoys.embedding_model != fp:
        if log:
            log(f"embedding {len(decoys.references)} decoy references")
        decoys.embeddings = embed_images(model.encoder, torch.from_numpy(decoys.references.astype(np.float32)),
                                         should_stop=should_stop).numpy()
        decoys.embedding_model = fp
    return decoys.embeddings
