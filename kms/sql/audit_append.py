"""The storage-backed appender: entries join the caller's write transaction.

``append_entries(conn, drafts, now)`` assigns the next sequence numbers, encodes each entry (RFC 8785),
hashes it into the tree and writes, in the caller's transaction: the entries (canonical bytes, leaf hash,
filter columns), every perfect-subtree hash the append completes, and the new head (size + compact
range). The head row is read with the write lock held (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR
UPDATE), so concurrent transactions and processes serialise on it and sequence numbers are gap-free;
a rolled-back transaction takes its entries, nodes and head with it, so a crash (kill -9) at any point
leaves the last committed ledger: no torn entry, no gap, tree and entries in step.

Durability costs nothing extra: a release batch appends its grants inside its own commit, and
everything else goes through the group commit (``AuditLedger.record``), one fsync per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from kms.audit.draft import Draft, operator_draft
from kms.audit.entry import Decision, Entry, Kind, Reason, format_time
from kms.audit.errors import AuditError
from kms.audit.merkle import CompactRange, leaf_hash
from kms.clock import Clock
from kms.errors import Code
from kms.sql.audit_ledger import Head, insert_entries, insert_nodes, read_head, write_head
from kms.sql.group_commit import GroupCommit
from kms.sql.store import Store


def _row(entry: Entry, data: bytes, leaf: bytes) -> dict[str, Any]:
    f = entry.fields
    node_id, key_name, bao = f.get("node_id"), f.get("key_name"), f.get("bao_request_id")
    return {
        "seq": entry.seq,
        "time": entry.time,
        "kind": str(entry.kind),
        "decision": str(entry.decision),
        "node_id": node_id if isinstance(node_id, str) else None,
        "key_name": key_name if isinstance(key_name, str) else None,
        "reason_codes": " " + " ".join(r.code for r in entry.reasons) + " ",
        "bao_request_id": bao if isinstance(bao, str) and bao else None,
        "canonical": data,
        "leaf_hash": leaf,
    }


def append_entries(conn: Connection, drafts: Sequence[Draft], now: datetime) -> list[int]:
    """Append ``drafts`` in order inside the caller's transaction; returns their sequence numbers."""
    if not drafts:
        return []
    head = read_head(conn, for_update=True)
    tree = CompactRange(head.size, head.frontier)
    when = format_time(now)
    rows: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for draft in drafts:
        seq = tree.size
        entry = Entry(seq, when, Kind(draft.kind), draft.actor, Decision(draft.decision), draft.reasons,
                      {k: tuple(v) if isinstance(v, list) else v for k, v in draft.fields.items()})  # fmt: skip
        data = entry.encode()
        leaf = leaf_hash(data)
        rows.append(_row(entry, data, leaf))
        nodes.extend({"level": lv, "idx": ix, "hash": h} for lv, ix, h in tree.append(leaf) if lv > 0)
    insert_entries(conn, rows)
    insert_nodes(conn, nodes)
    write_head(conn, Head(tree.size, tree.hashes))
    return [r["seq"] for r in rows]


class AuditLedger:
    """Appends entries: in a caller's transaction (``append``) or group-committed (``record``)."""

    def __init__(self, store: Store, commit: GroupCommit, clock: Clock) -> None:
        self.store = store
        self._commit = commit
        self._clock = clock

    def append(self, conn: Connection, drafts: Sequence[Draft]) -> list[int]:
        """Inside the caller's write transaction (durable with the caller's commit)."""
        return append_entries(conn, drafts, self._clock())

    def record_future(self, drafts: Sequence[Draft]) -> Future[list[int]]:
        """Group-committed with whatever else is committing; resolves once durable."""
        return self._commit.submit(lambda conn: append_entries(conn, drafts, self._clock()))

    def record(self, *drafts: Draft) -> list[int]:
        """Durably append; returns the sequence numbers (blocks until the shared commit)."""
        result = self.record_future(drafts).result(timeout=30)
        if isinstance(result, BaseException):  # pragma: no cover - futures raise, never return errors
            raise result
        return result

    def record_operator_action(
        self,
        actor_fields: Mapping[str, Any],
        kind: Kind | str,
        fields: Mapping[str, Any],
        decision: Decision | str = Decision.NONE,
        reasons: Sequence[Reason] = (),
    ) -> int:
        """The hook for operator authentication: one operator action, durable before it returns."""
        draft = operator_draft(actor_fields, Kind(kind), fields, Decision(decision), reasons)
        return self.record(draft)[0]


def ledger_corrupt(message: str) -> AuditError:
    return AuditError(message, code=Code.AUDIT_LEDGER_CORRUPT)
