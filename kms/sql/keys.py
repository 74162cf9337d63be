"""SQL for the key catalogue (``keys`` and ``key_versions``): implements ``kms.domain.catalogue.KeyStore``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from kms.domain.catalogue import Check, KeyKind, KeyRecord, KeyState, KeyVersion, StaleVersion, not_found
from kms.domain.transit import WrappedKey
from kms.errors import CatalogueError, Code, StorageError
from kms.sql.schema import key_versions, keys
from kms.sql.store import Store


class SqlKeyStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    def insert(self, record: KeyRecord) -> None:
        try:
            with self._store.transaction() as conn:
                if _load(conn, record.name) is not None:
                    raise CatalogueError(f"key {record.name} already exists", code=Code.KEY_EXISTS)
                conn.execute(
                    insert(keys).values(
                        name=record.name,
                        kind=record.kind.value,
                        state=record.state.value,
                        current_version=record.current_version,
                        created_at=record.created_at,
                        updated_at=record.updated_at,
                        destroyed_at=record.destroyed_at,
                    )
                )
                for v in record.versions:
                    conn.execute(insert(key_versions).values(key_name=record.name, **_version_values(v)))
        except StorageError as err:
            if err.code == Code.STORAGE_CONFLICT:  # lost a race with another writer of the same name
                raise CatalogueError(f"key {record.name} already exists", code=Code.KEY_EXISTS) from None
            raise

    def load(self, name: str) -> KeyRecord | None:
        with self._store.reader() as conn:
            return _load(conn, name)

    def all(self) -> list[KeyRecord]:
        with self._store.reader() as conn:
            names = conn.execute(select(keys.c.name).order_by(keys.c.name)).scalars().all()
            return [r for r in (_load(conn, n) for n in names) if r is not None]

    def add_version(self, name: str, wrapped: WrappedKey, now: datetime, check: Check) -> KeyRecord:
        with self._store.transaction() as conn:
            record = _load_checked(conn, name, check)
            number = record.current_version + 1
            conn.execute(
                insert(key_versions).values(
                    key_name=name,
                    version=number,
                    ciphertext=wrapped.ciphertext,
                    kek_version=wrapped.kek_version,
                    created_at=now,
                )
            )
            conn.execute(
                update(keys).where(keys.c.name == name).values(current_version=number, updated_at=now)
            )
            return _require(conn, name)

    def set_state(self, name: str, state: KeyState, now: datetime, check: Check) -> KeyRecord:
        with self._store.transaction() as conn:
            _load_checked(conn, name, check)
            values: dict[str, Any] = {"state": state.value, "updated_at": now}
            if state is KeyState.DESTROYED:
                values["destroyed_at"] = now
                conn.execute(
                    update(key_versions).where(key_versions.c.key_name == name).values(ciphertext=None)
                )
            conn.execute(update(keys).where(keys.c.name == name).values(**values))
            record = _require(conn, name)
        if state is KeyState.DESTROYED:
            self._store.checkpoint()  # don't leave the old pages in the WAL file
        return record

    def stale_versions(self, below_kek_version: int | None) -> list[StaleVersion]:
        query = (
            select(
                key_versions.c.key_name,
                key_versions.c.version,
                key_versions.c.ciphertext,
                key_versions.c.kek_version,
            )
            .where(key_versions.c.ciphertext.is_not(None))
            .order_by(key_versions.c.key_name, key_versions.c.version)
        )
        if below_kek_version is not None:
            query = query.where(key_versions.c.kek_version < below_kek_version)
        with self._store.reader() as conn:
            return [
                StaleVersion(r.key_name, r.version, r.ciphertext, r.kek_version) for r in conn.execute(query)
            ]

    def replace_wrapped(self, stale: StaleVersion, new: WrappedKey, now: datetime) -> bool:
        """Compare-and-set: only replaces the exact ciphertext that was rewrapped (a destroy wins)."""
        with self._store.transaction() as conn:
            result = conn.execute(
                update(key_versions)
                .where(
                    key_versions.c.key_name == stale.name,
                    key_versions.c.version == stale.version,
                    key_versions.c.ciphertext == stale.ciphertext,
                )
                .values(ciphertext=new.ciphertext, kek_version=new.kek_version, rewrapped_at=now)
            )
            return bool(result.rowcount == 1)


def _version_values(v: KeyVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "ciphertext": v.ciphertext,
        "kek_version": v.kek_version,
        "created_at": v.created_at,
        "rewrapped_at": v.rewrapped_at,
    }


def _load(conn: Connection, name: str) -> KeyRecord | None:
    row = conn.execute(select(keys).where(keys.c.name == name)).one_or_none()
    if row is None:
        return None
    versions = conn.execute(
        select(key_versions).where(key_versions.c.key_name == name).order_by(key_versions.c.version)
    ).all()
    try:
        return KeyRecord(
            name=row.name,
            kind=KeyKind(row.kind),
            state=KeyState(row.state),
            current_version=row.current_version,
            created_at=row.created_at,
            updated_at=row.updated_at,
            destroyed_at=row.destroyed_at,
            versions=tuple(
                KeyVersion(v.version, v.ciphertext, v.kek_version, v.created_at, v.rewrapped_at)
                for v in versions
            ),
        )
    except ValueError as exc:
        raise StorageError(f"key {name} has an unreadable row: {exc}") from None


def _require(conn: Connection, name: str) -> KeyRecord:
    record = _load(conn, name)
    if record is None:
        raise not_found(name)
    return record


def _load_checked(conn: Connection, name: str, check: Check) -> KeyRecord:
    record = _require(conn, name)
    check(record)
    return record
