"""The SQLite store: migrations, pragmas, constraints, and the schema module matching the migrations."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select, text

from kms.domain.catalogue import Catalogue, KeyKind, KeyRecord, KeyState, KeyVersion, require_usable
from kms.domain.transit import WrappedKey
from kms.errors import Code, KmsError, StorageError
from kms.sql import migrations, open_store, schema
from kms.sql.keys import SqlKeyStore

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_fresh_database_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db", clock=lambda: NOW)
    assert store.schema_version() == migrations.latest_version() >= 1
    with store.reader() as conn:
        rows = conn.execute(select(schema.schema_version)).all()
    assert (rows[0].version, rows[0].applied_at) == (1, NOW)


def test_reopening_applies_nothing(tmp_path: Path) -> None:
    open_store(tmp_path / "a.db").close()
    store = open_store(tmp_path / "a.db", migrate=False)
    assert store.migrate() == []


def test_newer_database_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    with store.transaction() as conn:
        conn.execute(insert(schema.schema_version).values(version=999, name="future", applied_at=NOW))
    with pytest.raises(StorageError) as info:
        open_store(tmp_path / "a.db")
    assert info.value.code is Code.STORAGE_SCHEMA_TOO_NEW


def test_migration_list_must_be_contiguous() -> None:
    noop = migrations.MIGRATIONS[0].apply
    with pytest.raises(RuntimeError):
        migrations.check_order([migrations.Migration(1, "a", noop), migrations.Migration(3, "c", noop)])


def test_schema_module_matches_what_migrations_create(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    live = inspect(store.engine)
    for table in schema.metadata.sorted_tables:
        columns = {c["name"]: c["nullable"] for c in live.get_columns(table.name)}
        assert columns == {c.name: c.nullable for c in table.columns}, table.name
        assert set(live.get_pk_constraint(table.name)["constrained_columns"]) == {
            c.name for c in table.primary_key
        }
        checks = {c["name"] for c in live.get_check_constraints(table.name)}
        assert checks == {c.name for c in table.constraints if c.__class__.__name__ == "CheckConstraint"}


def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    with store.reader() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert (tmp_path / "a.db").stat().st_mode & 0o077 == 0


def test_constraints_hold_at_the_database(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    row = {
        "name": "k",
        "kind": "secret",
        "state": "active",
        "current_version": 1,
        "created_at": NOW,
        "updated_at": NOW,
    }
    with pytest.raises(StorageError) as info, store.transaction() as conn:
        conn.execute(insert(schema.keys).values(**row))
    assert info.value.code is Code.STORAGE_CONFLICT
    orphan = {
        "key_name": "missing",
        "version": 1,
        "ciphertext": "vault:v1:x",
        "kek_version": 1,
        "created_at": NOW,
    }
    with pytest.raises(StorageError), store.transaction() as conn:
        conn.execute(insert(schema.key_versions).values(**orphan))


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    row = {
        "name": "k",
        "kind": "model",
        "state": "active",
        "current_version": 1,
        "created_at": NOW,
        "updated_at": NOW,
    }
    with pytest.raises(StorageError), store.transaction() as conn:
        conn.execute(insert(schema.keys).values(**row))
        conn.execute(insert(schema.keys).values(**row))  # duplicate: the first insert rolls back too
    with store.reader() as conn:
        assert conn.execute(text("SELECT count(*) FROM keys")).scalar() == 0


def test_naive_datetimes_are_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    row = {"name": "k", "kind": "model", "state": "active", "current_version": 1}
    with pytest.raises(StorageError), store.transaction() as conn:
        conn.execute(insert(schema.keys).values(**row, created_at=datetime(2026, 1, 1), updated_at=NOW))


def test_times_round_trip_as_aware_utc(tmp_path: Path) -> None:
    keys = SqlKeyStore(open_store(tmp_path / "a.db"))
    record = KeyRecord("k", KeyKind.MODEL, KeyState.ACTIVE, 1, NOW, NOW, None, ())
    keys.insert(record)
    loaded = keys.load("k")
    assert loaded is not None and loaded.created_at == NOW and loaded.created_at.tzinfo is not None


def test_unreadable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KmsError) as info:
        open_store(blocker / "sub" / "a.db")
    assert info.value.code is Code.STORAGE_ERROR


def test_concurrent_rotations_get_distinct_versions(tmp_path: Path) -> None:
    keys = SqlKeyStore(open_store(tmp_path / "a.db"))
    keys.insert(
        KeyRecord(
            "k", KeyKind.MODEL, KeyState.ACTIVE, 1, NOW, NOW, None, (KeyVersion(1, "vault:v1:a", 1, NOW),)
        )
    )
    errors: list[BaseException] = []

    def rotate(i: int) -> None:
        try:
            keys.add_version("k", WrappedKey(f"vault:v1:{i}", 1), NOW, require_usable)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    record = keys.load("k")
    assert record is not None and record.current_version == 9
    assert [v.version for v in record.versions] == list(range(1, 10))


def test_catalogue_state_check_runs_inside_the_transaction(tmp_path: Path) -> None:
    keys = SqlKeyStore(open_store(tmp_path / "a.db"))
    keys.insert(
        KeyRecord(
            "k", KeyKind.MODEL, KeyState.DISABLED, 1, NOW, NOW, None, (KeyVersion(1, "vault:v1:a", 1, NOW),)
        )
    )
    with pytest.raises(KmsError) as info:
        keys.add_version("k", WrappedKey("vault:v1:b", 1), NOW, require_usable)
    assert info.value.code is Code.KEY_DISABLED
    assert Catalogue(keys, None, lambda: NOW).describe("k").current_version == 1
