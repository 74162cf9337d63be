"""SQL for recording a model output (``kms.usecases.outputs``): the node row, request ids, write grants,
and the output digest index (``model_outputs``: finding an output by its plaintext's or sealed file's
SHA-256 without reading every output entry).

SQL only; the decisions (which state refuses, which code) stay in the use case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from kms.audit.entry import Decision, Kind
from kms.sql.audit_schema import audit_entries, model_outputs
from kms.sql.control_schema import nodes, release_requests


@dataclass(frozen=True)
class NodeStanding:
    state: str
    lease_expires_at: datetime | None


def read_node_standing(conn: Connection, node_id: str) -> NodeStanding | None:
    """The node's state and lease expiry as stored (naive datetimes as the database returns them)."""
    row = conn.execute(
        select(nodes.c.state, nodes.c.lease_expires_at).where(nodes.c.node_id == node_id)
    ).first()
    return None if row is None else NodeStanding(str(row.state), row.lease_expires_at)


def request_id_used(conn: Connection, node_id: str, request_id_hex: str) -> bool:
    """Whether this node already used the request id (ReleaseKey and RecordOutput share the table)."""
    seen = conn.execute(
        select(release_requests.c.node_id).where(
            release_requests.c.node_id == node_id, release_requests.c.request_id == request_id_hex
        )
    ).first()
    return seen is not None


def insert_request_id(conn: Connection, node_id: str, request_id_hex: str, keep_until: datetime) -> None:
    conn.execute(
        insert(release_requests),
        [{"node_id": node_id, "request_id": request_id_hex, "keep_until": keep_until}],
    )


def latest_write_grant(conn: Connection, node_id: str, key_name: str, key_version: int) -> int | None:
    """The ledger sequence of the latest write grant of ``key_name`` v``key_version`` to ``node_id``."""
    rows = conn.execute(
        select(audit_entries.c.seq, audit_entries.c.canonical)
        .where(
            audit_entries.c.node_id == node_id,
            audit_entries.c.key_name == key_name,
            audit_entries.c.kind == str(Kind.RELEASE_GRANT),
        )
        .order_by(audit_entries.c.seq.desc())
    )
    for seq, canonical in rows:
        fields = json.loads(bytes(canonical))["fields"]
        if fields.get("purpose") == "write" and fields.get("key_version") == key_version:
            return int(seq)
    return None


def index_output(conn: Connection, seq: int, output_sha256_hex: str, sealed_sha256_hex: str) -> None:
    """Index the granted ``model.output`` entry ``seq`` by its digests (in the entry's transaction)."""
    conn.execute(
        insert(model_outputs),
        [{"seq": seq, "output_sha256": output_sha256_hex, "sealed_sha256": sealed_sha256_hex}],
    )


def output_by_digest(conn: Connection, sha256_hex: str) -> tuple[int, bytes] | None:
    """``(seq, canonical)`` of the newest granted ``model.output`` entry whose plaintext or sealed-file
    SHA-256 is ``sha256_hex``, or None. Two index lookups (one per digest column); the row found is
    checked against the entry's own bytes, which stay the authority."""
    newest = None
    for column in (model_outputs.c.output_sha256, model_outputs.c.sealed_sha256):
        seq = conn.execute(select(func.max(model_outputs.c.seq)).where(column == sha256_hex)).scalar()
        if seq is not None and (newest is None or seq > newest):
            newest = int(seq)
    if newest is None:
        return None
    row = conn.execute(
        select(audit_entries.c.canonical).where(
            audit_entries.c.seq == newest,
            audit_entries.c.kind == str(Kind.MODEL_OUTPUT),
            audit_entries.c.decision == str(Decision.GRANT),
        )
    ).first()
    if row is None:
        return None
    canonical = bytes(row.canonical)
    fields = json.loads(canonical)["fields"]
    if sha256_hex not in (fields.get("output_sha256"), fields.get("sealed_sha256")):
        return None
    return newest, canonical
