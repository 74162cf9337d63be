"""The ledger export reads in bounded batches: on PostgreSQL (whose driver buffers each statement's whole
result client-side) no statement of ``LedgerReader.export`` returns more than its batch of rows, for
the checkpoints as for the entries, however many the ledger holds; and the export file written from
PostgreSQL is byte-identical to the one written from SQLite for the same entries and checkpoints."""

from __future__ import annotations

import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from kms.audit.checkpoint import Checkpoint, LocalSigner, load_audit_keys
from kms.audit.draft import Draft
from kms.audit.entry import Decision, Kind
from kms.audit.export import read_lines, write_items
from kms.audit.verify import verify_export
from kms.clock import ManualClock
from kms.sql import audit_reader, open_store
from kms.sql.audit_append import append_entries
from kms.sql.audit_checkpointer import checkpoint_now
from kms.sql.audit_ledger import checkpoints_between, entries_range
from kms.sql.audit_reader import LedgerReader
from kms.sql.store import Store

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
SIGNER = LocalSigner(key_id="sovereign-audit")
CHECKPOINTS = 40  # more than a few batches of checkpoints at BATCH
PER_CHECKPOINT = 3
BATCH = 8


def fill(store: Store) -> None:
    """CHECKPOINTS x PER_CHECKPOINT entries with a signed checkpoint after every PER_CHECKPOINT of them;
    the clock makes every entry and checkpoint the same bytes on any backend."""
    clock = ManualClock(T0)
    for c in range(CHECKPOINTS):
        drafts = [
            Draft(Kind.RELEASE_GRANT, "node:n-1", Decision.GRANT, (), {"node_id": "n-1", "count": i})
            for i in range(c * PER_CHECKPOINT, (c + 1) * PER_CHECKPOINT)
        ]
        with store.transaction() as conn:
            append_entries(conn, drafts, clock())
        clock.advance(1)
        assert checkpoint_now(store, SIGNER, clock) is not None


def export_bytes(reader: LedgerReader, start: int, end: int) -> bytes:
    def items() -> Any:
        for item in reader.export(start, end):
            yield item if isinstance(item, Checkpoint) else item.canonical

    out = io.BytesIO()
    with tempfile.TemporaryFile() as spool:
        write_items(out, items(), spool)
    return out.getvalue()


def expected_items(store: Store, start: int, end: int) -> list[bytes | Checkpoint]:
    """The export's order, from the unbatched reads: each checkpoint after the entry completing it."""
    with store.reader() as conn:
        cps = {cp.size: cp for cp in checkpoints_between(conn, start, end)}
        out: list[bytes | Checkpoint] = []
        for stored in entries_range(conn, start, end):
            out.append(stored.canonical)
            if stored.seq + 1 in cps:
                out.append(cps[stored.seq + 1])
    return out


@pytest.fixture
def stores(tmp_path: Path, postgres_url: str) -> Any:
    sqlite, postgresql = open_store(tmp_path / "ledger.sqlite"), open_store(postgres_url)
    fill(sqlite)
    fill(postgresql)
    yield sqlite, postgresql
    sqlite.close()
    postgresql.close()


def test_postgresql_export_reads_bounded_batches_and_equals_sqlite_byte_for_byte(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite, postgresql = stores
    monkeypatch.setattr(audit_reader, "EXPORT_BATCH", BATCH)
    monkeypatch.setattr(audit_reader, "CHECKPOINT_BATCH", BATCH)
    selects: list[tuple[str, int]] = []

    def record(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append((statement, cursor.rowcount))  # psycopg: the rows it holds for the statement

    event.listen(postgresql.engine, "after_cursor_execute", record)
    try:
        from_pg = export_bytes(LedgerReader(postgresql), 0, 0)
    finally:
        event.remove(postgresql.engine, "after_cursor_execute", record)
    entries = CHECKPOINTS * PER_CHECKPOINT
    ledger_reads = [(s, n) for s, n in selects if "audit_entries" in s or "audit_checkpoints" in s]
    assert max(n for _, n in ledger_reads) <= BATCH, ledger_reads
    checkpoint_rows = sum(n for s, n in ledger_reads if "audit_checkpoints" in s)
    entry_rows = sum(n for s, n in ledger_reads if "audit_entries" in s)
    assert checkpoint_rows >= CHECKPOINTS and entry_rows == entries  # all of it came through those batches

    from_sqlite = export_bytes(LedgerReader(sqlite), 0, 0)
    assert from_pg == from_sqlite
    keys = load_audit_keys(SIGNER.public_key_bytes())
    assert verify_export(read_lines(io.BytesIO(from_pg)), keys).entries == entries


@pytest.mark.parametrize("start,end", [(0, 3), (5, 60), (9, 9 * PER_CHECKPOINT * 4), (0, 0)])
def test_a_batched_export_of_any_range_has_every_entry_and_checkpoint_in_order(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch, start: int, end: int
) -> None:
    monkeypatch.setattr(audit_reader, "EXPORT_BATCH", BATCH)
    monkeypatch.setattr(audit_reader, "CHECKPOINT_BATCH", BATCH)
    for store in stores:
        last = end or CHECKPOINTS * PER_CHECKPOINT
        got = [
            item if isinstance(item, Checkpoint) else item.canonical
            for item in LedgerReader(store).export(start, end)
        ]
        assert got == expected_items(store, start, last)
        assert isinstance(got[-1], Checkpoint) and got[-1].size == last
