"""Key release at 1, 8, 64 and 256 concurrent nodes, and control-plane memory with many registered nodes.

Run: ``./dev bench --only scaling_release``. Starts an OpenBao dev server and ``sovereign serve`` (as
``bench.bench_release`` does), registers simulated SNP nodes, then for each concurrency N: N nodes release
keys for a fixed time (each request freshly signed, lease-based), and in the same run N threads make bare
hvac ``transit/decrypt`` calls (the baseline). Then it registers nodes up to the memory count (full:
10,000; quick: 1,000) and compares the server's resident memory with its own idle figure right after
start. Prints one JSON line per concurrency and one for memory.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.simulate import SimulatedPki
from bench.bench_release import KEY, baseline, percentile, run_threads
from bench.peers import emit, note, row, tiny
from enclave.providers.simulated import simulated_snp
from proto.sovereign.v1 import common_pb2
from sovereign.client import AdminClient
from sovereign.client.records import KeyKind
from tests.e2e.node_client import NodeClient
from tests.e2e.world import SNP_MEASUREMENT, ServerProcess, prepare, start_bao

MIB = 1 << 20


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = [
                int(c)
                for task in Path(f"/proc/{current}/task").iterdir()
                for c in (task / "children").read_text().split()
            ]
        except FileNotFoundError:
            continue
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        total += int(line.split()[1]) * 1024
        pending.extend(children)
    return total


def register(nodes: list[NodeClient], threads: int = 8) -> None:
    def one(node: NodeClient) -> None:
        if node.register().state != common_pb2.NODE_STATE_ATTESTED:
            raise RuntimeError(f"benchmark node {node.name} did not attest")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, nodes))


def release_rows(
    server: ServerProcess, nodes: list[NodeClient], concurrencies: list[int], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for n in concurrencies:

        def make(i: int) -> Callable[[], None]:
            node = nodes[i]

            def call() -> None:
                node.release_stub.ReleaseKey(node.release_request(KEY))

            return call

        rate, latencies = run_threads(n, seconds, make)
        base, base_latencies = baseline(server.bao, n, seconds)
        rows.append(
            row(
                f"key release at {n} concurrent nodes vs bare hvac transit decrypt",
                round(rate, 1),
                round(base, 1),
                "releases/s",
                1.0,
                concurrency=n,
                p50_ms=round(percentile(latencies, 0.50) * 1000, 2),
                p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
                baseline_p50_ms=round(percentile(base_latencies, 0.50) * 1000, 2),
                baseline_p99_ms=round(percentile(base_latencies, 0.99) * 1000, 2),
            )
        )
        note(f"scaling_release: {n} concurrent done")
    return rows


def bench(concurrencies: list[int], seconds: float, memory_nodes: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        workdir = Path(tmp)
        pki = SimulatedPki.generate(now)
        bao = start_bao(workdir)
        server = ServerProcess(workdir / "server", prepare(workdir / "server", pki, now), bao)
        try:
            server.start()
            idle = rss_bytes(server.proc.pid)
            with server.admin_channel() as channel:
                AdminClient(channel).create_key(KEY, KeyKind.DATASET)
            channel = server.channel()
            provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
            total = max(*concurrencies, memory_nodes)
            nodes = [NodeClient(channel, provider, name=f"bench-{i}") for i in range(max(concurrencies))]
            register(nodes)
            key, _ = nodes[0].release(KEY)  # the full client check (AAD, HPKE open) once
            assert len(key) == 32
            rows = release_rows(server, nodes, concurrencies, seconds)
            extra = [NodeClient(channel, provider, name=f"bench-{i}") for i in range(len(nodes), total)]
            register(extra)
            loaded = rss_bytes(server.proc.pid)
        finally:
            server.stop()
            bao.server.stop()
    rows.append(
        row(
            f"control-plane resident memory with {total:,} registered nodes",
            round(loaded / MIB, 1),
            round(idle / MIB, 1),
            "MiB",
            2.0,
            higher_is_better=False,
            nodes=total,
            kib_per_node=round((loaded - idle) / 1024 / total, 1),
            note="lower is better; baseline = the same server's RSS right after start, before any node",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per side, 1,000 nodes for memory")
    args = parser.parse_args()
    if tiny():
        rows = bench([1, 2], 0.2, 10)
    elif args.quick:
        rows = bench([1, 8, 64, 256], 1.0, 1_000)
    else:
        rows = bench([1, 8, 64, 256], 10.0, 10_000)
    for result in rows:
        emit(result)


if __name__ == "__main__":
    main()
