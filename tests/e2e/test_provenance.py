"""Training provenance against the real ``sovereign serve`` and OpenBao: a node (resident agent in this
process, its Unix socket, the real mutual-TLS release port) reads a dataset key, seals an output with
the model key through ``create_sealed``; the workload library reports it, the control plane records a
``model.output`` entry; the auditor fetches the signed statement over the Audit RPC and it verifies
offline with the exported public keys. Refusals: no write grant, replayed request id, a revoked node.

Independent oracles: the plaintext's SHA-256 is computed here with hashlib; the ledger entry is read
from the server's database with sqlite3, not through the code under test."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from e2e.world import SNP_MEASUREMENT, ServerProcess

from attestation.simulate import SimulatedPki
from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient, ControlPlaneError
from enclave.identity import NodeIdentity
from enclave.local_server import LocalApiServer
from enclave.output_request import sign_output
from enclave.providers.simulated import simulated_snp
from enclave.resident import ResidentAgent
from enclave.workload import AgentSocketKeySource, OutputReport, WorkloadError, create_sealed, open_sealed
from kms.oidc.cache import CachedToken, save_token
from kms.provenance.errors import ProvenanceCode, ProvenanceError
from kms.provenance.verify import load_public_keys, verify_statement
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, key_release_pb2
from sovereign.cli import main
from sovereign.cli.provenance import write_public_keys
from sovereign.client import AuditClient, OperatorError

AUDITOR = "carol"
PLAIN = os.urandom(2 * 65536 + 321)


def _agent(server: ServerProcess, pki: SimulatedPki, name: str) -> NodeAgent:
    assert server.ca is not None
    client = ControlPlaneClient(f"127.0.0.1:{server.port}", ca_pem=server.ca.read_bytes(), timeout=10)
    provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
    return NodeAgent(client, provider, NodeIdentity.generate(), node_name=name, groups=["trainers"])


@pytest.fixture(scope="module")
def resident(
    server: ServerProcess, pki: SimulatedPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ResidentAgent, AgentSocketKeySource]]:
    agent = ResidentAgent(lambda: _agent(server, pki, "prov-node"))
    agent.start()
    assert agent.wait_ready(30), agent.last_error
    path = tmp_path_factory.mktemp("prov-sock") / "agent.sock"
    api = LocalApiServer(agent, path, mode=0o600)
    api.start()
    yield agent, AgentSocketKeySource(str(path))
    api.close()
    agent.stop()


def _db_entry(server: ServerProcess, seq: int) -> dict[str, object]:
    row = (
        sqlite3.connect(server.db)
        .execute("SELECT canonical FROM audit_entries WHERE seq = ?", (seq,))
        .fetchone()
    )
    assert row is not None
    entry: dict[str, object] = json.loads(bytes(row[0]))
    return entry


def _provenance(server: ServerProcess, sha256: bytes) -> audit_pb2.Provenance:
    with server.operator_channel(server.operators().token(AUDITOR)) as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        deadline = time.monotonic() + 15
        while True:
            try:
                reply: audit_pb2.Provenance = stub.GetProvenance(
                    audit_pb2.GetProvenanceRequest(output_sha256=sha256), timeout=10
                )
                return reply
            except grpc.RpcError as err:  # the checkpointer signs every half second
                if err.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def test_a_sealed_output_is_recorded_and_its_statement_verifies_offline(
    server: ServerProcess, resident: tuple[ResidentAgent, AgentSocketKeySource], tmp_path: Path
) -> None:
    agent, keys = resident
    keys.read_key(b"dataset/train@v1")  # the node reads a dataset: a read grant
    out = tmp_path / "ckpt.safetensors.sealed"
    with create_sealed(out, key="model/main", keys=keys, job="train-demo", step=7) as writer:
        writer.write(PLAIN)
    sealed = writer.output
    assert sealed is not None and sealed.sha256 == hashlib.sha256(PLAIN).hexdigest()
    assert sealed.sealed_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sealed.size == len(PLAIN)
    with open_sealed(out, keys=keys) as f:
        assert f.read() == PLAIN

    reply = _provenance(server, hashlib.sha256(PLAIN).digest())
    entry = _db_entry(server, reply.output_sequence)
    assert entry["kind"] == "model.output" and entry["decision"] == "grant"
    fields = entry["fields"]
    assert isinstance(fields, dict)
    assert fields["output_sha256"] == hashlib.sha256(PLAIN).hexdigest()
    assert fields["node_id"] == agent.node_id and fields["job_name"] == "train-demo" and fields["step"] == 7

    keydir = tmp_path / "keys"
    with server.operator_channel(server.operators().token(AUDITOR)) as channel:
        write_public_keys(AuditClient(channel), keydir)
    public = load_public_keys((keydir / "audit.json").read_bytes(), (keydir / "provenance.json").read_bytes())
    verified = verify_statement(
        reply.envelope, public, file_sha256=hashlib.sha256(out.read_bytes()).hexdigest()
    )
    p = verified.predicate
    assert p["node"]["id"] == agent.node_id and p["node"]["name"] == "prov-node"
    assert [d["key"] for d in p["datasets"]] == ["dataset/train"]
    assert p["write_grant"]["key"] == "model/main" and p["cpu"]["measurement"] == SNP_MEASUREMENT.hex()
    assert p["cpu"]["chip_id"] is not None and p["cpu"]["debug"] is False and p["gpus"] == []

    with server.operator_channel(server.operators().token(AUDITOR)) as channel:
        auditor = AuditClient(channel)
        for bad, code in ((b"\x01" * 3, "REQUEST_INVALID"), (os.urandom(32), "PROVENANCE_OUTPUT_NOT_FOUND")):
            with pytest.raises(OperatorError) as refused:
                auditor.provenance(bad)
            assert refused.value.code == code
        # found by the sealed file's digest as well
        assert auditor.provenance(bytes.fromhex(sealed.sealed_sha256))[1] == reply.output_sequence
    with pytest.raises(ProvenanceError) as info:
        verify_statement(reply.envelope, public, file_sha256=hashlib.sha256(b"other").hexdigest())
    assert info.value.code is ProvenanceCode.PROVENANCE_FILE_MISMATCH


def test_an_output_without_a_write_grant_is_refused_and_recorded(
    server: ServerProcess, pki: SimulatedPki
) -> None:
    node = _agent(server, pki, "prov-nogrant")
    try:
        node.register()
        report = OutputReport("model/main", 1, "a" * 64, "b" * 64, "c" * 64, 10)
        with pytest.raises(ControlPlaneError) as info:
            node.record_output(report)
        assert info.value.reason == "OUTPUT_NO_WRITE_GRANT"
        rows = (
            sqlite3.connect(server.db)
            .execute(
                "SELECT canonical FROM audit_entries WHERE kind = 'model.output' AND node_id = ?",
                (node.node_id,),
            )
            .fetchall()
        )
        assert [json.loads(bytes(r[0]))["decision"] for r in rows] == ["deny"]
    finally:
        node.client.close()


def test_a_replayed_output_record_is_refused(server: ServerProcess, pki: SimulatedPki) -> None:
    node = _agent(server, pki, "prov-replay")
    try:
        node.register()
        released = node.release("model/main", "write")
        report = OutputReport("model/main", released.key_version, "a" * 64, "d" * 64, "e" * 64, 1)
        signed = sign_output(
            node.identity,
            node.node_id,
            report,
            request_id=secrets.token_bytes(16),
            timestamp=datetime.now(UTC),
        )
        assert node.client.record_output(signed.body, signed.signature) > 0
        with pytest.raises(ControlPlaneError) as info:
            node.client.record_output(signed.body, signed.signature)
        assert info.value.reason == "REQUEST_REPLAYED"
        # malformed bodies are coded refusals, not recorded
        for body in (b"\xff\xff", b"", signed.body + b"\x00"):
            with pytest.raises(ControlPlaneError) as malformed:
                node.client.record_output(body, signed.signature)
            assert malformed.value.reason in ("REQUEST_INVALID", "REQUEST_NOT_CANONICAL")
        far = key_release_pb2.OutputRecordBody.FromString(signed.body)
        far.timestamp.seconds = 253402300800 * 4  # past year 9999
        far_body = far.SerializeToString(deterministic=True)
        with pytest.raises(ControlPlaneError) as skewed:
            node.client.record_output(far_body, node.identity.sign(b"sovereign/v1 output" + far_body))
        assert skewed.value.reason == "REQUEST_INVALID"
        # a release signature never verifies as an output record (separate domains)
        with pytest.raises(ControlPlaneError) as bad:
            node.client.record_output(signed.body, node.identity.sign(b"sovereign/v1 release" + signed.body))
        assert bad.value.reason == "REQUEST_SIGNATURE_INVALID"
    finally:
        node.client.close()


def test_a_revoked_node_cannot_record_and_the_workload_sees_a_code(
    server: ServerProcess, pki: SimulatedPki, tmp_path: Path
) -> None:
    node = _agent(server, pki, "prov-revoked")
    try:
        node.register()
        released = node.release("model/main", "write")
        with server.admin_channel() as channel:
            admin_pb2_grpc.AdminStub(channel).RevokeNode(
                admin_pb2.RevokeNodeRequest(node_id=node.node_id, reason="test")
            )
        report = OutputReport("model/main", released.key_version, "a" * 64, "f" * 64, "0" * 64, 1)
        with pytest.raises(ControlPlaneError) as info:
            node.record_output(report)
        assert info.value.reason == "RELEASE_NODE_NOT_ATTESTED"
    finally:
        node.client.close()


def test_an_output_report_with_a_bad_job_name_fails_before_sealing(
    resident: tuple[ResidentAgent, AgentSocketKeySource], tmp_path: Path
) -> None:
    _, keys = resident
    with pytest.raises(WorkloadError) as info:
        create_sealed(tmp_path / "x.sealed", key="model/main", keys=keys, job="bad\njob")
    assert info.value.code.value == "WORKLOAD_INPUT_INVALID"
    assert not (tmp_path / "x.sealed").exists()


def test_the_auditor_fetches_and_verifies_with_the_cli(
    server: ServerProcess, resident: tuple[ResidentAgent, AgentSocketKeySource], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _, keys = resident
    keys.read_key(b"dataset/train@v1")  # (held already if the first test ran: no second grant then)
    plain = os.urandom(70000)
    out = tmp_path / "cli.sealed"
    with create_sealed(out, key="model/main", keys=keys, job="cli") as writer:
        writer.write(plain)
    sha = hashlib.sha256(plain).hexdigest()
    _provenance(server, bytes.fromhex(sha))  # waits until a checkpoint covers the output
    cache = tmp_path / "carol.json"
    now = datetime.now(UTC)
    save_token(CachedToken("http://kc.invalid/", "sovereign", "cli", server.operators().token(AUDITOR),
                           now + timedelta(minutes=5), now), cache)  # fmt: skip
    where = [
        "--server",
        f"127.0.0.1:{server.admin_port}",
        "--ca",
        str(server.ca),
        "--token-cache",
        str(cache),
    ]
    statement, keydir = tmp_path / "statement.json", tmp_path / "keys"
    assert main(["provenance", "get", "--output", sha, "-o", str(statement), *where]) == 0
    assert main(["provenance", "keys", "--out", str(keydir), *where]) == 0
    capsys.readouterr()
    args = ["provenance", "verify", str(statement), "--public-keys", str(keydir), "--file", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "statement verified" in printed and sha in printed and "dataset/train v1" in printed
    doc = json.loads(statement.read_bytes())
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[0] ^= 1
    doc["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    statement.write_text(json.dumps(doc))
    assert main([*args, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "PROVENANCE_SIGNATURE_INVALID"
    # lineage queries over the Audit RPCs: the dataset's outputs include this one, and back
    assert main(["audit", "lineage", "--dataset", "dataset/train", *where, "--json"]) == 0
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert sha in [o["output_sha256"] for o in outputs] and all(
        o["key"].startswith("model/main@v") for o in outputs
    )
    assert main(["audit", "lineage", "--dataset", "dataset/other", *where, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == []
    assert main(["audit", "lineage", "--output", sha, *where, "--json"]) == 0
    back = json.loads(capsys.readouterr().out)
    # every key the node was granted for reading before the output (the first test read model/main back)
    assert "dataset/train" in [d["key"] for d in back["datasets"]] and back["output"]["job"] == "cli"
    # an operator without the auditor role is refused
    dave = tmp_path / "dave.json"
    save_token(CachedToken("http://kc.invalid/", "sovereign", "cli", server.operators().token("dave"),
                           now + timedelta(minutes=5), now), dave)  # fmt: skip
    where[-1] = str(dave)
    assert main(["provenance", "get", "--output", sha, "-o", str(statement), *where, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "AUTH_ROLE_MISSING"
    assert main(["audit", "lineage", "--dataset", "dataset/train", *where, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "AUTH_ROLE_MISSING"
