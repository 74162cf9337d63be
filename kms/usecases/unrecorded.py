"""Decrypts whose grant was never committed: each is written down as a ``release.deny`` entry.

The release path unwraps a key in OpenBao before the transaction that records the grant
(``kms.usecases.grants``). When that transaction fails (the database's filesystem is full, the writer
turn timed out because the process was stalled, the database went away), no key leaves the process, but
OpenBao's audit log holds a decrypt that no ledger entry explains. ``UnrecordedDecrypts`` appends one
denial per such item, with the commit's error as its reason and the item's OpenBao request id, batch
index and batch size, so ``sovereign audit reconcile`` matches the decrypt. It retries in a thread of its
own until the database takes the entries (a full filesystem is freed, a stall ends).

An item whose request id the database already holds gets no denial: the grant did commit and only its
answer was lost (a PostgreSQL connection dropped during COMMIT). What is still queued when the process
dies is lost; those decrypts stay unmatched, as do those of a process killed between decrypt and commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from kms.sql.decisions import DenialRow, PendingGrant, insert_denial, read_standing
from kms.sql.store import Store

log = logging.getLogger("sovereign.release")

RETRY_EVERY = 0.5  # seconds between attempts while the database refuses the entries
MAX_QUEUED = 10_000  # beyond this many waiting items new ones are dropped (and logged): memory stays bounded


@dataclass(frozen=True)
class Unrecorded:
    pending: PendingGrant  # the grant that was not committed (its request id: did it commit after all?)
    denial: DenialRow  # what to record instead: the commit's error, the OpenBao request id and batch index


class UnrecordedDecrypts:
    def __init__(self, store: Store, *, retry_every: float = RETRY_EVERY, limit: int = MAX_QUEUED) -> None:
        self._store = store
        self._retry_every = retry_every
        self._limit = limit
        self._queued: list[Unrecorded] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.recorded = 0  # denials written so far (for tests and metrics)

    def add(self, items: Sequence[Unrecorded]) -> None:
        """Queue denials for decrypts whose commit failed; the recorder thread writes them."""
        if not items:
            return
        with self._cond:
            room = max(self._limit - len(self._queued), 0)
            if len(items) > room:
                log.error(
                    "%d decrypted keys whose grants failed to commit cannot be queued for the audit ledger "
                    "(%d already wait); OpenBao's audit log will show them unmatched",
                    len(items) - room,
                    len(self._queued),
                )
            self._queued.extend(items[:room])
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="unrecorded-decrypts", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def queued(self) -> int:
        with self._cond:
            return len(self._queued)

    def wait_recorded(self, timeout: float) -> bool:
        """True once nothing waits (within ``timeout`` seconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queued, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after one last attempt at what still waits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queued) or self._closed)
                if not self._queued:
                    return
                batch = list(self._queued)
                last = self._closed
            try:
                written = self._record(batch)
            except Exception as exc:  # the database still refuses: keep the items, try again
                log.warning(
                    "%d denials for decrypted keys whose grants failed to commit are not recorded yet "
                    "(retrying): %s",
                    len(batch),
                    str(exc)[:300],
                )
                if last:
                    return
                with self._cond:
                    self._cond.wait(self._retry_every)  # close() wakes it for the last attempt
                continue
            with self._cond:
                del self._queued[: len(batch)]  # items added meanwhile stay queued
                self.recorded += written
                self._cond.notify_all()

    def _record(self, batch: Sequence[Unrecorded]) -> int:
        with self._store.transaction() as conn:
            committed = read_standing(conn, [u.pending for u in batch]).seen
            todo = [
                u for u in batch if (u.pending.row.node_id, u.pending.row.request_id.hex()) not in committed
            ]
            for u in todo:
                insert_denial(conn, u.denial)
        return len(todo)
