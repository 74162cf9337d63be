"""Group commit: many small write jobs from concurrent requests share one durable transaction.

Each job runs inside its own SAVEPOINT, so a job that fails (a replayed request id, a node that changed)
rolls back alone and its caller gets its own exception, while the others commit together. A caller
returns only after the shared COMMIT (``synchronous = FULL``): what it wrote is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kms.batching import Batcher
from kms.errors import Code, KmsError, StorageError
from kms.sql.store import Store

R = TypeVar("R")
Job = Callable[[Connection], Any]


class GroupCommit:
    def __init__(self, store: Store, *, window: float = 0.002, max_batch: int = 256) -> None:
        self._store = store
        self._batcher: Batcher[Job, Any] = Batcher(
            self._commit, name="group-commit", window=window, max_batch=max_batch, workers=1
        )

    def run(self, job: Callable[[Connection], R]) -> R:
        """Run ``job(conn)`` in the next shared transaction; return its result once committed."""
        result: R = self._batcher.submit(job)
        return result

    def submit(self, job: Callable[[Connection], R]) -> Future[R]:
        """Like ``run`` but returns a future (for callers that await)."""
        return self._batcher.submit_future(job)

    def close(self) -> None:
        self._batcher.close()

    def _commit(self, jobs: Sequence[Job]) -> list[Any]:
        out: list[Any] = []
        with self._store.transaction() as conn:
            for job in jobs:
                savepoint = conn.begin_nested()
                try:
                    out.append(job(conn))
                    savepoint.commit()
                except (KmsError, SQLAlchemyError) as exc:
                    savepoint.rollback()
                    out.append(_mapped(exc))
        return out


def _mapped(exc: BaseException) -> BaseException:
    if isinstance(exc, IntegrityError):
        return StorageError(f"constraint violated: {str(exc.orig)[:200]}", code=Code.STORAGE_CONFLICT)
    if isinstance(exc, SQLAlchemyError):
        return StorageError(f"database error: {type(exc).__name__}")
    return exc
