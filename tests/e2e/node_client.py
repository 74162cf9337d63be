"""A minimal node-side client over the generated stubs, for tests and the benchmark only.

The real node agent (enclave/) is built elsewhere; this one just speaks the wire contract: Challenge ->
evidence bound to the node's keys -> Register/Renew, and signed ReleaseKey requests whose sealed keys it
opens after checking the AAD.

Mutual TLS: each client makes a P-256 TLS key, sends it with Register/Renew signed by its Ed25519 key,
and calls KeyRelease over a second channel presenting the client certificate of the reply. The node
channel must come from ``ServerProcess.channel()`` (it carries the pinned CA as ``sovereign_ca``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import timestamp_pb2

from enclave.identity import NodeIdentity
from enclave.providers.base import Evidence, EvidenceProvider
from kms.envelope import open_sealed_key, release_aad
from proto.contract import SIGNING_DOMAIN
from proto.sovereign.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    common_pb2,
    key_release_pb2,
    key_release_pb2_grpc,
)

TLS_KEY_LABEL = b"sovereign/v1 client tls key\x00"
TEE = {"snp": common_pb2.TEE_SNP, "tdx": common_pb2.TEE_TDX}
PURPOSE = {"read": common_pb2.PURPOSE_READ, "write": common_pb2.PURPOSE_WRITE}


def keys_message(identity: NodeIdentity) -> attestation_pb2.NodeKeys:
    suite = identity.suite
    return attestation_pb2.NodeKeys(
        kem_suite=attestation_pb2.KemSuite(kem_id=suite.kem_id, kdf_id=suite.kdf_id, aead_id=suite.aead_id),
        kem_public_key=identity.kem_public,
        signing_public_key=identity.signing_public,
    )


def evidence_message(evidence: Evidence) -> attestation_pb2.Evidence:
    return attestation_pb2.Evidence(
        tee=TEE[evidence.tee.value],
        report=evidence.blob,
        endorsements=[attestation_pb2.Endorsement(der=d) for d in evidence.endorsements],
    )


def release_body(
    node_id: str,
    key_name: str,
    purpose: str = "read",
    *,
    request_id: bytes | None = None,
    when: datetime | None = None,
    key_version: int = 0,
) -> key_release_pb2.ReleaseRequestBody:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when or datetime.now(UTC))
    return key_release_pb2.ReleaseRequestBody(
        node_id=node_id,
        key_name=key_name,
        purpose=PURPOSE.get(purpose, common_pb2.PURPOSE_UNSPECIFIED),
        request_id=request_id if request_id is not None else secrets.token_bytes(16),
        timestamp=stamp,
        key_version=key_version,
    )


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def mtls_channel(address: str, ca: bytes, key_pem: bytes, cert_der: bytes) -> grpc.Channel:
    """A channel presenting a client certificate (DER) with its key, pinning ``ca``."""
    cert_pem = x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.secure_channel(address, creds)


def sign_body(identity: NodeIdentity, body: bytes) -> key_release_pb2.ReleaseRequest:
    return key_release_pb2.ReleaseRequest(body=body, signature=identity.sign(SIGNING_DOMAIN + body))


@dataclass
class NodeClient:
    channel: grpc.Channel
    provider: EvidenceProvider
    name: str = "node-a"

    def __post_init__(self) -> None:
        self.identity = NodeIdentity.generate()
        self.attestation = attestation_pb2_grpc.AttestationStub(self.channel)
        self.release_stub = key_release_pb2_grpc.KeyReleaseStub(self.channel)
        self.release_channel: grpc.Channel | None = None
        self.node_id = ""
        self.tls_key = ec.generate_private_key(ec.SECP256R1())
        self.client_certificate = b""  # DER, from the last ATTESTED Register/Renew
        self.release_address = ""

    def tls_key_message(
        self, nonce: bytes, identity: NodeIdentity | None = None
    ) -> attestation_pb2.ClientTlsKey:
        spki = self.tls_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signature = (identity or self.identity).sign(TLS_KEY_LABEL + nonce + spki)
        return attestation_pb2.ClientTlsKey(public_key=spki, signature=signature)

    def _take(self, result: attestation_pb2.AttestationResult) -> None:
        ca = getattr(self.channel, "sovereign_ca", None)
        if not result.client_certificate or ca is None:
            return
        self.client_certificate = bytes(result.client_certificate)
        self.release_address = f"127.0.0.1:{result.release_port}"
        self.release_channel = mtls_channel(
            self.release_address, ca, pem_key(self.tls_key), self.client_certificate
        )
        self.release_stub = key_release_pb2_grpc.KeyReleaseStub(self.release_channel)

    def challenge(self) -> bytes:
        nonce: bytes = self.attestation.Challenge(attestation_pb2.ChallengeRequest(node_name=self.name)).nonce
        return nonce

    def evidence(self, nonce: bytes, identity: NodeIdentity | None = None) -> attestation_pb2.Evidence:
        return evidence_message(self.provider.get_evidence((identity or self.identity).report_data(nonce)))

    def register_request(self, nonce: bytes | None = None, **kw: Any) -> attestation_pb2.RegisterRequest:
        nonce = nonce if nonce is not None else self.challenge()
        if "client_tls_key" not in kw:
            kw["client_tls_key"] = self.tls_key_message(nonce)
        return attestation_pb2.RegisterRequest(
            nonce=nonce,
            evidence=kw.pop("evidence", None) or self.evidence(nonce),
            keys=kw.pop("keys", None) or keys_message(self.identity),
            node_name=self.name,
            **kw,
        )

    def register(self, **kw: Any) -> attestation_pb2.AttestationResult:
        result: attestation_pb2.AttestationResult = self.attestation.Register(self.register_request(**kw))
        if result.node_id:
            self.node_id = result.node_id
        self._take(result)
        return result

    def renew(self, identity: NodeIdentity | None = None) -> attestation_pb2.AttestationResult:
        nonce = self.challenge()
        ident = identity or self.identity
        result: attestation_pb2.AttestationResult = self.attestation.Renew(
            attestation_pb2.RenewRequest(
                node_id=self.node_id,
                nonce=nonce,
                evidence=self.evidence(nonce, ident),
                keys=keys_message(ident),
                client_tls_key=self.tls_key_message(nonce, ident),
            )
        )
        self._take(result)
        return result

    def release_request(
        self, key_name: str, purpose: str = "read", **kw: Any
    ) -> key_release_pb2.ReleaseRequest:
        signer = kw.pop("signer", None) or self.identity
        node_id = kw.pop("node_id", None) or self.node_id
        body = release_body(node_id, key_name, purpose, **kw).SerializeToString(deterministic=True)
        return sign_body(signer, body)

    def release(self, key_name: str, purpose: str = "read", **kw: Any) -> tuple[bytes, Any]:
        """Release and open a key; returns (plaintext data key, response)."""
        request = self.release_request(key_name, purpose, **kw)
        response = self.release_stub.ReleaseKey(request)
        body = key_release_pb2.ReleaseRequestBody.FromString(request.body)
        expected = release_aad(
            node_id=body.node_id,
            key_name=response.key_name,
            key_version=response.key_version,
            purpose=purpose,
            request_id=body.request_id,
            audit_sequence=response.audit_sequence,
            lease_expiry=response.lease_expires_at.seconds,
        )
        assert expected == response.aad, "the server's AAD differs from the one the node computes"
        key = open_sealed_key(self.identity.kem_private_key(), response.sealed_key, expected)
        return key, response


def rpc_error(fn: Any, *args: Any) -> tuple[grpc.StatusCode, str, Any]:
    """Call ``fn(*args)`` expecting a failed RPC; returns (status, ErrorDetail.reason, ErrorDetail)."""
    from proto.contract import parse_error_detail

    try:
        fn(*args)
    except grpc.RpcError as err:
        detail = parse_error_detail(err.trailing_metadata())
        return err.code(), detail.reason if detail else "", detail
    raise AssertionError("the call succeeded but should have been refused")
