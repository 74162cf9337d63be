"""Changes held by the two-person rule (table ``pending_changes``): the ``PendingStore`` of
``kms.oidc.two_person`` over the control plane's database, shared by every replica.

``swap`` is a compare-and-set on (state, decider, decision time), so two approvers racing cannot both
decide one change. Rows are never deleted: a decided change stays as the record of who did what.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row

from kms.oidc.two_person import ChangeState, OperatorRef, PendingChange
from kms.sql.schema import UtcDateTime

if TYPE_CHECKING:
    from kms.sql.store import Store

_md = MetaData()
pending_changes = Table(
    "pending_changes",
    _md,
    Column("change_id", String(64), primary_key=True),
    Column("action", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("payload_digest", LargeBinary, nullable=False),
    Column("summary", Text, nullable=False),
    Column("proposed_by", Text, nullable=False),  # JSON OperatorRef
    Column("proposed_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("decided_by", Text, nullable=True),
    Column("decided_at", UtcDateTime, nullable=True),
    Column("comment", Text, nullable=False),
    Column("seq", Integer, nullable=False),  # proposal order
)


def _ref_out(ref: OperatorRef | None) -> str | None:
    if ref is None:
        return None
    return json.dumps({"subject": ref.subject, "username": ref.username, "roles": sorted(ref.roles)})


def _ref_in(text: str | None) -> OperatorRef | None:
    if text is None:
        return None
    doc = json.loads(text)
    return OperatorRef(str(doc["subject"]), str(doc["username"]), frozenset(doc["roles"]))


def _change(row: Row[Any]) -> PendingChange:
    proposer = _ref_in(row.proposed_by)
    assert proposer is not None
    return PendingChange(
        change_id=row.change_id,
        action=row.action,
        payload=bytes(row.payload),
        payload_digest=bytes(row.payload_digest),
        summary=row.summary,
        proposed_by=proposer,
        proposed_at=row.proposed_at,
        expires_at=row.expires_at,
        state=ChangeState(row.state),
        decided_by=_ref_in(row.decided_by),
        decided_at=row.decided_at,
        comment=row.comment,
    )


def _decision(change: PendingChange) -> dict[str, Any]:
    return {
        "state": change.state.value,
        "decided_by": _ref_out(change.decided_by),
        "decided_at": change.decided_at,
        "comment": change.comment,
    }


class SqlPendingStore:
    """``kms.oidc.two_person.PendingStore`` over the control plane's database."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, change: PendingChange) -> None:
        with self._store.transaction() as conn:
            seq = conn.execute(select(pending_changes.c.seq).order_by(pending_changes.c.seq.desc())).first()
            conn.execute(
                insert(pending_changes).values(
                    change_id=change.change_id,
                    action=change.action,
                    payload=change.payload,
                    payload_digest=change.payload_digest,
                    summary=change.summary,
                    proposed_by=_ref_out(change.proposed_by),
                    proposed_at=change.proposed_at,
                    expires_at=change.expires_at,
                    seq=(seq[0] + 1) if seq else 1,
                    **_decision(change),
                )
            )

    def get(self, change_id: str) -> PendingChange | None:
        with self._store.reader() as conn:
            row = conn.execute(
                select(pending_changes).where(pending_changes.c.change_id == change_id)
            ).first()
        return None if row is None else _change(row)

    def swap(self, expected: PendingChange, new: PendingChange) -> bool:
        t = pending_changes.c
        condition = (t.change_id == expected.change_id) & (t.state == expected.state.value)
        before = _decision(expected)
        condition &= (
            t.decided_by.is_(None) if before["decided_by"] is None else t.decided_by == before["decided_by"]
        )
        condition &= (
            t.decided_at.is_(None) if expected.decided_at is None else t.decided_at == expected.decided_at
        )
        with self._store.transaction() as conn:
            return (
                conn.execute(update(pending_changes).where(condition).values(**_decision(new))).rowcount == 1
            )

    def list(self, state: ChangeState | None = None) -> Sequence[PendingChange]:
        return self.page(state, 0, 1 << 30)

    def page(self, state: ChangeState | None, offset: int, limit: int) -> Sequence[PendingChange]:
        query = select(pending_changes).order_by(pending_changes.c.seq).offset(offset).limit(limit)
        if state is not None:
            query = query.where(pending_changes.c.state == state.value)
        with self._store.reader() as conn:
            return [_change(row) for row in conn.execute(query)]

    def expire_due(self, now: datetime) -> int:
        """Mark every undecided change past its deadline EXPIRED; how many were."""
        t = pending_changes.c
        with self._store.transaction() as conn:
            result = conn.execute(
                update(pending_changes)
                .where((t.state == ChangeState.PENDING.value) & (t.expires_at <= now))
                .values(state=ChangeState.EXPIRED.value, decided_at=now)
            )
        return int(result.rowcount)
