"""The store on PostgreSQL: the same migrations as SQLite, the same constraints and time handling, and
write transactions that serialise across replicas (two ``Store`` objects = two control-plane replicas)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from pg.server import PostgresServer
from sqlalchemy import insert, inspect, select, text

from kms.domain.catalogue import KeyKind, KeyRecord, KeyState, KeyVersion, require_usable
from kms.domain.transit import WrappedKey
from kms.errors import Code, KmsError, StorageError
from kms.sql import control_schema, migrations, open_store, schema
from kms.sql.keys import SqlKeyStore

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
KEY_ROW = {"name": "k", "kind": "model", "state": "active", "current_version": 1}


def test_fresh_database_is_migrated_once_even_by_replicas_starting_together(postgres_url: str) -> None:
    errors: list[BaseException] = []
    applied: list[list[int]] = []

    def start() -> None:
        try:
            store = open_store(postgres_url, migrate=False, clock=lambda: NOW)
            applied.append(store.migrate())
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    everything = list(range(1, migrations.latest_version() + 1))
    assert sorted(applied, key=len) == [[], [], everything]  # one replica migrated, the others found it done
    store = open_store(postgres_url)
    assert store.schema_version() == migrations.latest_version()
    with store.reader() as conn:
        rows = conn.execute(select(schema.schema_version).order_by(schema.schema_version.c.version)).all()
    assert [r.version for r in rows] == everything and rows[0].applied_at == NOW


def test_newer_database_is_refused(postgres_url: str) -> None:
    store = open_store(postgres_url)
    with store.transaction() as conn:
        conn.execute(insert(schema.schema_version).values(version=999, name="future", applied_at=NOW))
    with pytest.raises(StorageError) as info:
        open_store(postgres_url)
    assert info.value.code is Code.STORAGE_SCHEMA_TOO_NEW


@pytest.mark.parametrize("tables", [schema.metadata, control_schema.metadata], ids=["catalogue", "control"])
def test_query_tables_match_what_migrations_create(postgres_url: str, tables: object) -> None:
    store = open_store(postgres_url)
    live = inspect(store.engine)
    views = set(live.get_view_names())
    for table in tables.sorted_tables:  # type: ignore[attr-defined]
        if table.name in views:  # replaced by a view over the audit ledger in a later migration
            continue
        columns = {c["name"]: c["nullable"] for c in live.get_columns(table.name)}
        assert columns == {c.name: c.nullable for c in table.columns}, table.name
        assert set(live.get_pk_constraint(table.name)["constrained_columns"]) == {
            c.name for c in table.primary_key
        }


def test_constraints_hold_and_a_failed_transaction_leaves_nothing(postgres_url: str) -> None:
    store = open_store(postgres_url)
    with pytest.raises(StorageError) as info, store.transaction() as conn:
        conn.execute(
            insert(schema.keys).values(**{**KEY_ROW, "kind": "secret"}, created_at=NOW, updated_at=NOW)
        )
    assert info.value.code is Code.STORAGE_CONFLICT
    orphan = {"key_name": "missing", "version": 1, "ciphertext": "vault:v1:x", "kek_version": 1}
    with pytest.raises(StorageError) as info, store.transaction() as conn:
        conn.execute(insert(schema.key_versions).values(**orphan, created_at=NOW))
    assert info.value.code is Code.STORAGE_CONFLICT
    with pytest.raises(StorageError), store.transaction() as conn:
        conn.execute(insert(schema.keys).values(**KEY_ROW, created_at=NOW, updated_at=NOW))
        conn.execute(insert(schema.keys).values(**KEY_ROW, created_at=NOW, updated_at=NOW))
    with store.reader() as conn:
        assert conn.execute(text("SELECT count(*) FROM keys")).scalar() == 0


def test_times_round_trip_as_aware_utc_and_naive_ones_are_refused(postgres_url: str) -> None:
    store = open_store(postgres_url)
    with pytest.raises(StorageError), store.transaction() as conn:
        conn.execute(insert(schema.keys).values(**KEY_ROW, created_at=datetime(2026, 1, 1), updated_at=NOW))
    keys = SqlKeyStore(store)
    keys.insert(KeyRecord("k", KeyKind.MODEL, KeyState.ACTIVE, 1, NOW, NOW, None, ()))
    loaded = keys.load("k")
    assert loaded is not None and loaded.created_at == NOW and loaded.created_at.utcoffset() is not None


def test_rotations_from_two_replicas_get_distinct_versions(postgres_url: str) -> None:
    replicas = [SqlKeyStore(open_store(postgres_url)), SqlKeyStore(open_store(postgres_url))]
    replicas[0].insert(
        KeyRecord(
            "k", KeyKind.MODEL, KeyState.ACTIVE, 1, NOW, NOW, None, (KeyVersion(1, "vault:v1:a", 1, NOW),)
        )
    )
    errors: list[BaseException] = []

    def rotate(i: int) -> None:
        try:
            replicas[i % 2].add_version("k", WrappedKey(f"vault:v1:{i}", 1), NOW, require_usable)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    record = replicas[1].load("k")
    assert record is not None and record.current_version == 13
    assert [v.version for v in record.versions] == list(range(1, 14))
    assert len({v.ciphertext for v in record.versions}) == 13


def test_destroy_wipes_ciphertext_and_vacuums(postgres_url: str) -> None:
    keys = SqlKeyStore(open_store(postgres_url))
    keys.insert(
        KeyRecord(
            "k", KeyKind.DATASET, KeyState.ACTIVE, 1, NOW, NOW, None, (KeyVersion(1, "vault:v1:a", 1, NOW),)
        )
    )
    destroyed = keys.set_state("k", KeyState.DESTROYED, NOW, lambda _r: None)
    assert destroyed.state is KeyState.DESTROYED and destroyed.versions[0].ciphertext is None
    with pytest.raises(KmsError) as info:
        keys.add_version("k", WrappedKey("vault:v1:b", 1), NOW, require_usable)
    assert info.value.code is Code.KEY_DESTROYED


def test_writers_queue_across_replicas_and_readers_do_not_wait(postgres_url: str) -> None:
    first, second = open_store(postgres_url), open_store(postgres_url)
    events: list[str] = []
    holding = threading.Event()

    def hold() -> None:
        with first.transaction() as conn:
            conn.execute(insert(schema.keys).values(**KEY_ROW, created_at=NOW, updated_at=NOW))
            holding.set()
            time.sleep(0.3)
            events.append("first commits")

    def write() -> None:
        holding.wait()
        with second.transaction() as conn:
            events.append("second writes")
            seen = conn.execute(text("SELECT count(*) FROM keys")).scalar()
            events.append(f"second sees {seen}")

    threads = [threading.Thread(target=hold), threading.Thread(target=write)]
    for t in threads:
        t.start()
    holding.wait()
    with second.reader() as conn:  # a snapshot from before the first commit, without waiting for it
        events.append(f"reader sees {conn.execute(text('SELECT count(*) FROM keys')).scalar()}")
    for t in threads:
        t.join()
    assert events.index("reader sees 0") < events.index("first commits")
    assert events[-3:] == ["first commits", "second writes", "second sees 1"]


def test_readers_are_read_only(postgres_url: str) -> None:
    store = open_store(postgres_url)
    with pytest.raises(StorageError), store.reader() as conn:
        conn.execute(insert(schema.keys).values(**KEY_ROW, created_at=NOW, updated_at=NOW))


def test_bad_credentials_and_urls_fail_without_echoing_the_password(pg_server: PostgresServer) -> None:
    url = pg_server.url("postgres").replace(pg_server.password, "not-the-Secret-42")
    with pytest.raises(StorageError) as info:
        open_store(url)
    assert info.value.code is Code.STORAGE_ERROR
    assert "not-the-Secret-42" not in str(info.value) and "not-the-Secret-42" not in info.value.hint
    for bad in ("mysql://u:pw-Secret@h/db", "postgresql+asyncpg://u:pw-Secret@h/db", "sqlite://"):
        with pytest.raises(StorageError) as info:
            open_store(bad)
        assert "pw-Secret" not in str(info.value)
    assert pg_server.password not in repr(open_store(pg_server.create_database("shown")))


def test_ledger_positions_are_64_bit(postgres_url: str) -> None:
    """Migration 5: at a thousand releases a second a 32-bit sequence runs out in under a month."""
    store = open_store(postgres_url)
    with store.reader() as conn:
        types = {
            (r.table_name, r.column_name): r.data_type
            for r in conn.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE (table_name, column_name) IN (('audit_entries', 'seq'), ('audit_nodes', 'idx'), "
                    "('audit_head', 'size'), ('audit_checkpoints', 'size'))"
                )
            )
        }
    assert set(types.values()) == {"bigint"} and len(types) == 4
    far = 2**40
    entry = b'{"fields":{"key_version":1,"purpose":"read"},"kind":"release.grant"}'
    with store.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_entries (seq, time, kind, decision, node_id, key_name, reason_codes, "
                "canonical, leaf_hash) VALUES (:seq, '2026-01-02T03:04:05.678901Z', 'release.grant', "
                "'grant', 'n-1', 'dataset/train', ' ', :canonical, :leaf)"
            ),
            {"seq": far, "canonical": entry, "leaf": b"\x00" * 32},
        )
    with store.reader() as conn:  # the release views were made again over the wider column
        row = conn.execute(text("SELECT sequence, key_version, purpose FROM grants")).one()
    assert (row.sequence, str(row.key_version), row.purpose) == (far, "1", "read")
    store.close()
