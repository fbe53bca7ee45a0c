"""core.figures: one headless backend, image tiles with percentile contrast, the gallery."""
from __future__ import annotations

import numpy as np

from cryolens.core import figures


def test_pyplot_is_headless_and_chosen_once():
    plt = figures.pyplot()
    assert plt is figures.pyplot() and plt.get_backend().lower() == "agg"


def test_tiles_hide_their_axes_and_clip_the_contrast_at_percentiles():
    fig, axes = figures.tile_grid(2, 3, 1.0, 1.2)
    assert axes.shape == (2, 3) and not any(ax.axison for ax in axes.ravel())
    assert tuple(fig.get_size_inches()) == (3.0, 2.4)
    im = np.linspace(0, 1, 400).reshape(20, 20)
    im[0, 0] = 1e6  # one hot pixel does not set the contrast
    figures.show_image(axes[0, 0], im)
    lo, hi = axes[0, 0].images[0].get_clim()
    assert np.isclose(lo, np.percentile(im, 1)) and np.isclose(hi, np.percentile(im, 99)) and hi < 2
    figures.show_image(axes[0, 1], np.full((4, 4), np.nan))  # nothing finite: a fixed (0, 1)
    assert axes[0, 1].images[0].get_clim() == (0.0, 1.0)
    figures.show_image(axes[0, 2], im, clip=None)  # matplotlib's min to max
    assert np.allclose(axes[0, 2].images[0].get_clim(), (im.min(), im.max()))
    figures.pyplot().close(fig)


def test_gallery_writes_one_row_per_non_empty_stack(tmp_path):
    rng = np.random.default_rng(0)
    out = figures.gallery(tmp_path / "g.png", [("a", rng.random((3, 8, 8)), ["1", "2", "3"]), ("none", None, None),
                                               ("b", rng.random((12, 8, 8)), None)], max_cols=5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
