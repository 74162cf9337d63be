"""The current schema, as SQLAlchemy Core tables, for queries. Migrations (migrations.py) create it.

Planned later tables (nodes, nonces, leases, grants) reference keys by (key_name, version): key names are
never reused, so audit entries and grants stay unambiguous after a key is destroyed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (which drops the zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


KEY_NAME_MAX = 128
KINDS = ("dataset", "model")
STATES = ("active", "disabled", "destroyed")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

keys = Table(
    "keys",
    metadata,
    Column("name", String(KEY_NAME_MAX), primary_key=True),
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

key_versions = Table(
    "key_versions",
    metadata,
    Column("key_name", String(KEY_NAME_MAX), ForeignKey("keys.name", ondelete="RESTRICT"), nullable=False),
    Column("version", Integer, nullable=False),
    # OpenBao's wrapped form (vault:vN:...); NULL once the key is destroyed
    Column("ciphertext", Text, nullable=True),
    Column("kek_version", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("rewrapped_at", UtcDateTime, nullable=True),
    PrimaryKeyConstraint("key_name", "version", name="pk_key_versions"),
    CheckConstraint("version >= 1", name="ck_key_versions_version"),
    CheckConstraint("kek_version >= 1", name="ck_key_versions_kek_version"),
)
