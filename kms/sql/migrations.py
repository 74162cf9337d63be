"""Versioned schema migrations, applied in order, each in the same transaction as its version row.

To extend: write ``def _vN_what(conn)`` below with its own DDL (never import the live tables from
schema.py: a migration is frozen history, the live tables move on) and append ``Migration(N, "what",
_vN_what)`` to ``MIGRATIONS``. Versions are 1..N without gaps; the store refuses a database whose version
is newer than the last entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Connection

from kms.sql.audit_migrations import v3_audit_ledger, v5_ledger_positions_64_bit
from kms.sql.control_migrations import v2_control_plane
from kms.sql.output_migrations import v7_model_output_digests
from kms.sql.schema import UtcDateTime


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _v1_key_catalogue(conn: Connection) -> None:
    md = MetaData()
    Table(
        "schema_version",
        md,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("name", String(200), nullable=False),
        Column("applied_at", UtcDateTime, nullable=False),
    )
    Table(
        "keys",
        md,
        Column("name", String(128), primary_key=True),
        Column("kind", String(16), nullable=False),
        Column("state", String(16), nullable=False),
        Column("current_version", Integer, nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Column("destroyed_at", UtcDateTime, nullable=True),
        CheckConstraint("kind IN ('dataset', 'model')", name="ck_keys_kind"),
        CheckConstraint("state IN ('active', 'disabled', 'destroyed')", name="ck_keys_state"),
        CheckConstraint("current_version >= 1", name="ck_keys_current_version"),
    )
    Table(
        "key_versions",
        md,
        Column("key_name", String(128), ForeignKey("keys.name", ondelete="RESTRICT"), nullable=False),
        Column("version", Integer, nullable=False),
        Column("ciphertext", Text, nullable=True),
        Column("kek_version", Integer, nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        Column("rewrapped_at", UtcDateTime, nullable=True),
        PrimaryKeyConstraint("key_name", "version", name="pk_key_versions"),
        CheckConstraint("version >= 1", name="ck_key_versions_version"),
        CheckConstraint("kek_version >= 1", name="ck_key_versions_kek_version"),
    )
    md.create_all(conn)


def _v4_pending_changes(conn: Connection) -> None:
    """Changes held by the two-person rule (kms.sql.pending_changes)."""
    md = MetaData()
    Table(
        "pending_changes",
        md,
        Column("change_id", String(64), primary_key=True),
        Column("action", String(64), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("payload_digest", LargeBinary, nullable=False),
        Column("summary", Text, nullable=False),
        Column("proposed_by", Text, nullable=False),
        Column("proposed_at", UtcDateTime, nullable=False),
        Column("expires_at", UtcDateTime, nullable=False),
        Column("state", String(16), nullable=False),
        Column("decided_by", Text, nullable=True),
        Column("decided_at", UtcDateTime, nullable=True),
        Column("comment", Text, nullable=False),
        Column("seq", Integer, nullable=False),
        CheckConstraint(
            "state IN ('PENDING', 'APPLIED', 'REJECTED', 'EXPIRED')", name="ck_pending_changes_state"
        ),
    )
    md.create_all(conn)


def _v6_provenance_statements(conn: Connection) -> None:
    """Issued provenance statements, one per output entry (kms.sql.provenance)."""
    md = MetaData()
    Table(
        "provenance_statements",
        md,
        Column("output_seq", BigInteger, primary_key=True, autoincrement=False),
        Column("checkpoint_size", BigInteger, nullable=False),
        Column("key_version", Integer, nullable=False),
        Column("envelope", LargeBinary, nullable=False),
        Column("issued_at", UtcDateTime, nullable=False),
    )
    md.create_all(conn)


MIGRATIONS: list[Migration] = [
    Migration(1, "key catalogue", _v1_key_catalogue),
    Migration(2, "control plane (nonces, nodes, grants, denials, policies)", v2_control_plane),
    Migration(
        3, "audit ledger (entries, tree, checkpoints; grants and denials become views)", v3_audit_ledger
    ),
    Migration(4, "pending changes of the two-person rule", _v4_pending_changes),
    Migration(5, "64-bit ledger positions on PostgreSQL", v5_ledger_positions_64_bit),
    Migration(6, "issued provenance statements", _v6_provenance_statements),
    Migration(7, "model output digest index (filled from the ledger)", v7_model_output_digests),
]


def latest_version() -> int:
    return MIGRATIONS[-1].version if MIGRATIONS else 0


def check_order(migrations: list[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must be 1..N in order, got {versions}")


check_order(MIGRATIONS)
