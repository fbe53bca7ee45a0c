"""SIGINT and SIGTERM as an exception: the one way a front end learns that Ctrl-C, ``scancel`` or a
queue's time limit ended its run, so that it can record the state (RELION exit file, cryoSPARC
failed), remove its staged outputs and exit with the ExitCode table.

The first signal raises ``Interrupted`` in the main thread (Python runs handlers between bytecodes,
so a long C call finishes first: loops poll ``JobContext.should_stop`` to stay responsive). After
that, and inside ``finishing()``, further signals are only noted: a second Ctrl-C must not cut
short the clean-up that the first one started, nor split the moving of finished outputs.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    raising = False  # handlers installed and no signal seen yet
    received: int | None = None  # the first signal, once one came


_state = _State()


def _handler(signum, frame) -> None:
    if _state.received is None:
        _state.received = signum
    if _state.raising:
        _state.raising = False
        raise Interrupted(signum)


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """Inside, SIGINT/SIGTERM raise ``Interrupted`` once; the earlier handlers come back after.
    Off the main thread (an embedding application's worker) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.raising, _state.received = True, None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _state.raising = False
        for s, h in previous.items():
            signal.signal(s, h)


def finishing() -> None:
    """From here on the run completes or cleans up: a signal is noted, not raised."""
    _state.raising = False


def received() -> int | None:
    """The signal that came during ``raise_on_signals`` (even one only noted), or None."""
    return _state.received
