"""SQL for provenance statements and lineage rules: ``model.output`` entries, the entries a lineage
rests on, and the issued statements (``kms.usecases.provenance_issue``, ``kms.usecases.lineage_release``).
SQL only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, MetaData, Table, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from kms.audit.entry import Decision, Kind
from kms.sql.audit_schema import audit_entries
from kms.sql.schema import UtcDateTime

_md = MetaData()
provenance_statements = Table(
    "provenance_statements",
    _md,
    Column("output_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("checkpoint_size", BigInteger, nullable=False),
    Column("key_version", Integer, nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("issued_at", UtcDateTime, nullable=False),
)


@dataclass(frozen=True)
class StoredStatement:
    """An issued statement (DSSE envelope) of the output entry ``output_seq``, proved against the checkpoint
    of size ``checkpoint_size``."""

    output_seq: int
    checkpoint_size: int
    key_version: int
    envelope: bytes
    issued_at: datetime


def stored_statement(conn: Connection, output_seq: int) -> StoredStatement | None:
    row = conn.execute(
        select(provenance_statements).where(provenance_statements.c.output_seq == output_seq)
    ).first()
    if row is None:
        return None
    m = row._mapping
    return StoredStatement(
        int(m["output_seq"]),
        int(m["checkpoint_size"]),
        int(m["key_version"]),
        bytes(m["envelope"]),
        m["issued_at"],
    )


def store_statements(conn: Connection, statements: Sequence[StoredStatement]) -> None:
    """Keep each statement, replacing one stored for the same output (a reissue, or two processes
    issuing the same output at once: the last one stays; either is a valid statement)."""
    if not statements:
        return
    upsert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    query = upsert(provenance_statements)
    query = query.on_conflict_do_update(
        index_elements=[provenance_statements.c.output_seq],
        set_={
            name: query.excluded[name] for name in ("checkpoint_size", "key_version", "envelope", "issued_at")
        },
    )
    conn.execute(
        query,
        [
            {
                "output_seq": s.output_seq,
                "checkpoint_size": s.checkpoint_size,
                "key_version": s.key_version,
                "envelope": s.envelope,
                "issued_at": s.issued_at,
            }
            for s in statements
        ],
    )


def outputs_without_statement(conn: Connection, start: int, below: int, limit: int) -> list[bytes]:
    """Canonical bytes of the granted ``model.output`` entries with ``start <= seq < below`` that have no
    stored statement, oldest first, at most ``limit``."""
    rows = conn.execute(
        select(audit_entries.c.canonical)
        .select_from(
            audit_entries.outerjoin(
                provenance_statements, provenance_statements.c.output_seq == audit_entries.c.seq
            )
        )
        .where(audit_entries.c.seq >= start, audit_entries.c.seq < below)
        .where(audit_entries.c.kind == str(Kind.MODEL_OUTPUT))
        .where(audit_entries.c.decision == str(Decision.GRANT))
        .where(provenance_statements.c.output_seq.is_(None))
        .order_by(audit_entries.c.seq)
        .limit(limit)
    )
    return [bytes(c) for (c,) in rows]


def revoked_between(conn: Connection, node_id: str, start: int, below: int) -> bool:
    """Whether the ledger holds a ``node.revoke`` entry of ``node_id`` with ``start <= seq < below``."""
    row = conn.execute(
        select(audit_entries.c.seq)
        .where(audit_entries.c.node_id == node_id, audit_entries.c.kind == str(Kind.NODE_REVOKE))
        .where(audit_entries.c.seq >= start, audit_entries.c.seq < below)
        .limit(1)
    ).first()
    return row is not None


def recorded_outputs(conn: Connection, *, key_name: str = "") -> list[tuple[int, bytes]]:
    """``(seq, canonical)`` of every granted ``model.output`` entry, newest first; only those sealed with
    ``key_name`` when given."""
    query = (
        select(audit_entries.c.seq, audit_entries.c.canonical)
        .where(audit_entries.c.kind == str(Kind.MODEL_OUTPUT))
        .where(audit_entries.c.decision == str(Decision.GRANT))
    )
    if key_name:
        query = query.where(audit_entries.c.key_name == key_name)
    return [(int(seq), bytes(c)) for seq, c in conn.execute(query.order_by(audit_entries.c.seq.desc()))]


def lineage_entries(conn: Connection, node_ids: set[str], below: int | None = None) -> dict[int, bytes]:
    """``seq -> canonical`` of the nodes' entries and every ``policy.change`` entry (what
    ``kms.provenance.lineage.derive`` reads), below sequence ``below`` when given."""
    query = select(audit_entries.c.seq, audit_entries.c.canonical).where(
        audit_entries.c.node_id.in_(sorted(node_ids)) | (audit_entries.c.kind == str(Kind.POLICY_CHANGE))
    )
    if below is not None:
        query = query.where(audit_entries.c.seq < below)
    return {int(seq): bytes(c) for seq, c in conn.execute(query)}


def lineage_exception_groups(conn: Connection, key_name: str) -> set[str]:
    """The groups ``key_name``'s lineage exceptions let read it now: in ledger order, a
    ``lineage.exception`` entry (approved) adds its groups, a ``lineage.exception.withdraw`` removes them."""
    kinds = (str(Kind.LINEAGE_EXCEPTION), str(Kind.LINEAGE_EXCEPTION_WITHDRAW))
    rows = conn.execute(
        select(audit_entries.c.kind, audit_entries.c.canonical)
        .where(audit_entries.c.key_name == key_name, audit_entries.c.kind.in_(kinds))
        .order_by(audit_entries.c.seq)
    )
    groups: set[str] = set()
    for kind, canonical in rows:
        named = json.loads(bytes(canonical))["fields"].get("groups")
        listed = {g for g in named if isinstance(g, str)} if isinstance(named, list) else set()
        if kind == kinds[0]:
            groups |= listed
        else:
            groups -= listed
    return groups
