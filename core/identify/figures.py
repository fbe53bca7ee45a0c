"""The identify gallery: each class beside its best reference projection, rotated onto it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def gallery_figure(q: torch.Tensor, table: pd.DataFrame, library, es, max_classes: int = 200):
    """Each class (as matched: resampled to the library) beside its best reference, rotated onto it."""
    from ..correlate import rotate_images
    from ..figures import show_image, tile_grid

    n = min(len(table), max_classes)
    pairs_per_row = 4
    rows = (n + pairs_per_row - 1) // pairs_per_row
    fig, axes = tile_grid(max(rows, 1), 2 * pairs_per_row, 1.15, 1.45)
    best = np.argmax(np.where(np.isfinite(es.scores), es.scores, -np.inf), 1)
    for i in range(n):
        r, c = divmod(i, pairs_per_row)
        a_cls, a_ref = axes[r, 2 * c], axes[r, 2 * c + 1]
        show_image(a_cls, q[i], clip=None)
        ref_i = int(es.best_ref[i, best[i]])
        if ref_i >= 0:
            ref = torch.from_numpy(library.references[ref_i].astype(np.float32))
            psi = es.psi[i, best[i]]
            if np.isfinite(psi):  # the NCC angle rotates the class onto the reference: show the inverse
                ref = rotate_images(ref[None], torch.tensor([-float(psi)]))[0, 0]
            show_image(a_ref, ref, clip=None)
        row = table.iloc[i]
        colour = "0.5" if row["identity"] == "unknown" else "C0"
        a_cls.set_title(f"class {int(row['class_id'])}", fontsize=6)
        a_ref.set_title(f"{str(row['match1'])[:18]}\n{row['identity'] if row['identity'] == 'unknown' else ''}"
                        f" p={row['confidence']:.2f}", fontsize=5.5, color=colour)
    fig.suptitle(f"identify: each class (left) and its best library projection (right), {n} of {len(table)}",
                 fontsize=8)
    fig.tight_layout()
    return fig
