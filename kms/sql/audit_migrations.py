"""Frozen DDL for the audit ledger (appended to ``migrations.MIGRATIONS`` as versions 3 and 5).

The ledger replaces the plain ``grants`` and ``denials`` tables of version 2: they are kept, renamed
``grants_v2`` and ``denials_v2`` (history written before the ledger existed), and ``grants`` and
``denials`` become read-only views over the ledger's release entries, so queries written against the old
tables keep working. Frozen history: never edit; later changes are new migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    insert,
)
from sqlalchemy.engine import Connection


def v3_audit_ledger(conn: Connection) -> None:
    md = MetaData()
    entries = Table(
        "audit_entries",
        md,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("time", String(27), nullable=False),  # the entry's own time text: fixed width, sortable
        Column("kind", String(32), nullable=False),
        Column("decision", String(8), nullable=False),
        Column("node_id", String(64), nullable=True),
        Column("key_name", String(128), nullable=True),
        Column("reason_codes", Text, nullable=False),  # " CODE_A CODE_B " for the reason filter
        Column("bao_request_id", String(64), nullable=True),
        Column("canonical", LargeBinary, nullable=False),
        Column("leaf_hash", LargeBinary, nullable=False),
    )
    Table(
        "audit_nodes",  # perfect-subtree hashes above the leaves, for proofs
        md,
        Column("level", Integer, nullable=False),
        Column("idx", Integer, nullable=False),
        Column("hash", LargeBinary, nullable=False),
        PrimaryKeyConstraint("level", "idx", name="pk_audit_nodes"),
    )
    head = Table(
        "audit_head",  # one row: the tree size and its compact range, written with every append
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("size", Integer, nullable=False),
        Column("frontier", LargeBinary, nullable=False),
    )
    Table(
        "audit_checkpoints",
        md,
        Column("size", Integer, primary_key=True, autoincrement=False),
        Column("root", LargeBinary, nullable=False),
        Column("time", String(27), nullable=False),
        Column("key_id", String(128), nullable=False),
        Column("signature", Text, nullable=False),
    )
    Index("ix_audit_entries_node", entries.c.node_id, entries.c.seq)
    Index("ix_audit_entries_key", entries.c.key_name, entries.c.seq)
    Index("ix_audit_entries_time", entries.c.time)
    Index("ix_audit_entries_bao", entries.c.bao_request_id)
    md.create_all(conn)
    conn.execute(insert(head).values(id=1, size=0, frontier=b""))
    conn.exec_driver_sql("ALTER TABLE grants RENAME TO grants_v2")
    conn.exec_driver_sql("ALTER TABLE denials RENAME TO denials_v2")
    _create_release_views(conn)


# PostgreSQL INTEGER is 32 bits: at a thousand releases a second a ledger passes 2**31 entries in under
# a month. SQLite's INTEGER is already 64 bits.
_POSITIONS_64_BIT = (
    ("audit_entries", "seq"),
    ("audit_nodes", "idx"),
    ("audit_head", "size"),
    ("audit_checkpoints", "size"),
)


def v5_ledger_positions_64_bit(conn: Connection) -> None:
    """Ledger sequence numbers, tree indices and sizes as BIGINT on PostgreSQL (the release views
    depend on ``audit_entries.seq``, so they are dropped and made again, unchanged)."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql("DROP VIEW grants")
    conn.exec_driver_sql("DROP VIEW denials")
    for table, column in _POSITIONS_64_BIT:  # constant SQL: the names are the literals above
        conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT")
    _create_release_views(conn)


def _create_release_views(conn: Connection) -> None:
    f = _field_sql(conn.dialect.name)
    grant_columns = ", ".join(
        [
            "seq AS sequence",
            "time AS granted_at",
            "node_id",
            "key_name",
            f"{f('fields', 'key_version')} AS key_version",
            f"{f('fields', 'purpose')} AS purpose",
            f"{f('fields', 'request_id')} AS request_id",
            "bao_request_id AS openbao_request_id",
            f"{f('fields', 'bao_batch_index')} AS bao_batch_index",
            f"{f('fields', 'lease_expiry')} AS lease_expires_at",
            f"{f('fields', 'policy_version')} AS policy_version",
            f"{f('fields', 'rule')} AS rule",
        ]
    )
    denial_columns = ", ".join(
        [
            "seq AS id",
            "time AS denied_at",
            "node_id",
            "key_name",
            f"{f('fields', 'purpose')} AS purpose",
            f"{f('fields', 'request_id')} AS request_id",
            f"{f('reasons', 0, 'code')} AS code",
            f"{f('reasons', 0, 'message')} AS message",
            "bao_request_id AS openbao_request_id",
        ]
    )
    # constant SQL: the column expressions are built from the literals above, never from input
    view = "CREATE VIEW {} AS SELECT {} FROM audit_entries WHERE kind = '{}'"
    conn.exec_driver_sql(view.format("grants", grant_columns, "release.grant"))
    conn.exec_driver_sql(view.format("denials", denial_columns, "release.deny"))


def _field_sql(dialect: str):  # type: ignore[no-untyped-def]
    def sqlite(*path: str | int) -> str:
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
        return f"json_extract(CAST(canonical AS TEXT), '{where}')"

    def postgresql(*path: str | int) -> str:
        return f"(convert_from(canonical, 'UTF8')::jsonb #>> '{{{','.join(str(p) for p in path)}}}')"

    if dialect == "postgresql":
        return postgresql
    return sqlite
