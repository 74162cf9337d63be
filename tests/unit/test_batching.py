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

            batcher: LoopBatcher[int, int] = LoopBatcher(run, name="test", max_batch=8)
            outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
        return {i: str(o) if isinstance(o, ValueError) else o for i, o in enumerate(outcomes)}

    assert asyncio.run(main()) == {i: ("odd 7" if i == 7 else i * i) for i in range(20)}
    # the first goes alone at once; the rest gather behind it, max_batch bounds a batch, nothing is lost
    assert sizes == [1, 8, 8, 3]
    assert threads == {"batch_0"}  # one batch at a time, in the thread the batch function chose


def test_loop_batcher_fails_every_caller_of_a_failing_or_miscounted_batch() -> None:
    async def boom(items: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("backend down")

    async def nothing(items: Sequence[int]) -> list[int | BaseException]:
        return []

    async def main(fn: Callable[[Sequence[int]], Any]) -> list[object]:
        batcher: LoopBatcher[int, int] = LoopBatcher(fn, name="test")
        return list(await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True))

    assert [str(e) for e in asyncio.run(main(boom))] == ["backend down", "backend down"]
    miscounted = asyncio.run(main(nothing))
    assert all(isinstance(e, KmsError) and e.code.value == "INTERNAL_ERROR" for e in miscounted)


def test_loop_batcher_refuses_after_close() -> None:
    async def echo(items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    async def main() -> tuple[object, object]:
        batcher: LoopBatcher[int, int] = LoopBatcher(echo, name="test")
        served = await batcher.submit(1)
        batcher.close()
        refused = await asyncio.gather(batcher.submit(2), return_exceptions=True)
        return served, refused[0]

    served, refused = asyncio.run(main())
    assert served == 1
    assert isinstance(refused, KmsError) and refused.code.value == "SERVER_OVERLOADED"


def test_loop_batcher_sends_a_lone_item_at_once_and_gathers_only_behind_a_running_batch() -> None:
    """No timer: a batcher that gave a lone item any window to find company would not have started
    its batch after a few loop turns; here it has, every time."""
    started: list[list[int]] = []
    release = asyncio.Event()

    async def record(items: Sequence[int]) -> list[int | BaseException]:
        started.append(list(items))
        await release.wait()
        return list(items)

    async def turns(count: int = 3) -> None:
        for _ in range(count):
            await asyncio.sleep(0)

    async def main() -> None:
        batcher: LoopBatcher[int, int] = LoopBatcher(record, name="test", max_batch=3)
        release.set()
        for i in range(3):  # one at a time, nobody else asking: each goes alone, at once
            call = asyncio.ensure_future(batcher.submit(i))
            await turns()
            assert started[-1] == [i]
            assert await call == i
        release.clear()
        first = asyncio.ensure_future(batcher.submit(10))
        await turns()
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(11, 16)]
        await turns()
        assert started[3:] == [[10]]  # the others wait behind the running batch
        release.set()
        assert await asyncio.gather(first, *rest) == list(range(10, 16))  # none is lost

    asyncio.run(main())
    assert started == [[0], [1], [2], [10], [11, 12, 13], [14, 15]]


def test_loop_batcher_starts_what_gathered_when_a_batch_fails() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def flaky(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        if len(calls) == 1:
            await gate.wait()
            raise RuntimeError("backend down")
        return list(items)

    async def main() -> list[object]:
        batcher: LoopBatcher[int, int] = LoopBatcher(flaky, name="test")
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)
        later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(first, *later, return_exceptions=True))

    outcomes = asyncio.run(main())
    assert calls == [[1], [2, 3]]
    assert [str(o) for o in outcomes] == ["backend down", "2", "3"]


def test_loop_batcher_refuses_a_max_batch_below_one() -> None:
    async def echo(items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError):
        LoopBatcher(echo, name="test", max_batch=0)
