"""A small time-bounded read cache for the release path.

Only for values whose premises every grant checks again inside its writing transaction
(``kms.domain.premises``: node standing, key state, policy version), so a stale entry can delay a refusal until
commit, never cause a wrong grant; and a refusal based on cached values is decided again on fresh reads
before it is reported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V], *, fresh: bool = False) -> V:
        """The cached value, or ``load()`` when absent, expired or ``fresh`` is asked for."""
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now and not fresh:
            return hit[1]
        value = load()  # errors are not cached
        with self._lock:
            if len(self._data) >= self._max:
                self._data.clear()
            self._data[key] = (now + self._ttl, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
