"""The control plane's clock, injected everywhere time matters (cores never read it themselves)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Aware UTC now."""
    return datetime.now(UTC)


class ManualClock:
    """A settable clock for tests: ``clock()`` returns the current instant, ``advance`` moves it."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class OffsetFileClock:
    """Development only (``serve --dev-clock-file``): system time plus an offset in seconds read from a
    file, re-read when the file changes, so a soak can step the server's clock forward and back while it
    runs. A missing file is offset 0; a file that does not hold a finite number keeps the last good offset
    (``load`` at start-up refuses it instead)."""

    def __init__(self, path: Path, base: Clock = system_clock) -> None:
        self.path = path
        self._base = base
        self._stamp: tuple[int, int] | None = None
        self.offset = 0.0

    def __repr__(self) -> str:
        return f"OffsetFileClock({str(self.path)!r}, offset={self.offset})"

    def load(self) -> OffsetFileClock:
        """Read the file now; raises ``ValueError`` when it exists and holds no finite number."""
        self.offset = read_offset(self.path)
        self._stamp = _stamp(self.path)
        return self

    def __call__(self) -> datetime:
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            with contextlib.suppress(ValueError):
                self.offset = read_offset(self.path)
        return self._base() + timedelta(seconds=self.offset)


def read_offset(path: Path) -> float:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0.0
    except OSError as err:
        raise ValueError(f"cannot read the dev clock file {path}: {err.strerror}") from None
    try:
        value = float(text or "0")
    except ValueError:
        raise ValueError(
            f"the dev clock file {path} must hold an offset in seconds, got {text[:40]!r}"
        ) from None
    if not math.isfinite(value) or abs(value) > 10 * 365 * 86400:
        raise ValueError(f"the dev clock file {path} holds an offset out of range: {text[:40]!r}")
    return value


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
