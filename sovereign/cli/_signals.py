"""Foreground commands that own child processes: SIGTERM and SIGHUP stop them like Ctrl-C does.

Python's default for SIGTERM ends the interpreter without running ``finally`` blocks, so a child
started in its own session (OpenBao, ``serve``) would outlive the command. ``stop_signals_interrupt``
turns SIGTERM/SIGHUP into ``KeyboardInterrupt`` for the duration, so the usual clean-up runs.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
