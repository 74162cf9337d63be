"""Coalesce concurrent calls into batches and wake each caller with its own result or exception.

``LoopBatcher`` gathers coroutines on the event loop: the release path (``kms.usecases.grants``) uses it for
OpenBao transit unwraps (one ``batch_input`` decrypt instead of N HTTP calls) plus one commit per batch.
``Batcher`` does the same for threads (a collector thread hands groups of items to one batch function):
``kms.sql.group_commit`` uses it for small writes such as denials and audit entries (one durable
SQLite commit instead of N fsyncs); there a window bounds the added latency. ``LoopBatcher`` waits for
nothing: its batches form while the previous one runs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kms.errors import Code, KmsError

T = TypeVar("T")
R = TypeVar("R")

# The batch function returns one entry per item: a result, or the exception that item raises.
BatchFn = Callable[[Sequence[T]], Sequence["R | BaseException"]]
AsyncBatchFn = Callable[[Sequence[T]], Coroutine[Any, Any, Sequence["R | BaseException"]]]


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: Future[R]


_STOP = object()


class Batcher(Generic[T, R]):
    """``submit(item)`` blocks until the batch holding it ran; at most ``max_batch`` items per call, and
    a batch waits at most ``window`` seconds for company. ``workers`` batches may run at once."""

    def __init__(
        self,
        fn: BatchFn[T, R],
        *,
        name: str,
        window: float = 0.002,
        max_batch: int = 128,
        workers: int = 1,
        timeout: float = 30.0,
    ) -> None:
        self._fn = fn
        self._name = name
        self._window = window
        self._max = max_batch
        self._timeout = timeout
        self._queue: queue.SimpleQueue[_Job[T, R] | object] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-batch")
        self._slots = threading.Semaphore(workers)
        self._closed = False
        self._thread = threading.Thread(target=self._collect, name=f"{name}-collector", daemon=True)
        self._thread.start()

    def submit_future(self, item: T) -> Future[R]:
        """Queue ``item``; the future resolves when its batch ran (for callers that await instead)."""
        if self._closed:
            raise KmsError(f"{self._name} batcher is stopped", code=Code.SERVER_OVERLOADED)
        job: _Job[T, R] = _Job(item, Future())
        self._queue.put(job)
        return job.future

    def submit(self, item: T) -> R:
        future = self.submit_future(item)
        try:
            return future.result(timeout=self._timeout)
        except TimeoutError:
            raise KmsError(
                f"{self._name} did not complete within {self._timeout:.0f} s", code=Code.SERVER_OVERLOADED
            ) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout=5)
            self._pool.shutdown(wait=True)

    def _collect(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Job[T, R]] = [first]  # type: ignore[list-item]
            deadline = time.monotonic() + self._window  # the window runs from the first item's arrival
            self._slots.acquire()  # while every worker is busy, keep gathering: the batch only grows
            # Sleep out what is left of the window, then drain: one wake-up per batch instead of one per
            # item (each wake-up is a GIL hand-off that stalls the request threads / event loop).
            remaining = deadline - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            stop = False
            while len(batch) < self._max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            self._pool.submit(self._run, batch)
            if stop:
                return

    def _run(self, batch: list[_Job[T, R]]) -> None:
        try:
            results = _outcomes(self._name, len(batch), lambda: self._fn([job.item for job in batch]))
        finally:
            self._slots.release()
        _settle([job.future for job in batch], results)


def _outcomes(name: str, count: int, run: Callable[[], Sequence[Any]]) -> Sequence[Any]:
    """One result or exception per item; if the batch itself failed (or miscounted), that exception for
    every item, so every caller learns it."""
    try:
        results = run()
        if len(results) != count:
            raise KmsError(
                f"{name} returned {len(results)} results for {count} items", code=Code.INTERNAL_ERROR
            )
    except BaseException as exc:
        return [exc] * count
    return results


def _settle(futures: Sequence[Future[Any] | asyncio.Future[Any]], results: Sequence[Any]) -> None:
    for future, result in zip(futures, results, strict=True):
        if future.done():  # an asyncio caller that was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class LoopBatcher(Generic[T, R]):
    """The asyncio form of ``Batcher``: items are gathered on the event loop and one batch at a time
    runs the coroutine ``fn`` (which may hand blocking parts to a thread); every caller is answered
    from the loop when its batch ends, so no thread wakes the loop once per item (each cross-thread
    wake-up is a GIL hand-off and a context switch).

    There is no timer: an item that finds no batch running goes at once, since waiting for company
    that may not come is pure latency. Items that arrive while a batch runs gather and go together the
    moment it ends (at most ``max_batch`` per batch). Batches so grow by themselves with the load, to
    what arrives during one batch's run, and the per-batch costs (one OpenBao request, one commit) are
    shared by every caller waiting then; at light load each item goes alone, with nothing added."""

    def __init__(self, fn: AsyncBatchFn[T, R], *, name: str, max_batch: int = 128) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._fn = fn
        self._name = name
        self._max = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[Sequence[R | BaseException]] | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        if self._closed:
            raise KmsError(f"{self._name} batcher is stopped", code=Code.SERVER_OVERLOADED)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start()
        return await future

    def close(self) -> None:
        self._closed = True

    def _start(self) -> None:
        """Start a batch of what waits, unless one is running (its end starts the next)."""
        if self._running is not None or not self._waiting:
            return
        batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
        self._running = asyncio.get_running_loop().create_task(self._fn([item for item, _ in batch]))
        self._running.add_done_callback(lambda finished: self._resolve(batch, finished))

    def _resolve(
        self, batch: list[tuple[T, asyncio.Future[R]]], finished: asyncio.Task[Sequence[R | BaseException]]
    ) -> None:
        self._running = None
        _settle([future for _, future in batch], _outcomes(self._name, len(batch), finished.result))
        self._start()  # what gathered while this batch ran goes now
