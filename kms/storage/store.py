"""Engine, transactions and migrations. The only place that knows which database is underneath."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, insert, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from kms.errors import Code, KmsError, StorageError
from kms.storage import migrations, schema


class Store:
    """A migrated database. ``transaction()`` for writes, ``reader()`` for consistent reads."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction (SQLite: BEGIN IMMEDIATE, so writers queue instead of deadlocking)."""
        with self._guard(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """One read transaction (a consistent snapshot, does not block writers under WAL)."""
        with (
            self._guard(),
            self.engine.connect().execution_options(sovereign_read_only=True) as conn,
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
        """Fold the WAL back into the database file and truncate it (after wiping material)."""
        if self.is_sqlite:
            with self._guard(), self.engine.connect() as conn:
                # on the raw connection: a checkpoint cannot run inside a transaction
                raw: Any = conn.connection.dbapi_connection
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").close()


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


def open_store(
    target: str | Path, *, migrate: bool = True, clock: Callable[[], datetime] | None = None
) -> Store:
    """Open a SQLite file (a path) or any SQLAlchemy URL, and bring its schema up to date."""
    text = str(target)
    try:
        if "://" in text:
            engine = create_engine(text)
        else:
            path = Path(text)
            engine = sqlite_engine(path)
            _restrict_file(path)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise StorageError(f"cannot open database {target}: {exc}") from None
    store = Store(engine, clock=clock)
    if migrate:
        store.migrate()
    return store


def _restrict_file(path: Path) -> None:
    # The file holds only wrapped keys, but its metadata is still nobody else's business.
    if not path.exists():
        path.touch(mode=0o600)
