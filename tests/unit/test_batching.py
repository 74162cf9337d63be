"""The batchers behind unwrap coalescing and group commit (threads) and the release servicer (asyncio):
concurrent submissions share batches, each caller gets its own result or exception, and a failing batch
fails every caller in it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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

            async def run(items: Sequence[int]) -> list[int | BaseException]:
                return await asyncio.get_running_loop().run_in_executor(pool, square, items)

            batcher: LoopBatcher[int, int] = LoopBatcher(run, name="test", window=0.01, max_batch=8)
            outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
        return {i: str(o) if isinstance(o, ValueError) else o for i, o in enumerate(outcomes)}

    assert asyncio.run(main()) == {i: ("odd 7" if i == 7 else i * i) for i in range(20)}
    assert sorted(sizes, reverse=True) == [8, 8, 4]  # max_batch bounds a batch; nothing is lost
    assert threads == {"batch_0"}  # one batch at a time, in the thread the batch function chose


def test_loop_batcher_fails_every_caller_of_a_failing_or_miscounted_batch() -> None:
    async def boom(items: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("backend down")

    async def nothing(items: Sequence[int]) -> list[int | BaseException]:
        return []

    async def main(fn: Callable[[Sequence[int]], Any]) -> list[object]:
        batcher: LoopBatcher[int, int] = LoopBatcher(fn, name="test", window=0.001)
        return list(await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True))

    assert [str(e) for e in asyncio.run(main(boom))] == ["backend down", "backend down"]
    miscounted = asyncio.run(main(nothing))
    assert all(isinstance(e, KmsError) and e.code.value == "INTERNAL_ERROR" for e in miscounted)


def test_loop_batcher_refuses_after_close() -> None:
    async def echo(items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    async def main() -> tuple[object, object]:
        batcher: LoopBatcher[int, int] = LoopBatcher(echo, name="test", window=0.001)
        served = await batcher.submit(1)
        batcher.close()
        refused = await asyncio.gather(batcher.submit(2), return_exceptions=True)
        return served, refused[0]

    served, refused = asyncio.run(main())
    assert served == 1
    assert isinstance(refused, KmsError) and refused.code.value == "SERVER_OVERLOADED"


def test_loop_batcher_keeps_a_batch_open_while_items_arrive_and_sends_a_lone_one_when_idle() -> None:
    sizes: list[int] = []

    async def record(items: Sequence[int]) -> list[int | BaseException]:
        sizes.append(len(items))
        return list(items)

    async def trickle(batcher: LoopBatcher[int, int], spacing: float, count: int) -> None:
        calls = []
        for i in range(count):
            calls.append(asyncio.ensure_future(batcher.submit(i)))
            await asyncio.sleep(spacing)
        await asyncio.gather(*calls)

    async def main() -> None:
        # items 5 ms apart never leave the batch idle for 250 ms: one batch, well before the 60 s window
        await trickle(LoopBatcher(record, name="test", window=60, idle=0.25), 0.005, 10)
        # items 500 ms apart: each one goes alone after the 50 ms idle gap, not after the 5 s window
        await trickle(LoopBatcher(record, name="test", window=5, idle=0.05), 0.5, 3)

    asyncio.run(main())
    assert sizes == [10, 1, 1, 1]


def test_loop_batcher_sends_at_once_while_nobody_else_is_asking() -> None:
    sizes: list[int] = []

    async def record(items: Sequence[int]) -> list[int | BaseException]:
        sizes.append(len(items))
        await asyncio.sleep(0.01)
        return list(items)

    async def main() -> None:
        batcher: LoopBatcher[int, int] = LoopBatcher(record, name="test", window=5, idle=0.05)
        await batcher.submit(1)  # the first waits out the idle gap: maybe others are coming
        # the last batch was a lone one, so the next item goes at once; one sent in the same breath
        # finds that batch running and gathers for the next
        await asyncio.gather(batcher.submit(2), batcher.submit(3))
        await asyncio.gather(*(batcher.submit(i) for i in range(4, 8)))  # 4 alone, then 5-7 together
        await asyncio.gather(*(batcher.submit(i) for i in range(8, 12)))  # no longer alone: all four

    asyncio.run(main())
    assert sizes == [1, 1, 1, 1, 3, 4]
