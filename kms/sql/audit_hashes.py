"""Stored subtree hashes for proofs: everything a proof needs in one read, the upper levels remembered.

A proof reads a few dozen perfect-subtree hashes. Asking the database for them one at a time made a
proof at a million entries cost 10-35 ms (one round trip and one statement per hash). Instead the proof's
nodes are named first (``merkle.inclusion_nodes`` / ``consistency_nodes``: which nodes a proof reads
depends only on the sizes), looked up in ``SubtreeCache``, and whatever is missing is read in one
statement per table (``audit_ledger.node_hashes``).

Remembering is safe: a stored subtree hash covers a complete, aligned leaf range of the append-only
ledger, so once written it never changes. The one writer of existing hashes is ``audit_reader.recover``
rebuilding hashes it found missing or wrong, which runs before the server serves, and so before the
server's reader (and its cache) exists; anything that holds a cache across a rebuild must ``clear`` it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from kms.audit.merkle import MapHashStore
from kms.sql.audit_ledger import node_hashes, upper_nodes

HASH_CACHE = 1 << 16  # subtree hashes remembered (~ 10 MB with the dict's own overhead)
WARM_LEVELS = 12  # start-up loads the top 12 levels of the tree (~ 2 x 4,096 hashes at any size)


class SubtreeCache:
    """Stored subtree hashes by (level, index), least recently used out. Thread-safe."""

    def __init__(self, limit: int = HASH_CACHE) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def lookup(
        self, wanted: Iterable[tuple[int, int]]
    ) -> tuple[dict[tuple[int, int], bytes], list[tuple[int, int]]]:
        """(the hashes remembered, the keys that are not)."""
        found: dict[tuple[int, int], bytes] = {}
        missing: list[tuple[int, int]] = []
        with self._lock:
            for key in wanted:
                value = self._seen.get(key)
                if value is None:
                    missing.append(key)
                else:
                    self._seen.move_to_end(key)
                    found[key] = value
        return found, missing

    def remember(self, hashes: Iterable[tuple[tuple[int, int], bytes]]) -> None:
        with self._lock:
            for key, value in hashes:
                self._seen[key] = value
                self._seen.move_to_end(key)
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


def stored_hashes(conn: Connection, cache: SubtreeCache, wanted: Iterable[tuple[int, int]]) -> MapHashStore:
    """A hash store holding ``wanted``: from the cache, the rest read in one go (and then remembered).
    A hash that is not stored is left out, so the proof over it fails with ``ProofInvalid``."""
    found, missing = cache.lookup(wanted)
    if missing:
        fetched = node_hashes(conn, missing)
        cache.remember(fetched.items())
        found.update(fetched)
    return MapHashStore(found)


def warm(conn: Connection, cache: SubtreeCache, size: int) -> int:
    """Load the top ``WARM_LEVELS`` levels of a tree of ``size`` leaves (every proof reads some of them);
    returns how many hashes were loaded."""
    loaded = list(upper_nodes(conn, max(1, size.bit_length() - WARM_LEVELS)))
    cache.remember(loaded)
    return len(loaded)
