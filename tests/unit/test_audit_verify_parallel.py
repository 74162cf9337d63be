"""The parallel verifier agrees with the sequential one: every case of test_audit_verify.py runs through both.

The test functions of ``unit.test_audit_verify`` are collected here again with that module's
``verify_export`` replaced by ``_both``: it writes the lines to a file, verifies the file sequentially and
with ``verify_export_file`` (two worker processes, small byte ranges so that ranges and checkpoints
straddle each other), asserts that both give the same report or the same error (type, code, message, line,
index), and asserts that the parallel pass itself, before any fallback, accepts exactly what the sequential
verifier accepts. Then it hands the sequential outcome back to the original test's own assertions.
"""

from __future__ import annotations

import itertools
import multiprocessing
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from unit import test_audit_verify as cases
from unit.test_audit_verify import *  # noqa: F403 - every case again, through _both

from kms.audit.checkpoint import AuditKeys, Checkpoint
from kms.audit.errors import ExportInvalid
from kms.audit.export import read_lines
from kms.audit.verify import VerifyReport, verify_export
from kms.audit.verify_parallel import _parallel, _Refused, line_ranges, verify_export_file

CHUNK = 700  # a few entry lines per range
POOL: list[ProcessPoolExecutor] = []


def _outcome(call: Callable[[], VerifyReport]) -> VerifyReport | tuple[object, ...]:
    try:
        return call()
    except Exception as err:
        return (type(err), getattr(err, "code", None), str(err), getattr(err, "line", None),
                getattr(err, "index", None), err)  # fmt: skip


def _both(
    lines: Iterable[bytes],
    keys: AuditKeys,
    *,
    trusted: Checkpoint | None = None,
    min_size: int | None = None,
    trusted_source: str = "checkpoint",
) -> VerifyReport:
    options = {"trusted": trusted, "min_size": min_size, "trusted_source": trusted_source}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.jsonl"
        path.write_bytes(b"".join(lines))

        def sequential() -> VerifyReport:
            with path.open("rb") as f:
                return verify_export(read_lines(f), keys, **options)  # type: ignore[arg-type]

        expected = _outcome(sequential)
        got = _outcome(
            lambda: verify_export_file(path, keys, executor=POOL[0], workers=2, chunk_bytes=CHUNK, **options)  # type: ignore[arg-type]
        )
        if isinstance(expected, tuple):
            assert isinstance(got, tuple) and got[:5] == expected[:5]
        else:
            assert got == expected
        direct = _outcome(
            lambda: _parallel(path, keys, POOL[0], workers=2, chunk_bytes=CHUNK, **options)  # type: ignore[arg-type]
        )
        if isinstance(expected, VerifyReport):
            assert direct == expected, "the parallel pass refused an export the sequential verifier accepts"
        else:
            assert isinstance(direct, tuple), (
                "the parallel pass accepted an export the sequential one refuses"
            )
            assert direct[0] in {_Refused, ExportInvalid}
    if isinstance(expected, tuple):
        raise expected[5]  # type: ignore[misc]
    return expected


@pytest.fixture(scope="module", autouse=True)
def _through_both() -> Iterator[None]:
    with (
        ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool,
        pytest.MonkeyPatch.context() as mp,
    ):
        POOL.append(pool)
        mp.setattr(cases, "verify_export", _both)
        yield
        POOL.clear()


def test_ranges_start_at_line_starts_and_cover_the_body(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"".join(cases.build(n=30, every=7)))
    data = path.read_bytes()
    body = data.index(b"\n") + 1
    ranges = list(line_ranges(path, body, CHUNK))
    assert len(ranges) > 3
    assert ranges[0][0] == body and ranges[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(data[start - 1 : start] == b"\n" for start, _ in ranges)


def test_a_large_export_verifies_in_parallel_with_the_same_report(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"".join(cases.build(n=500, every=37)))
    with path.open("rb") as f:
        expected = verify_export(read_lines(f), cases.KEYS)
    assert _parallel(path, cases.KEYS, POOL[0], workers=2, chunk_bytes=CHUNK, trusted=None, min_size=None,
                     trusted_source="checkpoint") == expected  # fmt: skip
    assert verify_export_file(path, cases.KEYS, workers=2, chunk_bytes=4096) == expected


def test_a_line_longer_than_the_limit_stops_the_parallel_pass(tmp_path: Path) -> None:
    lines = cases.build(n=20, every=5)
    lines[3] = lines[3][:-2] + b" " * (1 << 20) + b"}\n"
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"".join(lines))
    with pytest.raises(_Refused):
        _parallel(path, cases.KEYS, POOL[0], workers=2, chunk_bytes=CHUNK, trusted=None, min_size=None,
                  trusted_source="checkpoint")  # fmt: skip
    with pytest.raises(ExportInvalid) as info:
        verify_export_file(path, cases.KEYS, executor=POOL[0], workers=2, chunk_bytes=CHUNK)
    assert info.value.line == 4


class _DeadPool(ProcessPoolExecutor):
    """A pool whose workers died: every submission raises BrokenProcessPool."""

    def submit(self, *args: object, **kwargs: object) -> Any:
        raise BrokenProcessPool("a worker died")


def test_a_dead_worker_falls_back_to_the_sequential_verifier(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"".join(cases.build(n=20, every=5)))
    with path.open("rb") as f:
        expected = verify_export(read_lines(f), cases.KEYS)
    with _DeadPool(1) as pool:
        assert verify_export_file(path, cases.KEYS, executor=pool, workers=2, chunk_bytes=CHUNK) == expected
