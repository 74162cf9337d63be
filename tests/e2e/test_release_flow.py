"""The vertical slice over TLS against the real server process: Challenge -> Register -> ReleaseKey,
for simulated SNP and TDX nodes, and what the database holds afterwards."""

from __future__ import annotations

import sqlite3
import urllib.request

import pytest
from e2e.node_client import NodeClient
from e2e.world import SNP_MEASUREMENT, TDX_MRTD, ServerProcess

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp, simulated_tdx
from proto.sovereign.v1 import common_pb2


@pytest.fixture(params=["snp", "tdx"])
def node(request: pytest.FixtureRequest, server: ServerProcess, pki: SimulatedPki) -> NodeClient:
    provider = (
        simulated_snp(pki, measurement=SNP_MEASUREMENT)
        if request.param == "snp"
        else simulated_tdx(pki, mrtd=TDX_MRTD)
    )
    return NodeClient(server.channel(), provider, name=f"trainer-{request.param}")


def test_register_then_release_read_and_write(node: NodeClient, server: ServerProcess) -> None:
    result = node.register(requested_groups=["trainers"])
    assert result.state == common_pb2.NODE_STATE_ATTESTED, result.reasons
    assert list(result.groups) == ["trainers"]
    assert result.lease.expires_at.seconds > result.lease.issued_at.seconds
    assert result.claims.simulated

    key1, read = node.release("dataset/train")
    key2, again = node.release("dataset/train")
    assert len(key1) == 32 and key1 == key2  # the same data key version, sealed twice
    assert again.audit_sequence > read.audit_sequence
    model_key, write = node.release("model/main", "write")
    assert len(model_key) == 32 and write.key_version == 1

    rows = (
        sqlite3.connect(server.db)
        .execute(
            "SELECT key_name, purpose, openbao_request_id FROM grants WHERE node_id = ? ORDER BY sequence",
            (node.node_id,),
        )
        .fetchall()
    )
    assert [(r[0], r[1]) for r in rows] == [
        ("dataset/train", "read"),
        ("dataset/train", "read"),
        ("model/main", "write"),
    ]
    assert all(r[2] for r in rows)  # every grant names the OpenBao decrypt behind it


def test_health_and_metrics(server: ServerProcess, node: NodeClient) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="sovereign.v1.KeyRelease")
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    node.register()
    node.release("dataset/train")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    released = [
        line for line in text.splitlines() if line.startswith('sovereign_releases_total{purpose="read"}')
    ]
    assert released and float(released[0].split()[-1]) >= 1
    assert "sovereign_evidence_verification_seconds_count" in text
