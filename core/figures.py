"""Figures shared by every adapter (PDF for RELION's LogFile nodes, PNG for cryoSPARC): the
headless pyplot every figure module draws with, image tiles and their contrast, the simulation
gallery, and the atomic save."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path


@functools.cache
def pyplot():
    """matplotlib.pyplot on the Agg backend: jobs run without a display and only write files.
    The one place cryolens picks a backend; figure modules get pyplot here, not by importing it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically; the format follows the extension (.pdf, .png)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "pdf", bbox_inches="tight")
    return path


def tile_grid(rows: int, cols: int, tile_w: float, tile_h: float):
    """(figure, axes (rows, cols)) for a grid of image tiles of ``tile_w`` x ``tile_h`` inches,
    every axis hidden (a tile shows it when drawn)."""
    fig, axes = pyplot().subplots(rows, cols, figsize=(cols * tile_w, rows * tile_h), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def show_image(ax, image, clip: tuple[float, float] | None = (1, 99)) -> None:
    """One gray image tile. Contrast spans the ``clip`` percentiles, so a few extreme pixels (a
    hot pixel, a crystalline-ice spot) do not flatten the rest; (0, 1) for an image with NaN or
    inf. ``clip=None``: matplotlib's own min to max."""
    im = np.asarray(image, dtype=np.float32)
    if clip is None:
        ax.imshow(im, cmap="gray")
        return
    lo, hi = np.percentile(im, clip) if np.isfinite(im).all() else (0.0, 1.0)
    ax.imshow(im, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)


def gallery(path: str | os.PathLike, rows: list[tuple], max_cols: int = 10,
            tile_in: float = 1.1) -> Path:
    """A PNG/PDF grid: one row per (title, images (n, h, w), captions or None), first ``max_cols`` each."""
    rows = [r for r in rows if r[1] is not None and len(r[1])]
    cols = max(min(len(r[1]), max_cols) for r in rows)
    fig, axes = tile_grid(len(rows), cols, tile_in, tile_in + 0.35)
    for r, (title, images, captions) in enumerate(rows):
        for c in range(min(len(images), max_cols)):
            show_image(axes[r, c], images[c])
            if captions is not None:
                axes[r, c].set_title(captions[c], fontsize=6)
        axes[r, 0].text(-0.1, 0.5, title, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.12, wspace=0.05, hspace=0.4)
    out = save_figure(fig, path)
    pyplot().close(fig)
    return out
