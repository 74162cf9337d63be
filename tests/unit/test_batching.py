"""The batcher behind unwrap coalescing and group commit: concurrent submissions share batches, each
caller gets its own result or exception, and a failing batch fails every caller in it."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from kms.batching import Batcher
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
