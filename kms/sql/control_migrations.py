"""Frozen DDL for the control-plane tables (appended to ``migrations.MIGRATIONS``).

Frozen history: these definitions never change once released; later changes are new migrations. The
live table objects for queries are in ``control_schema``.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Connection

from kms.sql.schema import UtcDateTime


def v2_control_plane(conn: Connection) -> None:
    md = MetaData()
    nonces = Table(
        "nonces",
        md,
        Column("nonce", String(64), primary_key=True),
        Column("node_name", String(63), nullable=False),
        Column("issued_at", UtcDateTime, nullable=False),
        Column("expires_at", UtcDateTime, nullable=False),
        Column("consumed_at", UtcDateTime, nullable=True),
    )
    nodes = Table(
        "nodes",
        md,
        Column("node_id", String(64), primary_key=True),
        Column("node_name", String(63), nullable=False),
        Column("state", String(16), nullable=False),
        Column("tee", String(8), nullable=False),
        Column("kem_suite", String(12), nullable=False),
        Column("kem_public", LargeBinary, nullable=False),
        Column("signing_public", LargeBinary, nullable=False, unique=True),
        Column("claims_json", Text, nullable=False),
        Column("claims_digest", String(64), nullable=False),
        Column("groups_json", Text, nullable=False),
        Column("requested_groups_json", Text, nullable=False),
        Column("reasons_json", Text, nullable=False),
        Column("evidence_time", UtcDateTime, nullable=False),
        Column("lease_id", String(64), nullable=True),
        Column("lease_issued_at", UtcDateTime, nullable=True),
        Column("lease_expires_at", UtcDateTime, nullable=True),
        Column("policy_version", Integer, nullable=False),
        Column("registered_at", UtcDateTime, nullable=False),
        Column("attested_at", UtcDateTime, nullable=False),
        Column("state_changed_at", UtcDateTime, nullable=False),
        CheckConstraint("state IN ('pending', 'attested', 'suspended', 'revoked')", name="ck_nodes_state"),
    )
    release_requests = Table(
        "release_requests",
        md,
        Column("node_id", String(64), nullable=False),
        Column("request_id", String(32), nullable=False),
        Column("keep_until", UtcDateTime, nullable=False),
        PrimaryKeyConstraint("node_id", "request_id", name="pk_release_requests"),
    )
    Table(
        "grants",
        md,
        Column("sequence", Integer, primary_key=True, autoincrement=True),
        Column("granted_at", UtcDateTime, nullable=False),
        Column("node_id", String(64), nullable=False),
        Column("key_name", String(128), nullable=False),
        Column("key_version", Integer, nullable=False),
        Column("purpose", String(8), nullable=False),
        Column("request_id", String(32), nullable=False),
        Column("openbao_request_id", String(64), nullable=False),
        Column("lease_expires_at", UtcDateTime, nullable=False),
        Column("policy_version", Integer, nullable=False),
        Column("rule", String(64), nullable=False),
        sqlite_autoincrement=True,
    )
    Table(
        "denials",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("denied_at", UtcDateTime, nullable=False),
        Column("node_id", String(64), nullable=False),
        Column("key_name", String(128), nullable=False),
        Column("purpose", String(8), nullable=False),
        Column("request_id", String(32), nullable=False),
        Column("code", String(64), nullable=False),
        Column("message", Text, nullable=False),
        Column("openbao_request_id", String(64), nullable=True),
        sqlite_autoincrement=True,
    )
    Table(
        "policy_versions",
        md,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("toml", Text, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Column("updated_by", String(128), nullable=False),
    )
    Index("ix_nonces_expires_at", nonces.c.expires_at)
    Index("ix_release_requests_keep_until", release_requests.c.keep_until)
    Index("ix_nodes_registered_at", nodes.c.registered_at)
    md.create_all(conn)
