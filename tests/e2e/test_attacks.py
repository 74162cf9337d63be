"""Every attack against the real server process is refused with its stable code, and none of them
leaves a grant row behind."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from e2e.node_client import NodeClient, keys_message, release_body, rpc_error, sign_body
from e2e.world import SNP_MEASUREMENT, TDX_MRTD, ServerProcess

from attestation.simulate import SimulatedPki
from enclave.identity import NodeIdentity
from enclave.providers.simulated import simulated_snp, simulated_tdx
from proto.sovereign.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    attestation_pb2,
    common_pb2,
    key_release_pb2,
    key_release_pb2_grpc,
)

SC = grpc.StatusCode


@pytest.fixture(params=["snp", "tdx"])
def make_node(request: pytest.FixtureRequest, server: ServerProcess, pki: SimulatedPki):  # type: ignore[no-untyped-def]
    def make(name: str = "node") -> NodeClient:
        provider = (
            simulated_snp(pki, measurement=SNP_MEASUREMENT)
            if request.param == "snp"
            else simulated_tdx(pki, mrtd=TDX_MRTD)
        )
        return NodeClient(server.channel(), provider, name=f"{name}-{request.param}")

    return make


@pytest.fixture
def attested(make_node) -> NodeClient:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("victim")
    result = node.register(requested_groups=["trainers"])
    assert result.state == common_pb2.NODE_STATE_ATTESTED, result.reasons
    return node


def reason_codes(result: attestation_pb2.AttestationResult) -> list[str]:
    return [r.code for r in result.reasons]


def granted(server: ServerProcess, request: key_release_pb2.ReleaseRequest) -> int:
    rid = key_release_pb2.ReleaseRequestBody.FromString(request.body).request_id.hex()
    with sqlite3.connect(server.db) as db:
        return int(db.execute("SELECT count(*) FROM grants WHERE request_id = ?", (rid,)).fetchone()[0])


def refused(
    node: NodeClient, server: ServerProcess, request: key_release_pb2.ReleaseRequest
) -> tuple[SC, str]:
    status, reason, _ = rpc_error(node.release_stub.ReleaseKey, request)
    assert granted(server, request) == 0
    return status, reason


# --- registration ------------------------------------------------------------------------------------


def test_replayed_nonce_is_rejected(make_node) -> None:  # type: ignore[no-untyped-def]
    first: NodeClient = make_node("first")
    nonce = first.challenge()
    assert first.register(nonce=nonce).state == common_pb2.NODE_STATE_ATTESTED
    second: NodeClient = make_node("first")
    result = second.register(nonce=nonce)
    assert result.state == common_pb2.NODE_STATE_REJECTED
    assert reason_codes(result) == ["NONCE_REPLAYED"]
    assert result.node_id == ""
    assert result.audit_sequence == 0  # refused before authentication: counted, not in the ledger


def test_nonce_is_spent_even_by_a_failing_registration(make_node) -> None:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("spent")
    nonce = node.challenge()
    other = NodeIdentity.generate()
    bad = node.register(nonce=nonce, evidence=node.evidence(nonce, other))
    assert reason_codes(bad) == ["BINDING_MISMATCH"]
    assert reason_codes(node.register(nonce=nonce)) == ["NONCE_REPLAYED"]


def test_expired_nonce_is_rejected(make_node) -> None:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("late")
    nonce = node.challenge()
    time.sleep(3.2)  # the server runs with --nonce-ttl 3
    result = node.register(nonce=nonce)
    assert reason_codes(result) == ["NONCE_EXPIRED"]
    assert result.audit_sequence == 0


def test_nonce_of_another_name_is_rejected(make_node) -> None:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("alpha")
    nonce = node.challenge()
    node.name = "beta-node"
    assert reason_codes(node.register(nonce=nonce)) == ["NONCE_NAME_MISMATCH"]


def test_evidence_bound_to_other_keys_is_rejected(make_node) -> None:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("thief")
    nonce = node.challenge()
    victim = NodeIdentity.generate()
    # evidence genuinely binds the victim's keys; the request presents the thief's keys
    result = node.register(nonce=nonce, evidence=node.evidence(nonce, victim))
    assert result.state == common_pb2.NODE_STATE_REJECTED
    assert reason_codes(result) == ["BINDING_MISMATCH"]
    assert result.audit_sequence == 0


def test_declared_tee_must_match_the_evidence(make_node) -> None:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("liar")
    nonce = node.challenge()
    evidence = node.evidence(nonce)
    evidence.tee = common_pb2.TEE_TDX if evidence.tee == common_pb2.TEE_SNP else common_pb2.TEE_SNP
    del evidence.endorsements[:]  # TDX evidence may not carry any
    result = node.attestation.Register(node.register_request(nonce=nonce, evidence=evidence))
    assert result.state == common_pb2.NODE_STATE_REJECTED
    assert reason_codes(result) == ["EVIDENCE_TEE_MISMATCH"]


def test_renew_with_other_keys_is_rejected(attested: NodeClient) -> None:
    result = attested.renew(NodeIdentity.generate())
    assert result.state == common_pb2.NODE_STATE_REJECTED
    assert reason_codes(result) == ["NODE_KEYS_CHANGED"]
    assert result.audit_sequence == 0
    renewed = attested.renew()
    assert renewed.state == common_pb2.NODE_STATE_ATTESTED
    assert renewed.node_id == attested.node_id


def test_malformed_register_is_invalid_argument(make_node) -> None:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("shape")
    request = node.register_request()
    request.keys.signing_public_key = b"\x01" * 31
    status, reason, _ = rpc_error(node.attestation.Register, request)
    assert (status, reason) == (SC.INVALID_ARGUMENT, "REQUEST_INVALID")
    request = node.register_request()
    request.node_name = "Not_A_Label"
    assert rpc_error(node.attestation.Register, request)[:2] == (SC.INVALID_ARGUMENT, "REQUEST_INVALID")


def test_oversized_message_is_refused_by_the_transport(make_node) -> None:  # type: ignore[no-untyped-def]
    node: NodeClient = make_node("big")
    request = node.register_request()
    request.evidence.report = b"\x00" * (300 << 10)  # over the 256 KiB server limit
    status, reason, _ = rpc_error(node.attestation.Register, request)
    assert status == SC.RESOURCE_EXHAUSTED and reason == ""


def test_undecodable_bytes_are_refused(attested: NodeClient) -> None:
    assert attested.release_channel is not None
    raw = attested.release_channel.unary_unary(
        "/sovereign.v1.KeyRelease/ReleaseKey",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    status, reason, _ = rpc_error(raw, b"\xff\xff\xff\xff")
    assert (status, reason) == (SC.INVALID_ARGUMENT, "REQUEST_INVALID")


# --- release -----------------------------------------------------------------------------------------


def test_lease_is_useless_after_revocation(attested: NodeClient, server: ServerProcess) -> None:
    attested.release("dataset/train")
    with server.admin_channel() as channel:
        admin_pb2_grpc.AdminStub(channel).RevokeNode(
            admin_pb2.RevokeNodeRequest(node_id=attested.node_id, reason="stolen credentials")
        )
    request = attested.release_request("dataset/train")
    assert refused(attested, server, request) == (SC.FAILED_PRECONDITION, "RELEASE_NODE_NOT_ATTESTED")
    renewed = attested.renew()
    assert reason_codes(renewed) == ["NODE_NOT_RENEWABLE"]


def test_request_signed_by_another_nodes_key(attested: NodeClient, server: ServerProcess) -> None:
    request = attested.release_request("dataset/train", signer=NodeIdentity.generate())
    assert refused(attested, server, request) == (SC.PERMISSION_DENIED, "REQUEST_SIGNATURE_INVALID")


def test_unknown_key_name(attested: NodeClient, server: ServerProcess) -> None:
    request = attested.release_request("dataset/missing")
    assert refused(attested, server, request) == (SC.NOT_FOUND, "KEY_NOT_FOUND")


def test_purpose_not_allowed(attested: NodeClient, server: ServerProcess) -> None:
    request = attested.release_request("dataset/train", "write")
    assert refused(attested, server, request) == (SC.PERMISSION_DENIED, "RELEASE_PURPOSE_NOT_ALLOWED")


def test_replayed_request(attested: NodeClient, server: ServerProcess) -> None:
    request = attested.release_request("dataset/train")
    attested.release_stub.ReleaseKey(request)
    status, reason, detail = rpc_error(attested.release_stub.ReleaseKey, request)
    assert (status, reason) == (SC.PERMISSION_DENIED, "REQUEST_REPLAYED")
    assert detail.domain == "kms" and int(detail.metadata["denial_id"]) > 0
    assert granted(server, request) == 1  # the first one only


def test_clock_skew(attested: NodeClient, server: ServerProcess) -> None:
    request = attested.release_request("dataset/train", when=datetime.now(UTC) - timedelta(seconds=300))
    assert refused(attested, server, request) == (SC.PERMISSION_DENIED, "REQUEST_CLOCK_SKEW")


def test_unknown_node(attested: NodeClient, server: ServerProcess) -> None:
    request = attested.release_request("dataset/train", node_id="n-doesnotexist")
    assert refused(attested, server, request) == (SC.NOT_FOUND, "NODE_NOT_FOUND")


@pytest.mark.parametrize(
    "mutation", ["garbage", "unknown-field", "explicit-default", "oversized", "no-timestamp"]
)
def test_malformed_release_bodies(attested: NodeClient, server: ServerProcess, mutation: str) -> None:
    body = release_body(attested.node_id, "dataset/train").SerializeToString(deterministic=True)
    expected = (SC.INVALID_ARGUMENT, "REQUEST_INVALID")
    if mutation == "garbage":
        body = b"\x0a\xff\xff"
    elif mutation == "unknown-field":
        body += b"\xf8\x01\x01"  # field 31, varint 1
        expected = (SC.INVALID_ARGUMENT, "REQUEST_NOT_CANONICAL")
    elif mutation == "explicit-default":
        body += b"\x30\x00"  # key_version = 0 encoded explicitly
        expected = (SC.INVALID_ARGUMENT, "REQUEST_NOT_CANONICAL")
    elif mutation == "oversized":
        body += b"\xfa\x01" + b"\x80\x08" + b"\x00" * 1024  # an unknown 1 KiB field
    else:
        msg = key_release_pb2.ReleaseRequestBody.FromString(body)
        msg.ClearField("timestamp")
        body = msg.SerializeToString(deterministic=True)
    request = sign_body(attested.identity, body)
    assert rpc_error(attested.release_stub.ReleaseKey, request)[:2] == expected
    with sqlite3.connect(server.db) as db:
        assert db.execute(
            "SELECT count(*) FROM grants WHERE node_id = ?", (attested.node_id,)
        ).fetchone() == (0,)


def test_admin_and_release_are_not_served_on_the_node_port(
    attested: NodeClient, server: ServerProcess
) -> None:
    with server.channel() as channel:
        status, _, _ = rpc_error(admin_pb2_grpc.AdminStub(channel).ListNodes, admin_pb2.ListNodesRequest())
        assert status == SC.UNIMPLEMENTED
        status, _, _ = rpc_error(
            key_release_pb2_grpc.KeyReleaseStub(channel).ReleaseKey, attested.release_request("dataset/train")
        )
        assert status == SC.UNIMPLEMENTED


def test_keys_cannot_be_registered_twice(attested: NodeClient, make_node) -> None:  # type: ignore[no-untyped-def]
    copycat: NodeClient = make_node("victim")
    copycat.identity = attested.identity  # nobody else has these private keys; a re-run of the node does
    result = copycat.register()
    assert reason_codes(result) == ["NODE_KEYS_IN_USE"]
    assert keys_message(copycat.identity) == keys_message(attested.identity)
