"""Figures and reports shared by every adapter (PDF for RELION's LogFile nodes, PNG for cryoSPARC)."""
from __future__ import annotations

import os
from pathlib import Path

from .atomic import atomic_path


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically; the format follows the extension (.pdf, .png)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "pdf", bbox_inches="tight")
    return path


def gallery(path: str | os.PathLike, rows: list[tuple], max_cols: int = 10,
            tile_in: float = 1.1) -> Path:
    """A PNG/PDF grid: one row per (title, images (n, h, w), captions or None), first ``max_cols`` each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if r[1] is not None and len(r[1])]
    cols = max(min(len(r[1]), max_cols) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * tile_in, len(rows) * (tile_in + 0.35)), squeeze=False)
    for r, (title, images, captions) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < min(len(images), max_cols):
                im = np.asarray(images[c], dtype=np.float32)
                lo, hi = np.percentile(im, [1, 99])
                ax.imshow(im, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
                if captions is not None:
                    ax.set_title(captions[c], fontsize=6)
        axes[r, 0].text(-0.1, 0.5, title, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.12, wspace=0.05, hspace=0.4)
    out = save_figure(fig, path)
    plt.close(fig)
    return out
