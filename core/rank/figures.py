"""The rank gallery: every class sorted by score, with the cut."""
from __future__ import annotations

import math

import numpy as np


def gallery_figure(images: np.ndarray, class_ids: np.ndarray, prob: np.ndarray, counts: np.ndarray,
                   resolution: np.ndarray, cut: float, title: str, max_cols: int = 10):
    """All classes sorted by score: tiles captioned with score, particles and resolution, kept ones
    framed green, rejected red, the threshold drawn on the sorted-score curve and between the tiles."""
    from matplotlib.patches import Rectangle

    from ..figures import pyplot, show_image

    plt = pyplot()

    order = np.argsort(-prob, kind="stable")
    k = len(order)
    cols = max(1, min(max_cols, k))
    rows = max(1, math.ceil(k / cols))
    tile = 1.15
    fig = plt.figure(figsize=(cols * tile, 2.0 + rows * (tile + 0.38)))
    top = 1.6 / (2.0 + rows * (tile + 0.38))
    ax = fig.add_axes([0.08, 1 - top + 0.25 * top, 0.9, 0.62 * top])
    ax.plot(np.arange(1, k + 1), prob[order], "o-", ms=3, lw=1, color="0.3")
    ax.axhline(cut, color="C3", ls="--", lw=1.2)
    ax.text(k + 0.5, cut, f" cut {cut:.2f}", color="C3", va="bottom", ha="right", fontsize=7)
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("rank", fontsize=7)
    ax.set_ylabel("score", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)
    grid_h = 1 - top
    cell_w, cell_h = 1.0 / cols, grid_h / rows
    for j, i in enumerate(order):
        r, c = divmod(j, cols)
        a = fig.add_axes([c * cell_w + 0.04 * cell_w, grid_h - (r + 1) * cell_h + 0.26 * cell_h,
                          0.92 * cell_w, 0.7 * cell_h])
        show_image(a, images[i])
        a.set_xticks([]), a.set_yticks([])
        kept = prob[i] >= cut
        for s in a.spines.values():
            s.set_color("C2" if kept else "C3")
            s.set_linewidth(2.0)
        n = counts[i]
        res = resolution[i]
        cap = f"#{class_ids[i]}  {prob[i]:.2f}\n" + ("n=?" if not np.isfinite(n) else f"n={int(n)}") + \
            ("" if np.isnan(res) else ("  res inf" if np.isinf(res) else f"  {res:.1f} A"))
        a.set_title(cap, fontsize=5.5, pad=1.5)
    # the threshold between the last kept and the first rejected tile
    n_kept = int((prob >= cut).sum())
    if 0 < n_kept < k:
        r, c = divmod(n_kept, cols)
        y0, y1 = grid_h - (r + 1) * cell_h, grid_h - r * cell_h
        fig.add_artist(Rectangle((c * cell_w, y0), 0, y1 - y0, transform=fig.transFigure, ec="C3", lw=2.5, ls="--"))
        if c > 0:  # the line continues under the rest of the row above
            fig.add_artist(Rectangle((c * cell_w, y1), 1 - c * cell_w, 0, transform=fig.transFigure, ec="C3",
                                     lw=2.5, ls="--"))
            fig.add_artist(Rectangle((0, y0), c * cell_w, 0, transform=fig.transFigure, ec="C3", lw=2.5, ls="--"))
        else:
            fig.add_artist(Rectangle((0, y1), 1, 0, transform=fig.transFigure, ec="C3", lw=2.5, ls="--"))
    return fig
