"""SQL for provenance statements and lineage rules: ``model.output`` entries and the entries a lineage
rests on (``kms.usecases.provenance_issue``, ``kms.usecases.lineage_release``). SQL only."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.engine import Connection

from kms.audit.entry import Decision, Kind
from kms.sql.audit_schema import audit_entries


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
