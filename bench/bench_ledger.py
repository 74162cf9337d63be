"""Audit ledger appends per second with durability on, against plain SQLite inserts of the same bytes.

Run: ``.venv/bin/python -m bench.bench_ledger [--quick]``. ``THREADS`` writer threads append realistic
``release.grant`` entries (~500 bytes) for a fixed time through the group commit (``kms.sql.audit_append``:
sequence, canonical encoding, leaf hash, subtree hashes and the tree head in the same transaction;
``synchronous = FULL``, one fsync per batch). The baseline, in the same run, is the same threads inserting
the same canonical bytes as plain rows into a one-table SQLite file through the same group commit and
durability: what recording a grant costs without a ledger. Prints one JSON row.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, insert

from kms.audit.draft import Draft
from kms.audit.entry import Decision, Entry, Kind, format_time
from kms.sql import open_store
from kms.sql.audit_append import AuditLedger
from kms.sql.audit_reader import recover
from kms.sql.group_commit import GroupCommit
from kms.sql.store import Store, sqlite_engine

THREADS = 64
TARGET = 0.5  # ledger appends/s at least half of bare durable inserts of the same bytes
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def grant(i: int) -> Draft:
    node = f"n-{i % 97:024x}"
    return Draft(
        Kind.RELEASE_GRANT, f"node:{node}", Decision.GRANT, (),
        {"node_id": node, "key_name": "dataset/train", "key_version": 1, "purpose": "read",
         "request_id": f"{i:032x}", "bao_request_id": f"{i:08x}-aaaa-bbbb-cccc-dddddddddddd",
         "bao_batch_index": i % 64, "bao_batch_size": 64, "lease_expiry": 1767225600,
         "policy_version": 1, "rule": "trainers-read"},
    )  # fmt: skip


def drive(seconds: float, call: Callable[[int], object]) -> int:
    done = [0] * THREADS
    stop = time.perf_counter() + seconds

    def loop(t: int) -> None:
        i = t
        while time.perf_counter() < stop:
            call(i)
            done[t] += 1
            i += THREADS

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done)


def ledger_rate(path: Path, seconds: float) -> tuple[float, int]:
    store = open_store(path)
    commit = GroupCommit(store)
    ledger = AuditLedger(store, commit, lambda: NOW)
    drive(0.2, lambda i: ledger.record(grant(i)))  # warm up
    start = time.perf_counter()
    count = drive(seconds, lambda i: ledger.record(grant(i)))
    rate = count / (time.perf_counter() - start)
    commit.close()
    size = recover(store).size  # the tree is whole
    store.close()
    return rate, size


def baseline_rate(path: Path, seconds: float) -> float:
    store = Store(sqlite_engine(path))  # same pragmas: WAL, synchronous = FULL
    md = MetaData()
    rows = Table("plain", md, Column("id", Integer, primary_key=True), Column("data", LargeBinary))
    md.create_all(store.engine)
    # the same entry bytes, encoded outside the timing: the baseline only stores them
    data = [Entry(i, format_time(NOW), Kind.RELEASE_GRANT, "node:n", Decision.GRANT, (), dict(grant(i).fields)).encode()
            for i in range(THREADS)]  # fmt: skip
    commit = GroupCommit(store)

    def put(i: int) -> None:
        blob = data[i % THREADS]
        commit.run(lambda conn: conn.execute(insert(rows).values(data=blob)))

    drive(0.2, put)
    start = time.perf_counter()
    count = drive(seconds, put)
    rate = count / (time.perf_counter() - start)
    commit.close()
    store.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per side instead of 10 s")
    args = parser.parse_args()
    seconds = 0.5 if os.environ.get("SOVEREIGN_BENCH_TINY") else 2.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        ours, size = ledger_rate(Path(tmp) / "ledger.sqlite", seconds)
        base = baseline_rate(Path(tmp) / "plain.sqlite", seconds)
    ratio = ours / base
    print(
        json.dumps(
            {
                "work": f"audit ledger appends ({THREADS} writers, durable)",
                "entries": size,
                "ours": round(ours),
                "baseline": round(base),
                "unit": "appends/s",
                "ratio": round(ratio, 3),
                "target": TARGET,
                "met": ratio >= TARGET,
                "note": "group commit, synchronous=FULL on both sides; ours = seq + RFC 8785 entry + leaf and "
                "subtree hashes + tree head per entry, in the shared transaction; baseline = plain SQLite "
                "inserts of the same entry bytes through the same group commit",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
