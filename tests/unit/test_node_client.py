"""The node's control-plane client against a tiny real gRPC server on loopback that answers with fixed
replies and errors: status + ``grpc-status-details-bin`` trailer -> coded ``NodeError``; replies out of
contract refused; the agent refuses a grant whose AAD differs from the one it rebuilds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2

from attestation.claims import Tee
from attestation.simulate import shared_pki
from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient, ControlPlaneError, NodeState
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.providers.base import Evidence, embedded_report_data
from enclave.providers.simulated import simulated_tdx
from enclave.release_request import ReleaseFields, SignedRelease, sign_release
from kms.envelope import release_aad, seal_key
from kms.errors import Code as KmsCode
from kms.errors import KmsError
from kms.server import errors as server_errors
from proto.contract import TRAILER, parse_error_detail
from proto.sovereign.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    common_pb2,
    key_release_pb2,
    key_release_pb2_grpc,
)
from sovereign.devtools.openbao_server import free_port

SC = grpc.StatusCode
Handler = Callable[[Any, grpc.ServicerContext], Any]
NOW = datetime.now(UTC).replace(microsecond=0)


def trailer(status: SC, reason: str, *, hint: str = "", type_url: str | None = None, **meta: str) -> bytes:
    detail = common_pb2.ErrorDetail(reason=reason, domain="kms", hint=hint)
    for key, value in meta.items():
        detail.metadata[key] = value
    packed = any_pb2.Any()
    packed.Pack(detail)
    if type_url is not None:
        packed.type_url = type_url
    return common_pb2.ErrorStatus(code=status.value[0], message="m", details=[packed]).SerializeToString()


def failing(status: SC, details: bytes | None, message: str = "refused") -> Handler:
    def handle(_request: Any, context: grpc.ServicerContext) -> Any:
        if details is not None:
            context.set_trailing_metadata(((TRAILER, details),))
        context.abort(status, message)

    return handle


class Fixed(attestation_pb2_grpc.AttestationServicer, key_release_pb2_grpc.KeyReleaseServicer):
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def _dispatch(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        return self.handlers[name](request, context)

    def Challenge(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._dispatch("Challenge", request, context)

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._dispatch("Register", request, context)

    def Renew(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._dispatch("Renew", request, context)

    def ReleaseKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._dispatch("ReleaseKey", request, context)


@pytest.fixture
def fixed() -> Iterator[tuple[Fixed, ControlPlaneClient]]:
    servicer = Fixed()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    attestation_pb2_grpc.add_AttestationServicer_to_server(servicer, server)
    key_release_pb2_grpc.add_KeyReleaseServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "could not bind a loopback port for the test gRPC server"
    server.start()
    client = ControlPlaneClient(f"127.0.0.1:{port}", insecure_dev=True, timeout=5)
    try:
        yield servicer, client
    finally:
        client.close()
        server.stop(None)


def signed_request() -> SignedRelease:
    fields = ReleaseFields("n-1", "ds-train", "read", b"\x01" * 16, NOW)
    return sign_release(NodeIdentity.generate(), fields)


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (SC.PERMISSION_DENIED, "RELEASE_POLICY_DENIED", NodeCode.RELEASE_DENIED),
        (SC.FAILED_PRECONDITION, "RELEASE_NODE_NOT_ATTESTED", NodeCode.RELEASE_DENIED),
        (SC.NOT_FOUND, "KEY_NOT_FOUND", NodeCode.RELEASE_DENIED),
        (SC.INVALID_ARGUMENT, "REQUEST_NOT_CANONICAL", NodeCode.REQUEST_REFUSED),
        (SC.UNAVAILABLE, "KMS_UNAVAILABLE", NodeCode.CONTROL_PLANE_UNAVAILABLE),
        (SC.INTERNAL, "INTERNAL_ERROR", NodeCode.CONTROL_PLANE_ERROR),
    ],
)
def test_release_errors_carry_the_server_reason(
    fixed: tuple[Fixed, ControlPlaneClient], status: SC, reason: str, code: NodeCode
) -> None:
    servicer, client = fixed
    servicer.handlers["ReleaseKey"] = failing(
        status, trailer(status, reason, hint="ask an operator", audit_sequence="17"), f"{reason}: no"
    )
    with pytest.raises(ControlPlaneError) as info:
        client.release_key(signed_request())
    err = info.value
    assert (err.code, err.reason, err.status) == (code, reason, status.name)
    assert err.metadata == {"audit_sequence": "17"} and err.hint == "ask an operator"
    assert reason in err.message and err.to_dict()["reason"] == reason


def test_the_control_planes_own_encoder_is_understood(fixed: tuple[Fixed, ControlPlaneClient]) -> None:
    servicer, client = fixed

    def handle(_request: Any, context: grpc.ServicerContext) -> Any:
        server_errors.abort(context, KmsError("node n-1 is not known", code=KmsCode.NODE_NOT_FOUND))

    servicer.handlers["Renew"] = handle
    evidence = Evidence(Tee.SNP, b"\x00" * 1184)
    with pytest.raises(ControlPlaneError) as info:
        client.renew(node_id="n-1", nonce=b"\x00" * 32, evidence=evidence, identity=NodeIdentity.generate())
    assert (info.value.code, info.value.reason, info.value.status) == (
        NodeCode.REGISTRATION_REJECTED,
        "NODE_NOT_FOUND",
        "NOT_FOUND",
    )


@pytest.mark.parametrize(
    "details",
    [
        None,
        b"\xff\xfe not protobuf",
        trailer(SC.PERMISSION_DENIED, "RELEASE_POLICY_DENIED", type_url="type.googleapis.com/other.Type"),
        trailer(SC.PERMISSION_DENIED, "lower-case not a code"),
    ],
    ids=["absent", "garbage", "foreign-type", "bad-code"],
)
def test_missing_or_malformed_trailer_still_maps_by_status(
    fixed: tuple[Fixed, ControlPlaneClient], details: bytes | None
) -> None:
    servicer, client = fixed
    servicer.handlers["ReleaseKey"] = failing(SC.PERMISSION_DENIED, details)
    with pytest.raises(ControlPlaneError) as info:
        client.release_key(signed_request())
    assert (info.value.code, info.value.reason) == (NodeCode.RELEASE_DENIED, "")


def test_parse_error_detail_ignores_other_metadata() -> None:
    good = trailer(SC.PERMISSION_DENIED, "NONCE_REPLAYED")
    detail = parse_error_detail([("x-other", "v"), ("grpc-status-details-bin", good)])
    assert detail is not None and detail.reason == "NONCE_REPLAYED"
    assert parse_error_detail([("x-other", "v")]) is None


def test_nobody_listening_is_unavailable() -> None:
    client = ControlPlaneClient(f"127.0.0.1:{free_port()}", insecure_dev=True, timeout=2)
    with pytest.raises(ControlPlaneError) as info:
        client.challenge("node-a")
    assert info.value.code is NodeCode.CONTROL_PLANE_UNAVAILABLE
    client.close()


@pytest.mark.parametrize(
    "kwargs", [{}, {"ca_pem": b"pem", "insecure_dev": True}, {"insecure_dev": True, "timeout": 0}]
)
def test_client_refuses_unpinned_or_ambiguous_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(NodeError) as info:
        ControlPlaneClient("127.0.0.1:1", **kwargs)
    assert info.value.code is NodeCode.CONFIG_INVALID


def test_out_of_contract_replies_are_refused(fixed: tuple[Fixed, ControlPlaneClient]) -> None:
    servicer, client = fixed
    servicer.handlers["Challenge"] = lambda _r, _c: attestation_pb2.ChallengeResponse(nonce=b"short")
    servicer.handlers["ReleaseKey"] = lambda _r, _c: key_release_pb2.ReleaseResponse(
        sealed_key=b"x", key_name="ds-train", key_version=1, purpose=common_pb2.PURPOSE_READ, aad=b"a"
    )
    servicer.handlers["Register"] = lambda _r, _c: attestation_pb2.AttestationResult(
        node_id="n-1", state=common_pb2.NODE_STATE_ATTESTED
    )
    with pytest.raises(ControlPlaneError, match="32-byte nonce") as info:
        client.challenge("node-a")
    assert info.value.code is NodeCode.CONTROL_PLANE_ERROR
    with pytest.raises(ControlPlaneError, match="lease_expires_at is missing"):
        client.release_key(signed_request())
    evidence = Evidence(Tee.SNP, b"\x00" * 1184)
    with pytest.raises(ControlPlaneError, match="must carry a node id and a lease"):
        client.register(
            nonce=b"\x00" * 32, evidence=evidence, identity=NodeIdentity.generate(), node_name="node-a"
        )


def attested_agent(servicer: Fixed, client: ControlPlaneClient) -> NodeAgent:
    suite = attestation_pb2.KemSuite(kem_id=0x20, kdf_id=1, aead_id=2)
    stamp = NOW + timedelta(seconds=60)
    servicer.handlers["Challenge"] = lambda _r, _c: attestation_pb2.ChallengeResponse(
        nonce=b"\x07" * 32, expires_at=_ts(stamp), accepted_kem_suites=[suite]
    )

    def register(request: attestation_pb2.RegisterRequest, _c: grpc.ServicerContext) -> Any:
        assert embedded_report_data(Tee.TDX, request.evidence.report) == identity.report_data(request.nonce)
        return attestation_pb2.AttestationResult(
            node_id="n-1",
            state=common_pb2.NODE_STATE_ATTESTED,
            lease=common_pb2.Lease(lease_id="l-1", issued_at=_ts(NOW), expires_at=_ts(stamp)),
        )

    servicer.handlers["Register"] = register
    identity = NodeIdentity.generate()
    agent = NodeAgent(client, simulated_tdx(shared_pki(NOW)), identity, node_name="node-a")
    assert agent.register().state is NodeState.ATTESTED
    return agent


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


@pytest.mark.parametrize("honest", [True, False], ids=["honest", "aad-tampered"])
def test_agent_opens_only_a_grant_whose_aad_it_rebuilds(
    fixed: tuple[Fixed, ControlPlaneClient], honest: bool
) -> None:
    servicer, client = fixed
    agent = attested_agent(servicer, client)
    data_key = bytes(range(32))
    lease = NOW + timedelta(seconds=60)

    def release(request: key_release_pb2.ReleaseRequest, _c: grpc.ServicerContext) -> Any:
        body = key_release_pb2.ReleaseRequestBody.FromString(request.body)
        aad = release_aad(
            node_id=body.node_id,
            key_name=body.key_name,
            key_version=1,
            purpose="read",
            request_id=body.request_id,
            audit_sequence=5 if honest else 6,  # a dishonest reply claims sequence 5 below
            lease_expiry=int(lease.timestamp()),
        )
        return key_release_pb2.ReleaseResponse(
            sealed_key=seal_key(agent.identity.kem_public, agent.identity.suite, data_key, aad),
            key_name=body.key_name,
            key_version=1,
            purpose=common_pb2.PURPOSE_READ,
            audit_sequence=5,
            lease_expires_at=_ts(lease),
            aad=aad,
        )

    servicer.handlers["ReleaseKey"] = release
    if honest:
        assert agent.fetch_key("ds-train") == data_key
    else:
        with pytest.raises(NodeError) as info:
            agent.fetch_key("ds-train")
        assert info.value.code is NodeCode.RELEASE_AAD_MISMATCH
