"""SQL for release decisions: seen request ids, and grant and deny entries in the audit ledger.

SQL only; what the rows mean is ``kms.domain.premises``'s to decide. For a batch of grants, inside its one
writing transaction: ``read_standing`` reads everything they rest on (node state and lease, key state
and versions, active policy version, request ids already seen) in a handful of statements, and
``insert_grants`` remembers the request ids and appends a ``release.grant`` ledger entry for each grant
that still stands; the entry's sequence number is the grant's audit sequence (bound into the release
AAD). ``insert_denial`` appends a ``release.deny`` entry. The old ``grants`` and ``denials`` tables are
views over these entries now (``audit_migrations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, delete, insert, select
from sqlalchemy.engine import Connection

from kms.audit.draft import Draft, node_actor
from kms.audit.entry import Decision, Kind, Reason
from kms.domain.catalogue import KeyKind, KeyState
from kms.domain.premises import KeyStanding, NodeStanding
from kms.domain.registry import NodeState
from kms.sql.audit_append import append_entries
from kms.sql.control_schema import nodes, release_requests
from kms.sql.policy_versions import active_version
from kms.sql.schema import key_versions, keys


@dataclass(frozen=True)
class GrantRow:
    granted_at: datetime
    node_id: str
    key_name: str
    key_version: int
    purpose: str
    request_id: bytes
    openbao_request_id: str
    lease_expires_at: datetime
    policy_version: int
    rule: str
    bao_batch_index: int = 0  # this item's index in the OpenBao batch decrypt (all share the request id)
    bao_batch_size: int = 1


@dataclass(frozen=True)
class PendingGrant:
    """A grant to record if its premises still hold: the node's lease, the request id's freshness."""

    row: GrantRow
    lease_id: str
    keep_request_until: datetime


@dataclass(frozen=True)
class DenialRow:
    denied_at: datetime
    node_id: str
    key_name: str
    purpose: str
    request_id: bytes
    code: str
    message: str
    openbao_request_id: str | None = None  # set when the key was decrypted before the refusal
    bao_batch_index: int | None = None
    bao_batch_size: int | None = None
    more_reasons: tuple[tuple[str, str], ...] = ()  # (code, message) after the first one


@dataclass(frozen=True)
class Standing:
    """What the database says, inside the writing transaction, about a batch's nodes, keys, policy and
    request ids (``kms.domain.premises`` decides what it means for each grant)."""

    nodes: dict[str, NodeStanding]
    keys: dict[str, KeyStanding]
    policy_version: int
    seen: set[tuple[str, str]]  # (node_id, request_id hex) already used


# Built once: per batch only parameters change (SQLAlchemy then skips building and coercing them).
_STANDING = select(nodes.c.node_id, nodes.c.state, nodes.c.lease_id, nodes.c.lease_expires_at).where(
    nodes.c.node_id.in_(bindparam("node_ids", expanding=True))
)
_KEYS = (
    select(
        keys.c.name,
        keys.c.kind,
        keys.c.state,
        keys.c.current_version,
        key_versions.c.version,
        key_versions.c.ciphertext.is_not(None).label("ciphertext_present"),
    )
    .join(key_versions, key_versions.c.key_name == keys.c.name)
    .where(keys.c.name.in_(bindparam("names", expanding=True)))
)
# both columns of the primary key, so SQLite looks the pairs up in its index
_SEEN = select(release_requests.c.node_id, release_requests.c.request_id).where(
    release_requests.c.node_id.in_(bindparam("node_ids", expanding=True)),
    release_requests.c.request_id.in_(bindparam("request_ids", expanding=True)),
)
_INSERT_REQUEST = insert(release_requests)


def read_standing(conn: Connection, items: Sequence[PendingGrant]) -> Standing:
    """Fresh reads of everything the grants in ``items`` rest on."""
    node_ids = sorted({i.row.node_id for i in items})
    nodes_now = {
        r.node_id: NodeStanding(NodeState(r.state), r.lease_id, r.lease_expires_at)
        for r in conn.execute(_STANDING, {"node_ids": node_ids})
    }
    rows: dict[str, list[Row[Any]]] = {}
    for r in conn.execute(_KEYS, {"names": sorted({i.row.key_name for i in items})}):
        rows.setdefault(r.name, []).append(r)
    keys_now = {
        name: KeyStanding(
            KeyKind(vs[0].kind),
            KeyState(vs[0].state),
            vs[0].current_version,
            {v.version: bool(v.ciphertext_present) for v in vs},
        )
        for name, vs in rows.items()
    }
    pairs = {(i.row.node_id, i.row.request_id.hex()) for i in items}
    seen = {
        (r.node_id, r.request_id)
        for r in conn.execute(_SEEN, {"node_ids": node_ids, "request_ids": sorted({rid for _, rid in pairs})})
        if (r.node_id, r.request_id) in pairs
    }
    return Standing(nodes_now, keys_now, active_version(conn), seen)


def insert_grants(conn: Connection, accepted: Sequence[PendingGrant], now: datetime) -> list[int]:
    """Remember the request ids and append a ``release.grant`` entry per item; their ledger sequences."""
    if not accepted:
        return []
    conn.execute(
        _INSERT_REQUEST,
        [
            {
                "node_id": i.row.node_id,
                "request_id": i.row.request_id.hex(),
                "keep_until": i.keep_request_until,
            }
            for i in accepted
        ],
    )
    return append_entries(conn, [grant_draft(i.row) for i in accepted], now)


def purge_request_ids(conn: Connection, now: datetime) -> None:
    """Forget request ids whose timestamps can no longer pass the skew check."""
    conn.execute(delete(release_requests).where(release_requests.c.keep_until < now))


def grant_draft(row: GrantRow) -> Draft:
    fields: dict[str, object] = {
        "node_id": row.node_id,
        "key_name": row.key_name,
        "key_version": row.key_version,
        "purpose": row.purpose,
        "request_id": row.request_id.hex(),
        "bao_request_id": row.openbao_request_id,
        "bao_batch_index": row.bao_batch_index,
        "bao_batch_size": row.bao_batch_size,
        "lease_expiry": int(row.lease_expires_at.timestamp()),
        "policy_version": row.policy_version,
        "rule": row.rule,
    }
    return Draft(Kind.RELEASE_GRANT, node_actor(row.node_id), Decision.GRANT, (), fields)


def denial_draft(row: DenialRow) -> Draft:
    fields: dict[str, object] = {
        "node_id": row.node_id[:64],
        "key_name": row.key_name[:128],
        "purpose": row.purpose[:8],
        "request_id": row.request_id.hex()[:32],
    }
    if row.openbao_request_id:
        fields.update(
            bao_request_id=row.openbao_request_id,
            bao_batch_index=row.bao_batch_index,
            bao_batch_size=row.bao_batch_size,
        )
    reasons = tuple(Reason(c, m[:1024]) for c, m in ((row.code, row.message), *row.more_reasons))
    return Draft(Kind.RELEASE_DENY, node_actor(row.node_id[:64]), Decision.DENY, reasons, fields)


def insert_denial(conn: Connection, row: DenialRow) -> int:
    """Append the ``release.deny`` entry; returns its ledger sequence."""
    return append_entries(conn, [denial_draft(row)], row.denied_at)[0]
