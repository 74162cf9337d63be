"""SQL for release decisions: seen request ids, the append-only ``grants`` and ``denials`` tables.

Every function takes the caller's connection: they run as group-commit jobs (``kms.grants``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from kms.errors import Code, KmsError
from kms.storage.control_schema import denials, grants, nodes, release_requests


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


@dataclass(frozen=True)
class DenialRow:
    denied_at: datetime
    node_id: str
    key_name: str
    purpose: str
    request_id: bytes
    code: str
    message: str
    openbao_request_id: str | None = None


def claim_request_id(conn: Connection, node_id: str, request_id: bytes, keep_until: datetime) -> None:
    """Remember ``request_id`` for ``node_id`` until ``keep_until``; REQUEST_REPLAYED if already seen."""
    rid = request_id.hex()
    seen = conn.execute(
        select(release_requests.c.keep_until).where(
            release_requests.c.node_id == node_id, release_requests.c.request_id == rid
        )
    ).first()
    if seen is not None:
        raise KmsError(
            "this request id was already used by the node",
            code=Code.REQUEST_REPLAYED,
            hint="every release request needs a fresh random 16-byte request_id",
        )
    conn.execute(insert(release_requests).values(node_id=node_id, request_id=rid, keep_until=keep_until))


def purge_request_ids(conn: Connection, before: datetime) -> None:
    conn.execute(delete(release_requests).where(release_requests.c.keep_until < before))


def node_standing(conn: Connection, node_id: str) -> tuple[str, str | None, datetime | None] | None:
    """(state, lease_id, lease_expires_at) of the node, read inside the writing transaction."""
    row = conn.execute(
        select(nodes.c.state, nodes.c.lease_id, nodes.c.lease_expires_at).where(nodes.c.node_id == node_id)
    ).first()
    return (row.state, row.lease_id, row.lease_expires_at) if row is not None else None


def insert_grant(conn: Connection, row: GrantRow) -> int:
    result = conn.execute(
        insert(grants).values(
            granted_at=row.granted_at,
            node_id=row.node_id,
            key_name=row.key_name,
            key_version=row.key_version,
            purpose=row.purpose,
            request_id=row.request_id.hex(),
            openbao_request_id=row.openbao_request_id,
            lease_expires_at=row.lease_expires_at,
            policy_version=row.policy_version,
            rule=row.rule,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def insert_denial(conn: Connection, row: DenialRow) -> int:
    result = conn.execute(
        insert(denials).values(
            denied_at=row.denied_at,
            node_id=row.node_id[:64],
            key_name=row.key_name[:128],
            purpose=row.purpose[:8],
            request_id=row.request_id.hex()[:32],
            code=row.code,
            message=row.message[:1024],
            openbao_request_id=row.openbao_request_id,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
