"""SQL for policy versions (table ``policy_versions``): every accepted policy document, newest active."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from kms.sql.control_schema import policy_versions
from kms.sql.store import Store


@dataclass(frozen=True)
class PolicyRow:
    version: int
    toml: str
    sha256: str
    updated_at: datetime
    updated_by: str


def active_version(conn: Connection) -> int:
    return int(conn.execute(select(func.max(policy_versions.c.version))).scalar() or 0)


class SqlPolicies:
    def __init__(self, store: Store) -> None:
        self._store = store

    def active_version(self) -> int:
        with self._store.reader() as conn:
            return active_version(conn)

    def get(self, version: int) -> PolicyRow | None:
        with self._store.reader() as conn:
            row = conn.execute(select(policy_versions).where(policy_versions.c.version == version)).first()
        if row is None:
            return None
        m = row._mapping
        return PolicyRow(m["version"], m["toml"], m["sha256"], m["updated_at"], m["updated_by"])

    def append(self, conn: Connection, row: PolicyRow) -> None:
        conn.execute(
            insert(policy_versions).values(
                version=row.version,
                toml=row.toml,
                sha256=row.sha256,
                updated_at=row.updated_at,
                updated_by=row.updated_by,
            )
        )
