"""Key-release throughput of two ``sovereign serve`` replicas on one PostgreSQL database against one.

Run: ``./dev bench --only replicas``. Starts a throwaway PostgreSQL (tests/pg), an OpenBao dev server and
two separate ``sovereign serve`` processes (own ports, one database, one OpenBao, shared TLS and node CA
files), registers simulated SNP nodes through the first, then in the same run: N node threads release keys
from replica A only (the baseline), then the same N threads spread over A and B. Every request is freshly
signed and its grant committed to the shared ledger under the one writer lock, so this measures what a
second replica adds on this machine (the writer lock and OpenBao are shared). One JSON row.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.simulate import SimulatedPki
from bench.bench_release import KEY, percentile, run_threads
from bench.bench_scaling_release import register
from bench.peers import emit, note, row, tiny
from enclave.providers.simulated import simulated_snp
from proto.sovereign.v1 import key_release_pb2_grpc
from sovereign.client import AdminClient
from sovereign.client.records import KeyKind
from tests.e2e.node_client import NodeClient, mtls_channel, pem_key
from tests.e2e.world import SNP_MEASUREMENT, ServerProcess, prepare, start_bao
from tests.pg.server import PostgresServer


def stub(proc: ServerProcess, node: NodeClient) -> key_release_pb2_grpc.KeyReleaseStub:
    """``proc``'s KeyRelease for ``node`` (replicas share the node CA, so any replica's certificate works)."""
    assert proc.ca is not None
    channel = mtls_channel(
        f"127.0.0.1:{proc.release_port}", proc.ca.read_bytes(), pem_key(node.tls_key), node.client_certificate
    )
    return key_release_pb2_grpc.KeyReleaseStub(channel)


def releases(
    nodes: list[NodeClient], stubs: list[key_release_pb2_grpc.KeyReleaseStub], seconds: float
) -> tuple[float, list[float]]:
    def make(i: int) -> Callable[[], None]:
        node, target = nodes[i], stubs[i]

        def call() -> None:
            target.ReleaseKey(node.release_request(KEY))

        return call

    return run_threads(len(nodes), seconds, make)


def bench(threads: int, seconds: float) -> dict[str, Any]:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        workdir = Path(tmp)
        pki = SimulatedPki.generate(now)
        inputs = prepare(workdir / "server", pki, now)
        pg = PostgresServer.start()
        procs: list[ServerProcess] = []
        try:
            bao = start_bao(workdir)
        except BaseException:
            pg.destroy()
            raise
        try:
            url = pg.create_database("bench")
            a = ServerProcess(workdir / "server", inputs, bao, db_url=url).start()
            procs.append(a)
            with a.admin_channel() as channel:
                AdminClient(channel).create_key(KEY, KeyKind.DATASET)
            provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
            nodes = [NodeClient(a.channel(), provider, name=f"bench-{i}") for i in range(threads)]
            register(nodes)
            b = ServerProcess(workdir / "server", inputs, bao, realm=a.operators(), db_url=url).start()
            procs.append(b)
            one = releases(nodes, [stub(a, n) for n in nodes], seconds)
            note("replicas: one replica done")
            two = releases(nodes, [stub((a, b)[i % 2], n) for i, n in enumerate(nodes)], seconds)
            note("replicas: two replicas done")
        finally:
            for proc in procs:
                proc.stop()
            bao.server.stop()
            pg.destroy()
    (rate1, lat1), (rate2, lat2) = one, two
    return row(
        f"key release, two replicas on one PostgreSQL vs one ({threads} concurrent nodes)",
        round(rate2, 1),
        round(rate1, 1),
        "releases/s",
        1.5,
        concurrency=threads,
        replicas=2,
        p50_ms=round(percentile(lat2, 0.50) * 1000, 2),
        p99_ms=round(percentile(lat2, 0.99) * 1000, 2),
        one_replica_p50_ms=round(percentile(lat1, 0.50) * 1000, 2),
        one_replica_p99_ms=round(percentile(lat1, 0.99) * 1000, 2),
        note="baseline = one replica, same database, OpenBao and nodes, in the same run",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 concurrent, 3 s per side")
    args = parser.parse_args()
    if tiny():
        result = bench(2, 0.3)
    elif args.quick:
        result = bench(32, 3.0)
    else:
        result = bench(64, 10.0)
    emit(result)


if __name__ == "__main__":
    main()
