"""Proofs from the stored ledger read their hashes in a fixed number of queries, whatever the ledger's size.

Before: one SELECT per hash (~2 log2 n round trips; at 1M entries most of a proof's 10-18 ms p99 in
bench_ledger_scale). Now the hashes a proof needs are listed first (a proof asks by position only) and
read in one query per table. The proofs must still verify against the signed roots.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from kms.audit.checkpoint import LocalSigner
from kms.audit.draft import Draft
from kms.audit.entry import Decision, Kind
from kms.audit.errors import ProofInvalid
from kms.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from kms.clock import ManualClock
from kms.sql import open_store
from kms.sql.audit_append import append_entries
from kms.sql.audit_checkpointer import checkpoint_now
from kms.sql.audit_ledger import audit_nodes
from kms.sql.audit_reader import LedgerReader
from kms.sql.store import Store

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
SIGNER = LocalSigner(key_id="sovereign-audit")
SIZES = (1000, 1337)


def _draft(i: int) -> Draft:
    return Draft(Kind.RELEASE_GRANT, "node:n-1", Decision.GRANT, (), {"node_id": "n-1", "count": i})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = open_store(tmp_path / "ledger.sqlite")
    clock = ManualClock(T0)
    done = 0
    for size in SIZES:
        with store.transaction() as conn:
            append_entries(conn, [_draft(i) for i in range(done, size)], clock())
        assert checkpoint_now(store, SIGNER, clock) is not None
        done = size
    return store


@contextmanager
def counted(store: Store) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def _leaf(store: Store, seq: int) -> bytes:
    with store.reader() as conn:
        row = conn.exec_driver_sql(f"SELECT canonical FROM audit_entries WHERE seq = {seq}").one()
    return leaf_hash(bytes(row[0]))


def test_an_inclusion_proof_reads_its_hashes_in_at_most_two_queries(store: Store) -> None:
    reader = LedgerReader(store)
    root = reader.checkpoint().root
    for index in (0, 1, 511, 999, 1000, 1336):
        with counted(store) as seen:
            proof = reader.inclusion(index, 1337)
        hash_reads = [s for s in seen if "audit_entries" in s or "audit_nodes" in s]
        assert len(hash_reads) <= 2, f"{len(hash_reads)} queries for a proof of {len(proof)} hashes"
        verify_inclusion(index, 1337, _leaf(store, index), proof, root)


def test_a_consistency_proof_reads_its_hashes_in_at_most_two_queries(store: Store) -> None:
    reader = LedgerReader(store)
    first, latest = reader.checkpoint(1000), reader.checkpoint()
    with counted(store) as seen:
        proof = reader.consistency(1000, 1337)
    assert len([s for s in seen if "audit_entries" in s or "audit_nodes" in s]) <= 2
    verify_consistency(1000, 1337, first.root, latest.root, proof)


def test_a_missing_stored_hash_is_still_a_proof_error(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute(audit_nodes.delete().where(audit_nodes.c.level == 8))
    with pytest.raises(ProofInvalid, match="no stored subtree hash at level 8"):
        LedgerReader(store).inclusion(3, 1000)
