"""SQL for single-use challenge nonces (table ``nonces``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update

from kms.sql.control_schema import nonces
from kms.sql.store import Store


@dataclass(frozen=True)
class NonceRow:
    node_name: str
    expires_at: datetime
    consumed_at: datetime | None


class SqlNonces:
    def __init__(self, store: Store) -> None:
        self._store = store

    def insert(self, nonce_hex: str, node_name: str, issued_at: datetime, expires_at: datetime) -> None:
        with self._store.transaction() as conn:
            conn.execute(
                insert(nonces).values(
                    nonce=nonce_hex, node_name=node_name, issued_at=issued_at, expires_at=expires_at
                )
            )

    def consume(self, nonce_hex: str, now: datetime) -> NonceRow | None:
        """Mark the nonce used and commit; returns the row as it was before, or None if unknown."""
        with self._store.transaction() as conn:
            row = conn.execute(
                select(nonces.c.node_name, nonces.c.expires_at, nonces.c.consumed_at).where(
                    nonces.c.nonce == nonce_hex
                )
            ).first()
            if row is None:
                return None
            if row.consumed_at is None:
                conn.execute(update(nonces).where(nonces.c.nonce == nonce_hex).values(consumed_at=now))
            return NonceRow(row.node_name, row.expires_at, row.consumed_at)

    def purge(self, before: datetime) -> int:
        with self._store.transaction() as conn:
            return conn.execute(delete(nonces).where(nonces.c.expires_at < before)).rowcount or 0
