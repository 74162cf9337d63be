"""Provenance for a node with GPUs, against the real ``sovereign serve`` with GPU attestation (the server,
the simulated H100s and the policy of tests/e2e/test_gpu_registration.py): a trainer registered with two
simulated GPUs reads a dataset, writes a model output, and the statement the auditor fetches names both
GPUs (UEID, driver, VBIOS, measurement result) as the server stored them at registration; the offline
verifier (the CLI) prints them in the lineage.

Independent oracle: the node's stored claims are read from the server's database with sqlite3."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import grpc
import pytest
from e2e import test_gpu_registration as gpu_world
from e2e.world import SNP_MEASUREMENT, ServerProcess

from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from enclave.client import ControlPlaneClient, NodeState
from enclave.providers.gpu import SimulatedGpus
from enclave.workload.output_report import OutputReport
from kms.provenance.verify import load_public_keys, verify_statement
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, common_pb2
from sovereign.cli import main
from sovereign.cli.provenance import write_public_keys
from sovereign.client import AuditClient

# the GPU world's fixtures, instantiated for this module (its own server)
gpus = gpu_world.gpus
server = gpu_world.server
clients = gpu_world.clients
AUDITOR = "carol"


def _statement(server: ServerProcess, sha256: bytes) -> bytes:
    with server.operator_channel(server.operators().token(AUDITOR)) as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = stub.GetProvenance(audit_pb2.GetProvenanceRequest(output_sha256=sha256), timeout=10)
                return bytes(reply.envelope)
            except grpc.RpcError as err:  # until a signed checkpoint covers the output
                if err.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def test_a_gpu_trainers_statement_names_its_verified_gpus(
    server: ServerProcess, pki: SimulatedPki, gpus: GpuSimulator, clients: list[ControlPlaneClient],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with server.admin_channel() as channel:
        admin_pb2_grpc.AdminStub(channel).CreateKey(
            admin_pb2.CreateKeyRequest(name="model/main", kind=common_pb2.KEY_KIND_MODEL)
        )
    agent = gpu_world.node(
        server, clients, "gpu-trainer", SimulatedGpus(gpus, 2, seed="gpu-trainer"), pki,
        measurement=SNP_MEASUREMENT, groups=("trainers",),
    )  # fmt: skip
    result = agent.register()
    assert result.state is NodeState.ATTESTED, gpu_world.codes(result)
    agent.release("dataset/train")
    write = agent.release("model/main", "write")
    sha = secrets.token_hex(32)
    report = OutputReport(
        "model/main", write.key_version, secrets.token_hex(32), sha, secrets.token_hex(32), 4096
    )
    agent.record_output(report)

    envelope = _statement(server, bytes.fromhex(sha))
    keydir = tmp_path / "keys"
    with server.operator_channel(server.operators().token(AUDITOR)) as channel:
        write_public_keys(AuditClient(channel), keydir)
    public = load_public_keys((keydir / "audit.json").read_bytes(), (keydir / "provenance.json").read_bytes())
    predicate = verify_statement(envelope, public).predicate

    details = gpu_world.stored_claims(server, agent.node_id)["details"]
    assert isinstance(details, dict)
    stored = details["gpus"]
    assert len(stored) == 2 and stored[0]["ueid"] != stored[1]["ueid"]
    fields = ("architecture", "ueid", "driver_version", "vbios_version", "measurement_result")
    assert predicate["gpus"] == [{k: g[k] for k in fields} for g in stored]
    assert predicate["cpu"]["claims"]["details"]["gpus"] == stored  # RIM checks, revocation, FWID

    path = tmp_path / "statement.json"
    path.write_bytes(envelope)
    capsys.readouterr()
    assert main(["provenance", "verify", str(path), "--public-keys", str(keydir)]) == 0
    printed = capsys.readouterr().out
    assert "GPUs: 2" in printed
    for g in stored:
        assert f"{g['ueid']}  driver {g['driver_version']}  VBIOS {g['vbios_version']}" in printed
