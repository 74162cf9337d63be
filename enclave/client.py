"""The node's gRPC client for the control plane (Attestation, KeyRelease).

The only place on the node that sees generated protobuf types: requests are built here from plain
values and replies come back as the small dataclasses below. A failed RPC becomes a
``ControlPlaneError`` (a ``NodeError``) carrying the server's stable reason code, read from the
``grpc-status-details-bin`` trailer (an ``ErrorStatus`` packing one ``ErrorDetail``, see
proto/README.md). The channel is TLS with the control plane's CA pinned as the only root, unless
``insecure_dev`` is set explicitly.

Mutual TLS for KeyRelease: the client makes an ECDSA P-256 TLS key in this (TEE) process and sends it
with Register/Renew, signed by the node's attested Ed25519 key over the request nonce (gRPC's TLS stack
refuses Ed25519 client certificates, so the attested key vouches for a TLS key instead). An ATTESTED
reply carries a short-lived client certificate for it and the KeyRelease port; ``release_key`` then
calls over a second channel that presents that certificate (same pinned CA). The TLS private key never
leaves this process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import timestamp_pb2

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.providers.base import Evidence
from enclave.release_request import PURPOSES, ReleaseGrant, SignedRelease
from proto.contract import MAX_TEXT, GpuEvidenceItem, parse_error_detail, tls_key_proof_message
from proto.rpc_failure import Endpoint, transport_failure
from proto.sovereign.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    common_pb2,
    key_release_pb2,
    key_release_pb2_grpc,
)

DEFAULT_TIMEOUT = 10.0
_TEE_WIRE = {Tee.SNP: common_pb2.TEE_SNP, Tee.TDX: common_pb2.TEE_TDX}
_PURPOSE_OUT = {common_pb2.PURPOSE_READ: "read", common_pb2.PURPOSE_WRITE: "write"}
_SC = grpc.StatusCode
_UNREACHABLE = {_SC.UNAVAILABLE, _SC.DEADLINE_EXCEEDED, _SC.CANCELLED, _SC.RESOURCE_EXHAUSTED}
_MALFORMED = {_SC.INVALID_ARGUMENT, _SC.OUT_OF_RANGE, _SC.UNIMPLEMENTED}
_DENIED = {
    _SC.PERMISSION_DENIED,
    _SC.FAILED_PRECONDITION,
    _SC.NOT_FOUND,
    _SC.UNAUTHENTICATED,
    _SC.ALREADY_EXISTS,
    _SC.ABORTED,
}
T = TypeVar("T")


class NodeState(StrEnum):
    ATTESTED = "ATTESTED"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    REJECTED = "REJECTED"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"


_STATE_OUT = {
    common_pb2.NODE_STATE_ATTESTED: NodeState.ATTESTED,
    common_pb2.NODE_STATE_PENDING_APPROVAL: NodeState.PENDING_APPROVAL,
    common_pb2.NODE_STATE_REJECTED: NodeState.REJECTED,
    common_pb2.NODE_STATE_SUSPENDED: NodeState.SUSPENDED,
    common_pb2.NODE_STATE_REVOKED: NodeState.REVOKED,
}


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Lease:
    lease_id: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires_at: datetime
    accepted_suites: tuple[bytes, ...]  # 6-byte kem_id || kdf_id || aead_id, most preferred first


@dataclass(frozen=True)
class GpuInfo:
    """One verified GPU in a Register/Renew reply (``GpuSummary``)."""

    architecture: str
    driver_version: str
    vbios_version: str
    ueid: str
    measurement_result: str
    cc_mode: str
    revocation: str
    simulated: bool


@dataclass(frozen=True)
class Registration:
    """The outcome of Register or Renew."""

    node_id: str
    state: NodeState
    lease: Lease | None
    reasons: tuple[Reason, ...]
    groups: tuple[str, ...]
    policy_version: int
    audit_sequence: int
    simulated: bool = False
    gpus: tuple[GpuInfo, ...] = ()  # the GPUs the control plane verified, as its reply lists them

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "state": self.state.value,
            "lease": None
            if self.lease is None
            else {
                "lease_id": self.lease.lease_id,
                "issued_at": self.lease.issued_at.isoformat(),
                "expires_at": self.lease.expires_at.isoformat(),
            },
            "reasons": [vars(r) for r in self.reasons],
            "groups": list(self.groups),
            "policy_version": self.policy_version,
            "audit_sequence": self.audit_sequence,
            "simulated": self.simulated,
            "gpus": [vars(g) for g in self.gpus],
        }


class ControlPlaneError(NodeError):
    """A failed RPC. ``reason`` is the server's stable code (ErrorDetail.reason), empty if none came."""

    def __init__(
        self,
        message: str,
        *,
        code: NodeCode,
        status: str,
        reason: str = "",
        hint: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint)
        self.status = status
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def to_dict(self) -> dict[str, str]:
        out = super().to_dict()
        out.update(status=self.status, reason=self.reason)
        return out


