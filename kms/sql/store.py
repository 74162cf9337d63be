"""Engine, transactions and migrations. The only place that knows which database is underneath.

Both databases give the same guarantee to the SQL modules: write transactions run one at a time, in a
total order, each seeing everything committed before it. SQLite gets it from ``BEGIN IMMEDIATE``;
PostgreSQL, where several control-plane replicas share one database, from a transaction-scoped advisory
lock taken first thing in every write transaction (so read-check-write code such as nonce consumption,
node changes and key rotation stays correct across replicas without per-query locking). Reads run in a
read-only REPEATABLE READ snapshot and never wait for writers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, insert, inspect, select, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from kms.errors import Code, KmsError, StorageError
from kms.sql import migrations, schema
from kms.sql.writer_queue import WriterQueue

# pg_advisory_xact_lock key that serialises writers (an arbitrary constant that fits a signed bigint)
WRITER_LOCK = 0x3C1E_59F0_2A6B_7D41
# how long a writer waits for the lock (SQLite: busy_timeout) before the call fails as unavailable
LOCK_TIMEOUT_MS = 5000


class Store:
    """A migrated database. ``transaction()`` for writes, ``reader()`` for consistent reads."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] | None = None,
        writers: WriterQueue | None = None,
    ) -> None:
        self.engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))
        self._writers = writers  # SQLite: writers queue here before BEGIN IMMEDIATE

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()
        if self._writers is not None:
            self._writers.close()

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[Connection]:
        """One write transaction; writers queue (SQLite: BEGIN IMMEDIATE; PostgreSQL: the writer lock).
        ``wait=False`` (SQLite): raise ``WriterBusy`` at once instead of queueing behind another writer."""
        with self._guard(), self._turn(wait), self.engine.connect() as conn, conn.begin():
            if self.is_postgresql:
                conn.execute(_TAKE_WRITER_LOCK, {"key": WRITER_LOCK})
            yield conn

    def _turn(self, wait: bool) -> contextlib.AbstractContextManager[None]:
        return self._writers.turn(wait=wait) if self._writers is not None else contextlib.nullcontext()

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """One read transaction (a consistent snapshot that does not block writers)."""
        options: dict[str, Any] = {"sovereign_read_only": True}
        if self.is_postgresql:
            options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with (
            self._guard(),
            self.engine.connect().execution_options(**options) as conn,
            conn.begin(),
        ):
            yield conn

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except KmsError:
            raise
        except IntegrityError as exc:
            raise StorageError(
                f"constraint violated: {type(exc.orig).__name__}: {str(exc.orig)[:200]}",
                code=Code.STORAGE_CONFLICT,
            ) from None
        except OperationalError as exc:
            raise StorageError(f"database unavailable: {str(exc.orig)[:200]}") from None
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {type(exc).__name__}: {str(exc)[:200]}") from None

    def schema_version(self) -> int:
        with self.reader() as conn:
            return _current_version(conn)

    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied. Refuses a newer database."""
        applied: list[int] = []
        with self.transaction() as conn:
            current = _current_version(conn)
            if current > migrations.latest_version():
                raise StorageError(
                    f"database schema is version {current}, this install knows up to "
                    f"{migrations.latest_version()}",
                    code=Code.STORAGE_SCHEMA_TOO_NEW,
                )
            for migration in migrations.MIGRATIONS:
                if migration.version <= current:
                    continue
                migration.apply(conn)
                conn.execute(
                    insert(schema.schema_version).values(
                        version=migration.version, name=migration.name, applied_at=self._clock()
                    )
                )
                applied.append(migration.version)
        return applied

    def checkpoint(self) -> None:
        """After wiping material: SQLite folds the WAL back into the file and truncates it; PostgreSQL
        vacuums, so dead row versions become reusable space (their bytes stay until overwritten, and in
        the server's WAL and backups: see deploy/postgresql.md)."""
        if self.is_sqlite:
            with self._guard(), self.engine.connect() as conn:
                # on the raw connection: a checkpoint cannot run inside a transaction
                raw: Any = conn.connection.dbapi_connection
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        elif self.is_postgresql:
            with (
                self._guard(),
                self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
            ):
                conn.exec_driver_sql("VACUUM")


_TAKE_WRITER_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def _current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(select(func.max(schema.schema_version.c.version))).scalar() or 0)


def sqlite_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite+pysqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is unreliable)
        cur = dbapi_conn.cursor()
        for pragma in (
            "journal_mode = WAL",
            "foreign_keys = ON",
            "synchronous = FULL",  # a commit survives power loss: grants must be durable before replies
            "busy_timeout = 5000",
            "secure_delete = ON",  # overwritten or deleted content is zeroed, not left in free pages
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get("sovereign_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def postgresql_engine(url: URL, *, pool_size: int = 8) -> Engine:
    """psycopg 3 with a small pool; connections are checked before use, so a database restart or a
    failover costs one failed check, not a failed request."""
    engine = create_engine(
        url.set(drivername="postgresql+psycopg"),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=LOCK_TIMEOUT_MS / 1000,
        connect_args={"connect_timeout": 5, "application_name": "sovereign-control-plane"},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            for setting in (
                "SET TIME ZONE 'UTC'",
                f"SET lock_timeout = {LOCK_TIMEOUT_MS}",
                "SET idle_in_transaction_session_timeout = 60000",  # a stuck replica cannot hold the lock
                "SET synchronous_commit = on",  # a grant is durable (and replicated) before its reply
            ):
                cur.execute(setting)
        dbapi_conn.commit()

    return engine


def open_store(
    target: str | Path, *, migrate: bool = True, clock: Callable[[], datetime] | None = None
) -> Store:
    """Open a SQLite file (a path or ``sqlite:///PATH``) or a PostgreSQL database
    (``postgresql+psycopg://USER@HOST:PORT/DB``), and bring its schema up to date."""
    shown = str(target)
    try:
        if "://" in str(target):
            url = make_url(str(target))
            shown = url.render_as_string(hide_password=True)
            engine = _engine_for(url)
        else:
            engine = _sqlite_file(Path(target))
    except (SQLAlchemyError, OSError, ValueError) as exc:
        message = str(exc).replace(str(target), shown)
        raise StorageError(f"cannot open database {shown}: {message[:300]}") from None
    writers = None
    if engine.dialect.name == "sqlite" and engine.url.database:
        db = Path(engine.url.database)
        writers = WriterQueue(db.with_name(db.name + "-writer"), LOCK_TIMEOUT_MS / 1000)
    store = Store(engine, clock=clock, writers=writers)
    if migrate:
        store.migrate()
    return store


def _engine_for(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("an SQLite database must be a file: sqlite:///PATH")
        return _sqlite_file(Path(url.database))
    if url.get_backend_name() == "postgresql":
        if url.get_driver_name() != "psycopg" or not url.database:
            raise ValueError("use postgresql+psycopg://USER@HOST:PORT/DATABASE")
        return postgresql_engine(url)
    raise ValueError(f"unsupported database {url.get_backend_name()!r}: use a SQLite path or PostgreSQL")


def _sqlite_file(path: Path) -> Engine:
    engine = sqlite_engine(path)
    _restrict_file(path)
    return engine


def _restrict_file(path: Path) -> None:
    # The file holds only wrapped keys, but its metadata is still nobody else's business.
    if not path.exists():
        path.touch(mode=0o600)
