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