def _text(value: str) -> str:
    return value[:MAX_TEXT]


NODE_PORTS = (
    "nodes call serve's --listen port (default 127.0.0.1:8443) for Attestation; KeyRelease is on "
    "--release-listen (8444), given by the registration reply"
)


def error_from_rpc(err: grpc.RpcError, *, call: str, denied: NodeCode, target: str = "") -> ControlPlaneError:
    """Map a failed call to a ``ControlPlaneError``; ``denied`` is the code for a refusal by the server.
    A call that never reached a servicer (connection refused, TLS, wrong port) is read by
    ``proto.rpc_failure``, the reading the operator client shares, for its message and hint."""
    status: grpc.StatusCode = err.code() if hasattr(err, "code") else _SC.UNKNOWN
    details = _text(str(err.details() or "")) if hasattr(err, "details") else ""
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    detail = parse_error_detail(trailing)
    if status in _UNREACHABLE:
        code = NodeCode.CONTROL_PLANE_UNAVAILABLE
    elif status in _MALFORMED:
        code = NodeCode.REQUEST_REFUSED
    elif status in _DENIED:
        code = denied
    else:
        code = NodeCode.CONTROL_PLANE_ERROR
    reason = detail.reason if detail else ""
    failure = None if detail else transport_failure(status, details, Endpoint(target, call, NODE_PORTS))
    if failure is not None:
        return ControlPlaneError(
            f"{call} failed: {failure.message}",
            code=code,
            status=status.name,
            hint=failure.hint,
            metadata={"transport": failure.code.value},
        )
    what = f"{call} failed with {status.name}" + (f" ({reason})" if reason else "")
    return ControlPlaneError(
        f"{what}: {details}" if details else what,
        code=code,
        status=status.name,
        reason=reason,
        hint=detail.hint if detail and detail.hint else None,
        metadata=detail.metadata if detail else None,
    )


def _bad_reply(call: str, message: str) -> ControlPlaneError:
    return ControlPlaneError(
        f"{call} reply is out of contract: {message}", code=NodeCode.CONTROL_PLANE_ERROR, status="OK"
    )


def _time(call: str, msg: Any, name: str) -> datetime:
    if not msg.HasField(name):
        raise _bad_reply(call, f"{name} is missing")
    stamp: timestamp_pb2.Timestamp = getattr(msg, name)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise _bad_reply(call, f"{name} is out of range") from None


def _suite_bytes(suite: attestation_pb2.KemSuite) -> bytes:
    ids = (suite.kem_id, suite.kdf_id, suite.aead_id)
    if max(ids) > 0xFFFF:
        return b""
    return b"".join(i.to_bytes(2, "big") for i in ids)


def _keys(identity: NodeIdentity) -> attestation_pb2.NodeKeys:
    suite = identity.suite
    return attestation_pb2.NodeKeys(
        kem_suite=attestation_pb2.KemSuite(kem_id=suite.kem_id, kdf_id=suite.kdf_id, aead_id=suite.aead_id),
        kem_public_key=identity.kem_public,
        signing_public_key=identity.signing_public,
    )


def _evidence(evidence: Evidence) -> attestation_pb2.Evidence:
    return attestation_pb2.Evidence(
        tee=_TEE_WIRE[evidence.tee],
        report=evidence.blob,
        endorsements=[attestation_pb2.Endorsement(der=der) for der in evidence.endorsements],
    )


def _gpus(items: Sequence[GpuEvidenceItem]) -> list[attestation_pb2.GpuEvidence]:
    return [
        attestation_pb2.GpuEvidence(
            report=g.report, certificates=list(g.certificates), architecture=g.architecture
        )
        for g in items
    ]


def _registration(call: str, msg: attestation_pb2.AttestationResult) -> Registration:
    state = _STATE_OUT.get(msg.state)
    if state is None:
        raise _bad_reply(call, f"unknown node state {msg.state}")
    lease = None
    if msg.HasField("lease"):
        lease = Lease(
            msg.lease.lease_id, _time(call, msg.lease, "issued_at"), _time(call, msg.lease, "expires_at")
        )
    if state is NodeState.ATTESTED and (not msg.node_id or lease is None):
        raise _bad_reply(call, "an ATTESTED result must carry a node id and a lease")
    return Registration(
        node_id=msg.node_id,
        state=state,
        lease=lease,
        reasons=tuple(Reason(r.code, _text(r.message), _text(r.hint)) for r in msg.reasons),
        groups=tuple(msg.groups),
        policy_version=msg.policy_version,
        audit_sequence=msg.audit_sequence,
        simulated=msg.HasField("claims") and msg.claims.simulated,
        gpus=tuple(
            GpuInfo(
                architecture=_text(g.architecture),
                driver_version=_text(g.driver_version),
                vbios_version=_text(g.vbios_version),
                ueid=_text(g.ueid),
                measurement_result=_text(g.measurement_result),
                cc_mode=_text(g.cc_mode),
                revocation=_text(g.revocation),
                simulated=g.simulated,
            )
            for g in (msg.claims.gpus if msg.HasField("claims") else ())
        ),
    )


