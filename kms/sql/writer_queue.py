"""Where SQLite writers wait for their turn: in the kernel, not in SQLite's busy handler.

SQLite's busy handler polls a locked database with sleeps of 1, 2, 5, 10 ... 100 ms, so two writers that
meet (the release batch and the group commit, or two ``--processes`` servers) cost the loser whole
milliseconds after the lock came free, which is where the release latency tail came from. Writers now
queue first: a lock within the process, then ``flock`` on ``DB-writer`` across processes (polled at a
fraction of a millisecond; ``flock`` has no timeout of its own). ``BEGIN IMMEDIATE`` still guards
against writers that do not queue, such as the ``sqlite3`` shell, so this changes waiting, not safety.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kms.errors import StorageError

POLL_SECONDS = 0.0002


class WriterBusy(StorageError):
    """``turn(wait=False)`` found another writer holding the turn (the caller picks another way)."""


class WriterQueue:
    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._fd: int | None = None

    @contextmanager
    def turn(self, *, wait: bool = True) -> Iterator[None]:
        """Hold the database's writer turn (raises ``StorageError`` after ``timeout`` seconds). With
        ``wait=False`` it raises ``WriterBusy`` at once if another writer holds it."""
        deadline = time.monotonic() + self._timeout
        if not self._lock.acquire(timeout=self._timeout if wait else -1, blocking=wait):
            raise self._busy("another writer in this process") if wait else WriterBusy("writer busy")
        try:
            fd = self._open()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        raise WriterBusy("writer busy") from None
                    if time.monotonic() >= deadline:
                        raise self._busy("another process") from None
                    time.sleep(POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def _busy(self, holder: str) -> StorageError:
        return StorageError(
            f"database unavailable: {holder} held the write lock for more than {self._timeout:g} s",
            hint=f"a stuck writer holds {self.path}; check for a hung sovereign process",
        )
