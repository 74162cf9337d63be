"""Unwrap and record, batched: the durable heart of a key release.

Concurrent releases that passed every check are gathered on the event loop
(``kms.batching.LoopBatcher``): one OpenBao transit ``batch_input`` decrypt for all of them, then one
database transaction that reads everything each grant rests on afresh, checks it again with
``kms.domain.premises.check_premises`` (``commit_grants``), appends the grants that still stand and commits
once. Only then do callers get their plaintext keys, to seal them. A grant refused in that transaction
comes after its key was unwrapped: the refusal is recorded as a denial carrying the OpenBao request id
in the same transaction, so OpenBao's audit log still reconciles with the ledger. All items of a batch
share the OpenBao request id of the one batch decrypt; each grant or deny entry records it with the
item's batch index and the batch size (``sovereign audit reconcile`` counts them). Grants and denials
are audit ledger entries appended inside the batch's one commit: durable before any reply, one fsync
per batch. Refusals decided before any decrypt are group-committed (``GrantLedger.deny``). If the batch's
transaction fails after its decrypt, every decrypted item still gets a denial naming its OpenBao request,
written as soon as the database takes it (``kms.usecases.unrecorded``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from attestation.coded import Reason
from kms.batching import LoopBatcher
from kms.clock import Clock
from kms.domain.catalogue import DATA_KEY_BYTES
from kms.domain.premises import Grant, Snapshot, check_premises
from kms.domain.transit import Transit, Unwrapped
from kms.errors import Code, KmsError, OpenBaoError, reason_for
from kms.sql import Connection
from kms.sql.decisions import (
    DenialRow,
    GrantRow,
    PendingGrant,
    insert_denial,
    insert_grants,
    purge_request_ids,
    read_standing,
)
from kms.sql.group_commit import GroupCommit
from kms.sql.store import Store
from kms.sql.writer_queue import WriterBusy
from kms.usecases.metrics import Metrics
from kms.usecases.unrecorded import Unrecorded, UnrecordedDecrypts

Recheck = Callable[[Connection], Reason | None]


@dataclass(frozen=True)
class GrantRequest:
    ciphertext: str = field(repr=False)
    pending: PendingGrant  # its row's openbao_request_id is filled in after the decrypt
    # a premise outside check_premises, checked again in the commit transaction (lineage restrictions)
    recheck: Recheck | None = None


@dataclass(frozen=True)
class Granted:
    sequence: int
    plaintext: bytes = field(repr=False)


@dataclass(frozen=True)
class Refused:
    reason: Reason
    audit_sequence: int  # of the release.deny ledger entry


Outcome = Granted | Refused | OpenBaoError
PURGE_EVERY = 1.0  # seconds between purges of expired request ids


def denial_of(row: GrantRow, reason: Reason, openbao_request_id: str | None) -> DenialRow:
    return DenialRow(
        denied_at=row.granted_at,
        node_id=row.node_id,
        key_name=row.key_name,
        purpose=row.purpose,
        request_id=row.request_id,
        code=reason.code,
        message=reason.message,
        openbao_request_id=openbao_request_id,
        bao_batch_index=row.bao_batch_index if openbao_request_id else None,
        bao_batch_size=row.bao_batch_size if openbao_request_id else None,
    )


class GrantLedger:
    def __init__(
        self,
        store: Store,
        transit: Transit,
        commit: GroupCommit,
        clock: Clock,
        *,
        max_batch: int = 128,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._next_purge = 0.0
        self._transit = transit
        self._commit = commit
        self._clock = clock
        # One batch at a time: while a batch is in OpenBao and SQLite the next one fills up; bigger
        # batches cost less CPU per release than overlapping smaller ones (bench.bench_release).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-batch")
        self._batcher: LoopBatcher[GrantRequest, Outcome] = LoopBatcher(
            self._run, name="release", max_batch=max_batch
        )
        self.unrecorded = UnrecordedDecrypts(store)

    async def grant(self, request: GrantRequest) -> Outcome:
        """Unwrap and, if its premises still hold, record the grant (batched with concurrent ones)."""
        return await self._batcher.submit(request)

    async def deny(self, row: DenialRow) -> int:
        """Record a refusal decided before any decrypt (group-committed with others); its sequence."""
        return await asyncio.wrap_future(self._commit.submit(lambda conn: insert_denial(conn, row)))

    def close(self) -> None:
        self._batcher.close()
        self._pool.shutdown(wait=True)
        self.unrecorded.close()

    async def _run(self, requests: Sequence[GrantRequest]) -> list[Outcome]:
        """The decrypt waits on OpenBao in the batch thread. The commit runs right on the event loop
        when SQLite's writer turn is free (about a millisecond of CPU work, and no second thread
        contending for the GIL at every SQLite call); when another writer holds the turn, or on
        PostgreSQL (network round trips), it waits in the batch thread instead."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        unwrapped = await loop.run_in_executor(self._pool, self._unwrap, requests)
        unwrapped_at = time.perf_counter()
        try:
            if self._store.is_sqlite:
                try:
                    return self._record(requests, unwrapped, wait=False)
                except WriterBusy:
                    pass
            return await loop.run_in_executor(self._pool, self._record, requests, unwrapped)
        except Exception as err:
            # keys were decrypted and nothing recorded: the ledger still gets an entry per decrypt
            self.unrecorded.add(not_committed(requests, unwrapped, err))
            raise
        finally:
            if self._metrics is not None:
                self._metrics.release_batch_size.observe(len(requests))
                self._metrics.release_batch_seconds.labels("unwrap").observe(unwrapped_at - started)
                self._metrics.release_batch_seconds.labels("commit").observe(
                    time.perf_counter() - unwrapped_at
                )

    def _unwrap(self, requests: Sequence[GrantRequest]) -> list[Unwrapped | OpenBaoError]:
        return self._transit.unwrap_batch([r.ciphertext for r in requests])

    def _record(
        self,
        requests: Sequence[GrantRequest],
        unwrapped: Sequence[Unwrapped | OpenBaoError],
        *,
        wait: bool = True,
    ) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(requests)
        pending: list[tuple[int, PendingGrant, bytes, Recheck | None]] = []
        refused: list[tuple[int, DenialRow, Reason]] = []
        for index, (request, result) in enumerate(zip(requests, unwrapped, strict=True)):
            if isinstance(result, OpenBaoError):
                outcomes[index] = result
                continue
            item = _with_request_id(request.pending, result, index, len(requests))
            if len(result.plaintext) != DATA_KEY_BYTES:
                bad = reason_for(Code.KMS_BAD_RESPONSE, "the stored key did not unwrap to a 32-byte data key")
                refused.append((index, denial_of(item.row, bad, result.request_id), bad))
            else:
                pending.append((index, item, result.plaintext, request.recheck))
        with self._store.transaction(wait=wait) as conn:
            now = self._clock()
            items, rechecks = [p[1] for p in pending], [p[3] for p in pending]
            results = commit_grants(conn, items, now, rechecks) if pending else []
            if time.monotonic() >= self._next_purge:
                purge_request_ids(conn, now)
                self._next_purge = time.monotonic() + PURGE_EVERY
            for (index, item, plaintext, _), committed in zip(pending, results, strict=True):
                if isinstance(committed, Reason):
                    refused.append(
                        (index, denial_of(item.row, committed, item.row.openbao_request_id), committed)
                    )
                else:
                    outcomes[index] = Granted(committed, plaintext)
            for index, denial, reason in refused:
                outcomes[index] = Refused(reason, insert_denial(conn, denial))
        done = [o for o in outcomes if o is not None]
        assert len(done) == len(requests), "every request gets an outcome"
        return done


