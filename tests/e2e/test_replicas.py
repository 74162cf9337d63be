"""``sovereign serve --processes 2``: a replica process shares the port, the database and OpenBao; nodes
connected to either get keys, grants land in the one database with distinct sequences, a request id is
refused as a replay whichever process sees it second, and SIGTERM stops both."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e.node_client import NodeClient, mtls_channel, pem_key, rpc_error
from e2e.world import SNP_MEASUREMENT, Bao, ServerProcess, prepare

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2, key_release_pb2_grpc


@pytest.fixture(scope="module")
def replicated(
    tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, bao: Bao
) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("e2e-replicas")
    proc = ServerProcess(
        workdir, prepare(workdir, pki, datetime.now(UTC)), bao, extra=["--processes", "2"]
    ).start()
    try:
        with proc.admin_channel() as channel:
            admin_pb2_grpc.AdminStub(channel).CreateKey(
                admin_pb2.CreateKeyRequest(name="dataset/train", kind=common_pb2.KEY_KIND_DATASET)
            )
        replicas = children(proc.proc.pid)
        assert len(replicas) == 1
        yield proc
    finally:
        code = proc.stop()
    assert code == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in replicas), "SIGTERM left a replica running"


def children(pid: int) -> list[int]:
    return [
        int(x)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for x in (task / "children").read_text().split()
    ]


def test_both_processes_serve_one_database(replicated: ServerProcess, pki: SimulatedPki) -> None:
    (replica,) = [
        p
        for p in children(replicated.proc.pid)
        if Path(f"/proc/{p}/cmdline").read_bytes().count(b"--replica")
    ]
    provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
    nodes = [NodeClient(replicated.channel(), provider, name=f"r-{i}") for i in range(8)]  # 8 connections
    for node in nodes:
        assert node.register().state == common_pb2.NODE_STATE_ATTESTED
    keys = {node.release("dataset/train")[0] for node in nodes}
    assert len(keys) == 1
    with sqlite3.connect(replicated.db) as db:
        sequences = [r[0] for r in db.execute("SELECT sequence FROM grants")]
    assert len(sequences) == len(set(sequences)) == 8
    request = nodes[0].release_request("dataset/train")
    nodes[0].release_stub.ReleaseKey(request)
    assert replicated.ca is not None
    again = mtls_channel(  # a new connection of the same node, maybe to the other process
        nodes[0].release_address,
        replicated.ca.read_bytes(),
        pem_key(nodes[0].tls_key),
        nodes[0].client_certificate,
    )
    assert rpc_error(key_release_pb2_grpc.KeyReleaseStub(again).ReleaseKey, request)[1] == "REQUEST_REPLAYED"
    assert Path(f"/proc/{replica}").exists()
