"""The batchers behind unwrap coalescing and group commit (threads) and the release servicer (asyncio):
concurrent submissions share batches, each caller gets its own result or exception, and a failing batch
fails every caller in it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from kms.batching import Batcher, LoopBatcher
from kms.errors import KmsError


def test_concurrent_items_share_batches_and_get_their_own_results() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def square(items: Sequence[int]) -> list[int | BaseException]:
        gate.wait(1)
        sizes.append(len(items))
        return [ValueError(f"odd {i}") if i == 7 else i * i for i in items]

    batcher: Batcher[int, int] = Batcher(square, name="test", window=0.05, max_batch=64)
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher.submit(i)
        except ValueError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    batcher.close()
    assert results == {i: ("odd 7" if i == 7 else i * i) for i in range(20)}
    assert sum(sizes) == 20 and max(sizes) > 1


def test_a_failing_batch_fails_each_caller() -> None:
    def boom(items: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("backend down")

    batcher: Batcher[int, int] = Batcher(boom, name="test")
    with pytest.raises(RuntimeError, match="backend down"):
        batcher.submit(1)
    batcher.close()
    with pytest.raises(KmsError) as info:
        batcher.submit(2)
    assert info.value.code.value == "SERVER_OVERLOADED"


def test_wrong_result_count_is_an_internal_error() -> None:
    batcher: Batcher[int, int] = Batcher(lambda items: [], name="test")
    with pytest.raises(KmsError) as info:
        batcher.submit(1)
    assert info.value.code.value == "INTERNAL_ERROR"
    batcher.close()


def test_loop_batcher_gathers_on_the_loop_and_answers_each_caller() -> None:
    sizes: list[int] = []
    threads: set[str] = set()

    def square(items: Sequence[int]) -> list[int | BaseException]:
        threads.add(threading.current_thread().name)
        sizes.append(len(items))
        return [ValueError(f"odd {i}") if i == 7 else i * i for i in items]

    async def main() -> dict[int, object]:
        with ThreadPoolExecutor(1, thread_name_prefix="batch") as pool:
            batcher: LoopBatcher[int, int] = LoopBatcher(
                square, name="test", executor=pool, window=0.01, max_batch=8
            )
            outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
        return {i: str(o) if isinstance(o, ValueError) else o for i, o in enumerate(outcomes)}

    assert asyncio.run(main()) == {i: ("odd 7" if i == 7 else i * i) for i in range(20)}
    assert sorted(sizes, reverse=True) == [8, 8, 4]  # max_batch bounds a batch; nothing is lost
    assert all(name.startswith("batch") for name in threads)  # the batch runs off the event loop


def test_loop_batcher_fails_every_caller_of_a_failing_or_miscounted_batch() -> None:
    def boom(items: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("backend down")

    async def main(fn: Callable[[Sequence[int]], Sequence[int | BaseException]]) -> list[object]:
        with ThreadPoolExecutor(1) as pool:
            batcher: LoopBatcher[int, int] = LoopBatcher(fn, name="test", executor=pool, window=0.001)
            return list(await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True))

    assert [str(e) for e in asyncio.run(main(boom))] == ["backend down", "backend down"]
    miscounted = asyncio.run(main(lambda items: []))
    assert all(isinstance(e, KmsError) and e.code.value == "INTERNAL_ERROR" for e in miscounted)


def test_loop_batcher_refuses_after_close_and_fails_callers_when_its_executor_is_gone() -> None:
    async def main() -> tuple[object, object]:
        pool = ThreadPoolExecutor(1)
        pool.shutdown()
        batcher: LoopBatcher[int, int] = LoopBatcher(lambda items: items, name="test", executor=pool)
        stranded = await asyncio.gather(batcher.submit(1), return_exceptions=True)
        batcher.close()
        refused = await asyncio.gather(batcher.submit(2), return_exceptions=True)
        return stranded[0], refused[0]

    for outcome in asyncio.run(main()):
        assert isinstance(outcome, KmsError) and outcome.code.value == "SERVER_OVERLOADED"
