"""Proofs from the stored ledger (``LedgerReader``) on SQLite and PostgreSQL: each is exactly the RFC 9162
proof of an in-memory reference tree, at and around every power-of-two boundary, whether the subtree-hash
cache is cold, warmed at start-up, warmed at a smaller size and reused as the ledger grows, or too small
to hold a proof; each proof reads the database in at most three statements whatever the size; a stored
hash that is missing fails closed; a reader made after a rebuild of the subtree hashes proves the same."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from kms.audit.checkpoint import LocalSigner
from kms.audit.draft import Draft
from kms.audit.entry import Decision, Kind
from kms.audit.errors import AuditError, ProofInvalid
from kms.audit.merkle import (
    MemoryHashStore,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    verify_inclusion,
)
from kms.clock import ManualClock
from kms.sql import open_store
from kms.sql.audit_append import append_entries
from kms.sql.audit_checkpointer import checkpoint_now
from kms.sql.audit_hashes import SubtreeCache
from kms.sql.audit_ledger import entries_range
from kms.sql.audit_reader import LedgerReader, recover
from kms.sql.store import Store

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
SIGNER = LocalSigner(key_id="sovereign-audit")
# checkpoint sizes at and around every power of two up to 128
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129]


def draft(i: int) -> Draft:
    return Draft(Kind.RELEASE_GRANT, "node:n-1", Decision.GRANT, (), {"node_id": "n-1", "count": i})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    target = (
        tmp_path / "ledger.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    opened = open_store(target)
    yield opened
    opened.close()


def grow(store: Store, sizes: list[int], clock: ManualClock) -> None:
    """Append up to each size in turn and sign a checkpoint there."""
    for size in sizes:
        with store.reader() as conn:
            have = sum(1 for _ in entries_range(conn, 0, 1 << 20))
        with store.transaction() as conn:
            append_entries(conn, [draft(i) for i in range(have, size)], clock())
        clock.advance(1)
        assert checkpoint_now(store, SIGNER, clock) is not None


def reference(store: Store) -> MemoryHashStore:
    tree = MemoryHashStore()
    with store.reader() as conn:
        for stored in entries_range(conn, 0, 1 << 20):
            tree.append(leaf_hash(stored.canonical))
    return tree


def assert_proofs_match(reader: LedgerReader, ref: MemoryHashStore, sizes: list[int]) -> None:
    for n in sizes:
        for m in range(n):
            assert reader.inclusion(m, n) == inclusion_proof(ref, m, n), (m, n)
        for m in range(1, n + 1):
            assert reader.consistency(m, n) == consistency_proof(ref, m, n), (m, n)


def test_proofs_equal_the_reference_with_a_cold_a_warm_and_a_tiny_cache(store: Store) -> None:
    grow(store, SIZES, ManualClock(T0))
    ref = reference(store)
    assert_proofs_match(LedgerReader(store), ref, SIZES)
    warmed = LedgerReader(store)
    assert warmed.warm() == 128 - 1  # 129 leaves: every stored node at level >= 1 (64+32+...+1)
    assert_proofs_match(warmed, ref, SIZES)
    assert_proofs_match(LedgerReader(store, SubtreeCache(limit=3)), ref, SIZES)


def test_a_cache_warmed_small_stays_right_as_the_ledger_grows(store: Store) -> None:
    clock = ManualClock(T0)
    grow(store, SIZES[:8], clock)
    reader = LedgerReader(store)
    reader.warm()
    assert_proofs_match(reader, reference(store), SIZES[:8])
    grow(store, SIZES[8:], clock)
    assert_proofs_match(reader, reference(store), SIZES)


def test_a_proof_reads_the_database_in_at_most_three_statements(store: Store) -> None:
    grow(store, [129], ManualClock(T0))
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "audit_" in statement:
            statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        for m in (0, 63, 64, 127, 128):
            statements.clear()
            LedgerReader(store).inclusion(m, 129)  # a cold cache: every hash from the database
            assert len(statements) <= 3, statements  # the checkpoint, the leaves, the nodes
            statements.clear()
            LedgerReader(store).consistency(m + 1, 129)
            assert len(statements) <= 3, statements
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def test_a_missing_stored_hash_fails_closed(store: Store) -> None:
    grow(store, [100], ManualClock(T0))
    level, index = next(k for k in inclusion_nodes(5, 100) if k[0] > 0)
    with store.transaction() as conn:
        conn.execute(text("DELETE FROM audit_nodes WHERE level = :l AND idx = :i"), {"l": level, "i": index})
    with pytest.raises(ProofInvalid) as info:
        LedgerReader(store).inclusion(5, 100)
    assert info.value.code == "AUDIT_PROOF_INVALID"
    with pytest.raises(AuditError) as beyond:
        LedgerReader(store).inclusion(5, 101)
    assert beyond.value.code == "AUDIT_NOT_FOUND"


def test_after_a_rebuild_a_new_warm_reader_proves_the_same(tmp_path: Path) -> None:
    store = open_store(tmp_path / "ledger.sqlite")
    grow(store, [33, 70], ManualClock(T0))
    ref = reference(store)
    db = sqlite3.connect(str(tmp_path / "ledger.sqlite"))
    db.execute("DELETE FROM audit_nodes WHERE level IN (1, 5)")
    db.commit()
    assert recover(store).rebuilt
    reader = LedgerReader(store)
    reader.warm()
    assert_proofs_match(reader, ref, [33, 70])
    root = reader.checkpoint(70).root
    for m in range(70):
        verify_inclusion(m, 70, ref.node(0, m), reader.inclusion(m, 70), root)
    store.close()