def _grant(msg: key_release_pb2.ReleaseResponse) -> ReleaseGrant:
    purpose = _PURPOSE_OUT.get(msg.purpose)
    if purpose is None or purpose not in PURPOSES:
        raise _bad_reply("ReleaseKey", f"unknown purpose {msg.purpose}")
    if not msg.sealed_key or not msg.aad:
        raise _bad_reply("ReleaseKey", "sealed_key and aad are required")
    return ReleaseGrant(
        sealed_key=bytes(msg.sealed_key),
        key_name=msg.key_name,
        key_version=msg.key_version,
        purpose=purpose,
        audit_sequence=msg.audit_sequence,
        lease_expires_at=_time("ReleaseKey", msg, "lease_expires_at"),
        aad=bytes(msg.aad),
    )


class ControlPlaneClient:
    """Typed calls to the node-facing services. Thread-safe (one gRPC channel)."""

    def __init__(
        self,
        target: str,
        *,
        ca_pem: bytes | None = None,
        insecure_dev: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        server_name: str | None = None,
        release_target: str | None = None,
    ) -> None:
        if not target or not isinstance(target, str):
            raise NodeError("the control-plane address is empty", code=NodeCode.CONFIG_INVALID)
        if insecure_dev and ca_pem is not None:
            raise NodeError(
                "both a pinned CA and insecure_dev were given; choose one", code=NodeCode.CONFIG_INVALID
            )
        if not insecure_dev and not ca_pem:
            raise NodeError(
                "no control-plane CA to pin: pass the CA certificate (PEM) or, for development only, "
                "insecure_dev=True",
                code=NodeCode.CONFIG_INVALID,
            )
        if not timeout > 0:
            raise NodeError("timeout must be positive", code=NodeCode.CONFIG_INVALID)
        self.target = target
        self.timeout = timeout
        self.insecure_dev = insecure_dev
        self.release_target = release_target
        self._ca_pem = ca_pem
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._lock = threading.Lock()
        self._tls_key: ec.EllipticCurvePrivateKey | None = None
        self._release_channel: grpc.Channel | None = None
        self.client_certificate: bytes = b""  # DER, from the last ATTESTED Register/Renew
        if insecure_dev:
            self._channel = grpc.insecure_channel(target)
        else:
            self._tls_key = ec.generate_private_key(ec.SECP256R1())
            creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
            self._channel = grpc.secure_channel(target, creds, options=self._options)
        self._attestation = attestation_pb2_grpc.AttestationStub(self._channel)
        self._release = key_release_pb2_grpc.KeyReleaseStub(self._channel)

    def __repr__(self) -> str:
        mode = "insecure-dev" if self.insecure_dev else "tls-pinned"
        return f"ControlPlaneClient(target={self.target!r}, {mode})"

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._release_channel is not None:
                self._release_channel.close()
                self._release_channel = None
        self._channel.close()

    def _tls_key_message(self, nonce: bytes, identity: NodeIdentity) -> attestation_pb2.ClientTlsKey | None:
        if self._tls_key is None:
            return None
        spki = self._tls_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return attestation_pb2.ClientTlsKey(
            public_key=spki, signature=identity.sign(tls_key_proof_message(nonce, spki))
        )

    def _take_certificate(self, reply: attestation_pb2.AttestationResult) -> None:
        """Switch KeyRelease to mutual TLS with the certificate of an ATTESTED reply."""
        if self._tls_key is None or not reply.client_certificate:
            return
        from cryptography import x509  # local: only nodes with TLS need it

        try:
            cert = x509.load_der_x509_certificate(bytes(reply.client_certificate))
        except (ValueError, x509.InvalidVersion):
            raise _bad_reply("Register", "client_certificate is not a DER X.509 certificate") from None
        if cert.public_key() != self._tls_key.public_key():
            raise _bad_reply("Register", "client_certificate is not for this node's TLS key")
        target = self.release_target
        if not target:
            if not reply.release_port:
                raise _bad_reply("Register", "a client certificate came without the KeyRelease port")
            target = f"{self.target.rpartition(':')[0]}:{reply.release_port}"
        creds = grpc.ssl_channel_credentials(
            root_certificates=self._ca_pem,
            private_key=self._tls_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
        )
        channel = grpc.secure_channel(target, creds, options=self._options)
        with self._lock:
            old, self._release_channel = self._release_channel, channel
            self._release = key_release_pb2_grpc.KeyReleaseStub(channel)
            self.client_certificate = bytes(reply.client_certificate)
        if old is not None:
            # A release may still be in flight on the old channel (a renewal runs beside the workload's
            # requests): close it once any call on it has met its deadline, not now.
            timer = threading.Timer(self.timeout + 1.0, old.close)
            timer.daemon = True
            timer.start()

    def _call(self, name: str, fn: Callable[..., T], request: Any, denied: NodeCode) -> T:
        try:
            return fn(request, timeout=self.timeout)
        except grpc.RpcError as err:
            target = (self.release_target or "") if name == "ReleaseKey" else self.target
            raise error_from_rpc(err, call=name, denied=denied, target=target) from None

    def challenge(self, node_name: str) -> Challenge:
        reply = self._call(
            "Challenge",
            self._attestation.Challenge,
            attestation_pb2.ChallengeRequest(node_name=node_name),
            NodeCode.REGISTRATION_REJECTED,
        )
        if len(reply.nonce) != 32 or not reply.accepted_kem_suites:
            raise _bad_reply("Challenge", "expected a 32-byte nonce and at least one accepted KEM suite")
        return Challenge(
            bytes(reply.nonce),
            _time("Challenge", reply, "expires_at"),
            tuple(_suite_bytes(s) for s in reply.accepted_kem_suites),
        )

    def register(
        self,
        *,
        nonce: bytes,
        evidence: Evidence,
        identity: NodeIdentity,
        node_name: str,
        groups: Sequence[str] = (),
        gpus: Sequence[GpuEvidenceItem] = (),
    ) -> Registration:
        """Register; ``identity`` contributes its public keys only; ``gpus``: what the report data committed to."""
        request = attestation_pb2.RegisterRequest(
            nonce=nonce,
            evidence=_evidence(evidence),
            keys=_keys(identity),
            node_name=node_name,
            requested_groups=list(groups),
            client_tls_key=self._tls_key_message(nonce, identity),
            gpu_evidence=_gpus(gpus),
        )
        reply = self._call("Register", self._attestation.Register, request, NodeCode.REGISTRATION_REJECTED)
        registration = _registration("Register", reply)
        self._take_certificate(reply)
        return registration

    def renew(
        self,
        *,
        node_id: str,
        nonce: bytes,
        evidence: Evidence,
        identity: NodeIdentity,
        gpus: Sequence[GpuEvidenceItem] = (),
    ) -> Registration:
        request = attestation_pb2.RenewRequest(
            node_id=node_id,
            nonce=nonce,
            evidence=_evidence(evidence),
            keys=_keys(identity),
            client_tls_key=self._tls_key_message(nonce, identity),
            gpu_evidence=_gpus(gpus),
        )
        reply = self._call("Renew", self._attestation.Renew, request, NodeCode.REGISTRATION_REJECTED)
        registration = _registration("Renew", reply)
        self._take_certificate(reply)
        return registration

    def record_output(self, body: bytes, signature: bytes) -> int:
        """``RecordOutput`` on the release port: the ``model.output`` ledger sequence."""
        request = key_release_pb2.RecordOutputRequest(body=body, signature=signature)
        if self._tls_key is not None and not self.client_certificate:
            raise NodeError(
                "no client certificate for the release port (mutual TLS) yet",
                code=NodeCode.NODE_NOT_ATTESTED,
                hint="register (or renew) ATTESTED first; the reply carries the node's client certificate",
            )
        with self._lock:
            stub = self._release
        reply = self._call("RecordOutput", stub.RecordOutput, request, NodeCode.RELEASE_DENIED)
        return int(reply.audit_sequence)

    def release_key(self, signed: SignedRelease) -> ReleaseGrant:
        request = key_release_pb2.ReleaseRequest(body=signed.body, signature=signed.signature)
        if self._tls_key is not None and not self.client_certificate:
            raise NodeError(
                "no client certificate for KeyRelease (mutual TLS) yet",
                code=NodeCode.NODE_NOT_ATTESTED,
                hint="register (or renew) ATTESTED first; the reply carries the node's client certificate",
            )
        with self._lock:
            stub = self._release
        reply = self._call("ReleaseKey", stub.ReleaseKey, request, NodeCode.RELEASE_DENIED)
        return _grant(reply)
