"""Progress reporting: a rich bar on a terminal, plain lines when output goes to a file.

RELION appends an External job's stdout to run.out, so there we want a line every few
percent rather than terminal control codes.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Call ``update(done, total)``; ``close()`` at the end. Usable as a context manager."""

    def __init__(self, description: str, stream: TextIO | None = None, force_plain: bool = False,
                 min_interval_s: float = 2.0):
        self.description = description
        self.stream = stream or sys.stdout
        self.plain = force_plain or not getattr(self.stream, "isatty", lambda: False)()
        self.min_interval_s = min_interval_s
        self._bar = None
        self._task = None
        self._last_t = 0.0
        self._last_pct = -1
        self._t0 = time.monotonic()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, done: int, total: int) -> None:
        if self.plain:
            pct = int(100 * done / max(total, 1))
            now = time.monotonic()
            if done >= total or (pct >= self._last_pct + 5 and now - self._last_t >= self.min_interval_s):
                rate = done / max(now - self._t0, 1e-9)
                print(f"{self.description}: {done}/{total} ({pct}%, {rate:.0f}/s)", file=self.stream, flush=True)
                self._last_t, self._last_pct = now, pct
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TimeRemainingColumn

            self._bar = RichProgress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