def not_committed(
    requests: Sequence[GrantRequest], unwrapped: Sequence[Unwrapped | OpenBaoError], err: Exception
) -> list[Unrecorded]:
    """A denial for every item OpenBao decrypted in a batch whose transaction failed: the commit's error
    is the reason (a failure that is not a coded one is an internal error)."""
    code = Code(err.code) if isinstance(err, KmsError) else Code.INTERNAL_ERROR
    cause = err.message if isinstance(err, KmsError) else type(err).__name__
    reason = reason_for(code, f"the key was decrypted but its grant could not be committed: {cause}"[:1024])
    out: list[Unrecorded] = []
    for index, (request, result) in enumerate(zip(requests, unwrapped, strict=True)):
        if isinstance(result, Unwrapped):
            item = _with_request_id(request.pending, result, index, len(requests))
            out.append(Unrecorded(item, denial_of(item.row, reason, result.request_id)))
    return out


def _with_request_id(pending: PendingGrant, unwrapped: Unwrapped, index: int, size: int) -> PendingGrant:
    row = dataclasses.replace(
        pending.row, openbao_request_id=unwrapped.request_id, bao_batch_index=index, bao_batch_size=size
    )
    return dataclasses.replace(pending, row=row)


def premises_of(pending: PendingGrant) -> Grant:
    row = pending.row
    return Grant(
        node_id=row.node_id,
        lease_id=pending.lease_id,
        key_name=row.key_name,
        key_version=row.key_version,
        purpose=row.purpose,
        policy_version=row.policy_version,
        decided_at=row.granted_at,
    )


def commit_grants(
    conn: Connection,
    items: Sequence[PendingGrant],
    now: datetime,
    rechecks: Sequence[Recheck | None] = (),
) -> list[int | Reason]:
    """In the writing transaction: check every item's premises again on fresh reads (and its recheck,
    if any, on this transaction), record those that still stand; per item its ledger sequence or the
    reason it was refused (a request id twice in one batch: the second is a replay)."""
    more = list(rechecks) or [None] * len(items)
    assert len(more) == len(items), "one recheck (or None) per item"
    standing = read_standing(conn, items)
    seen = set(standing.seen)
    reasons: list[Reason | None] = []
    accepted: list[PendingGrant] = []
    for item, recheck in zip(items, more, strict=True):
        row = item.row
        pair = (row.node_id, row.request_id.hex())
        snapshot = Snapshot(
            standing.nodes.get(row.node_id),
            standing.keys.get(row.key_name),
            standing.policy_version,
            request_seen=pair in seen,
        )
        reason = check_premises(premises_of(item), snapshot)
        if reason is None and recheck is not None:
            reason = recheck(conn)
        if reason is None:
            seen.add(pair)
            accepted.append(item)
        reasons.append(reason)
    sequences = iter(insert_grants(conn, accepted, now))
    return [next(sequences) if reason is None else reason for reason in reasons]
