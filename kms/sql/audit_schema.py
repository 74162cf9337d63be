"""Live tables of the audit ledger (``audit_migrations`` creates them; this module is what queries use).

``audit_entries`` holds each entry's canonical bytes (the authority) and its leaf hash, plus a few
columns copied out of the entry for filtering; ``model_outputs`` the digests of granted ``model.output``
entries, to find an output by digest (written with the entry; ``kms.sql.outputs``). ``audit_nodes`` holds every perfect-subtree hash above
the leaves (level >= 1), ``audit_head`` the tree size and compact range, updated in the same transaction
as the entries, and ``audit_checkpoints`` the signed tree heads. All append-only except the head row.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(27), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("decision", String(8), nullable=False),
    Column("node_id", String(64), nullable=True),
    Column("key_name", String(128), nullable=True),
    Column("reason_codes", Text, nullable=False),
    Column("bao_request_id", String(64), nullable=True),
    Column("canonical", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
)

audit_nodes = Table(
    "audit_nodes",
    metadata,
    Column("level", Integer, nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    PrimaryKeyConstraint("level", "idx", name="pk_audit_nodes"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("frontier", LargeBinary, nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("time", String(27), nullable=False),
    Column("key_id", String(128), nullable=False),
    Column("signature", Text, nullable=False),
)

model_outputs = Table(
    "model_outputs",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("output_sha256", String(64), nullable=False),
    Column("sealed_sha256", String(64), nullable=False),
)
