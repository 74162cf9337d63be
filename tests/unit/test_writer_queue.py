"""SQLite writers queue in the kernel before BEGIN IMMEDIATE: one turn at a time within a process and
across processes, a bounded wait that ends in a coded error, and the turn is given back on failure."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kms.errors import StorageError
from kms.sql.store import open_store
from kms.sql.writer_queue import WriterQueue

HOLD_IN_CHILD = """
import sys, time
from pathlib import Path
from kms.sql.writer_queue import WriterQueue
with WriterQueue(Path(sys.argv[1]), 5).turn():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_threads_take_turns(tmp_path: Path) -> None:
    queue = WriterQueue(tmp_path / "db-writer", timeout=5)
    inside = 0
    overlaps: list[int] = []

    def write() -> None:
        nonlocal inside
        for _ in range(50):
            with queue.turn():
                inside += 1
                overlaps.append(inside)
                time.sleep(0)
                inside -= 1

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 200 and max(overlaps) == 1


def test_another_process_holding_the_turn_makes_a_writer_wait_then_fail(tmp_path: Path) -> None:
    path = tmp_path / "db-writer"
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_IN_CHILD, str(path), "1.0"], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(StorageError) as info, WriterQueue(path, timeout=0.2).turn():
            pass
        assert info.value.code.value == "STORAGE_ERROR" and "another process" in info.value.message
        patient = WriterQueue(path, timeout=10)
        with patient.turn():  # waits for the child to let go, then gets it
            assert child.poll() is not None or child.wait(5) == 0
    finally:
        child.kill()
        child.wait()


def test_the_turn_is_returned_when_the_transaction_fails(tmp_path: Path) -> None:
    queue = WriterQueue(tmp_path / "db-writer", timeout=0.5)
    with pytest.raises(RuntimeError), queue.turn():
        raise RuntimeError("write failed")
    with queue.turn():  # neither the thread lock nor the flock is left held
        pass


def test_sqlite_stores_queue_their_writers(tmp_path: Path) -> None:
    store = open_store(tmp_path / "sovereign.db")
    try:
        with store.transaction():
            assert (tmp_path / "sovereign.db-writer").exists()
            other = WriterQueue(tmp_path / "sovereign.db-writer", timeout=0.1)
            with pytest.raises(StorageError), other.turn():  # another queue on the same file must wait
                pass
    finally:
        store.close()
