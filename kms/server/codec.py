"""Protobuf <-> use-case types. The only place (with the servicers) that sees generated messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from attestation.claims import Claims
from attestation.coded import Reason
from kms.domain.catalogue import KeyKind, KeyRecord, KeyState
from kms.domain.registry import Lease, NodeRecord, NodeState
from kms.envelope import Suite
from kms.errors import Code, KmsError
from kms.usecases.attest import (
    AttestationOutcome,
    EvidenceInput,
    NodeKeys,
    Outcome,
    RegisterInput,
    RenewInput,
)
from kms.usecases.gpu_appraisal import gpu_summaries
from kms.usecases.release import ReleaseBody, Released, SignedRelease
from policies import claims_from_dict
from policies.errors import PolicyError
from proto.contract import BodyRejected, GpuEvidenceItem, decode_release_body
from proto.sovereign.v1 import admin_pb2, attestation_pb2, common_pb2, key_release_pb2

_TEE = {common_pb2.TEE_SNP: "snp", common_pb2.TEE_TDX: "tdx"}
_TEE_OUT = {"snp": common_pb2.TEE_SNP, "tdx": common_pb2.TEE_TDX}
_PURPOSE = {common_pb2.PURPOSE_READ: "read", common_pb2.PURPOSE_WRITE: "write"}
_PURPOSE_OUT = {v: k for k, v in _PURPOSE.items()}
NODE_STATE_OUT = {
    NodeState.ATTESTED: common_pb2.NODE_STATE_ATTESTED,
    NodeState.PENDING: common_pb2.NODE_STATE_PENDING_APPROVAL,
    NodeState.SUSPENDED: common_pb2.NODE_STATE_SUSPENDED,
    NodeState.REVOKED: common_pb2.NODE_STATE_REVOKED,
}
NODE_STATE_IN = {v: k for k, v in NODE_STATE_OUT.items()}
_OUTCOME_OUT = {
    Outcome.ATTESTED: common_pb2.NODE_STATE_ATTESTED,
    Outcome.PENDING_APPROVAL: common_pb2.NODE_STATE_PENDING_APPROVAL,
    Outcome.REJECTED: common_pb2.NODE_STATE_REJECTED,
}
KIND_IN = {common_pb2.KEY_KIND_DATASET: KeyKind.DATASET, common_pb2.KEY_KIND_MODEL: KeyKind.MODEL}
KIND_OUT = {v: k for k, v in KIND_IN.items()}
KEY_STATE_IN = {
    admin_pb2.KEY_STATE_ENABLED: KeyState.ACTIVE,
    admin_pb2.KEY_STATE_DISABLED: KeyState.DISABLED,
    admin_pb2.KEY_STATE_DESTROYED: KeyState.DESTROYED,
}
KEY_STATE_OUT = {v: k for k, v in KEY_STATE_IN.items()}


def invalid(message: str, code: Code = Code.REQUEST_INVALID) -> KmsError:
    return KmsError(message, code=code)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


# --- attestation ------------------------------------------------------------------------------------


def suite_out(suite: Suite) -> attestation_pb2.KemSuite:
    return attestation_pb2.KemSuite(kem_id=suite.kem_id, kdf_id=suite.kdf_id, aead_id=suite.aead_id)


def keys_in(msg: attestation_pb2.NodeKeys) -> NodeKeys:
    s = msg.kem_suite
    if max(s.kem_id, s.kdf_id, s.aead_id) > 0xFFFF:
        raise invalid("KEM suite ids must be <= 0xFFFF")
    suite = s.kem_id.to_bytes(2, "big") + s.kdf_id.to_bytes(2, "big") + s.aead_id.to_bytes(2, "big")
    return NodeKeys(suite, bytes(msg.kem_public_key), bytes(msg.signing_public_key))


def gpus_in(items: Iterable[attestation_pb2.GpuEvidence]) -> tuple[GpuEvidenceItem, ...]:
    return tuple(
        GpuEvidenceItem(bytes(g.report), tuple(bytes(c) for c in g.certificates), g.architecture)
        for g in items
    )


def evidence_in(
    msg: attestation_pb2.Evidence, gpus: Iterable[attestation_pb2.GpuEvidence] = ()
) -> EvidenceInput:
    return EvidenceInput(
        _TEE.get(msg.tee, ""),
        bytes(msg.report),
        tuple(bytes(e.der) for e in msg.endorsements),
        gpus_in(gpus),
    )


def register_in(msg: attestation_pb2.RegisterRequest) -> RegisterInput:
    return RegisterInput(
        nonce=bytes(msg.nonce),
        evidence=evidence_in(msg.evidence, msg.gpu_evidence),
        keys=keys_in(msg.keys),
        node_name=msg.node_name,
        requested_groups=tuple(msg.requested_groups),
    )


def renew_in(msg: attestation_pb2.RenewRequest) -> RenewInput:
    return RenewInput(
        msg.node_id, bytes(msg.nonce), evidence_in(msg.evidence, msg.gpu_evidence), keys_in(msg.keys)
    )


def lease_out(lease: Lease) -> common_pb2.Lease:
    return common_pb2.Lease(
        lease_id=lease.lease_id, issued_at=ts(lease.issued_at), expires_at=ts(lease.expires_at)
    )


def reasons_out(reasons: Iterable[Reason]) -> list[common_pb2.Reason]:
    return [common_pb2.Reason(code=r.code, message=r.message[:1024], hint=r.hint[:1024]) for r in reasons]


def gpus_out(claims: Claims) -> list[attestation_pb2.GpuSummary]:
    return [attestation_pb2.GpuSummary(**gpu) for gpu in gpu_summaries(claims)]


def claims_out(claims: Claims) -> attestation_pb2.ClaimsSummary:
    return attestation_pb2.ClaimsSummary(
        tee=_TEE_OUT[claims.tee.value],
        product=claims.product,
        evidence_version=claims.version,
        measurement=claims.measurement,
        host_data=claims.host_data,
        debug=claims.debug,
        tcb_status=claims.tcb_status.value,
        platform_id=claims.platform_id,
        rtmrs=list(claims.rtmrs),
        simulated=claims.simulated,
        gpus=gpus_out(claims),
    )


def outcome_out(result: AttestationOutcome) -> attestation_pb2.AttestationResult:
    out = attestation_pb2.AttestationResult(
        node_id=result.node_id,
        state=_OUTCOME_OUT[result.outcome],
        reasons=reasons_out(result.reasons),
        groups=list(result.groups),
        policy_version=result.policy_version,
        audit_sequence=result.audit_sequence,
    )
    if result.lease is not None:
        out.lease.CopyFrom(lease_out(result.lease))
    if result.claims is not None:
        out.claims.CopyFrom(claims_out(result.claims))
    return out


# --- key release ------------------------------------------------------------------------------------


def release_in(msg: key_release_pb2.ReleaseRequest) -> SignedRelease:
    """Parse the signed body and require its one canonical encoding (proto/README.md, step 4)."""
    body = bytes(msg.body)
    try:
        parsed = decode_release_body(body)
    except BodyRejected as exc:
        raise invalid(exc.message, Code(exc.code)) from None
    if not parsed.HasField("timestamp"):
        raise invalid("timestamp is required")
    try:
        when = parsed.timestamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise invalid("timestamp is out of range") from None
    fields = ReleaseBody(
        node_id=parsed.node_id,
        key_name=parsed.key_name,
        purpose=_PURPOSE.get(parsed.purpose, ""),
        request_id=bytes(parsed.request_id),
        timestamp=when,
        key_version=parsed.key_version,
    )
    return SignedRelease(body, bytes(msg.signature), fields)


def released_out(r: Released) -> key_release_pb2.ReleaseResponse:
    return key_release_pb2.ReleaseResponse(
        sealed_key=r.sealed_key,
        key_name=r.key_name,
        key_version=r.key_version,
        purpose=_PURPOSE_OUT[r.purpose],
        audit_sequence=r.audit_sequence,
        lease_expires_at=ts(r.lease_expires_at),
        aad=r.aad,
    )


# --- admin ------------------------------------------------------------------------------------------


def stored_claims_out(claims: Mapping[str, Any]) -> attestation_pb2.ClaimsSummary | None:
    try:
        return claims_out(claims_from_dict(dict(claims)))
    except PolicyError:
        return None


def node_out(n: NodeRecord) -> admin_pb2.Node:
    suite = n.kem_suite
    out = admin_pb2.Node(
        node_id=n.node_id,
        node_name=n.node_name,
        state=NODE_STATE_OUT[n.state],
        keys=attestation_pb2.NodeKeys(
            kem_suite=attestation_pb2.KemSuite(
                kem_id=int.from_bytes(suite[0:2], "big"),
                kdf_id=int.from_bytes(suite[2:4], "big"),
                aead_id=int.from_bytes(suite[4:6], "big"),
            ),
            kem_public_key=n.kem_public,
            signing_public_key=n.signing_public,
        ),
        groups=list(n.groups),
        requested_groups=list(n.requested_groups),
        reasons=reasons_out(n.reasons),
        policy_version=n.policy_version,
        registered_at=ts(n.registered_at),
        attested_at=ts(n.attested_at),
        state_changed_at=ts(n.state_changed_at),
    )
    summary = stored_claims_out(n.claims)
    if summary is not None:
        out.claims.CopyFrom(summary)
    if n.state is NodeState.ATTESTED and n.lease_id and n.lease_issued_at and n.lease_expires_at:
        out.lease.CopyFrom(lease_out(Lease(n.lease_id, n.lease_issued_at, n.lease_expires_at)))
    return out


def key_out(k: KeyRecord) -> admin_pb2.Key:
    return admin_pb2.Key(
        name=k.name,
        kind=KIND_OUT[k.kind],
        state=KEY_STATE_OUT[k.state],
        latest_version=k.current_version,
        versions=[
            admin_pb2.KeyVersion(version=v.version, created_at=ts(v.created_at), kek_version=v.kek_version)
            for v in k.versions
            if v.ciphertext is not None
        ],
        created_at=ts(k.created_at),
        updated_at=ts(k.updated_at),
    )
