"""Registration and renewal (DESIGN.md, Protocol 1-3) as a plain use case.

Order of checks: the request's shape (malformed input fails before any state changes), then the nonce
is spent and committed, then evidence verification, report-data binding and appraisal. Every failure
after the shape check is a REJECTED outcome with coded reasons, not an exception.

Authenticated: a Register or Renew is authenticated once its evidence verified (chain to a pinned root,
signature, collateral at ``now``) and its report data binds the presented nonce and keys, where the
nonce was issued by this server for this node name, unexpired and unspent (spent now), and, on Renew,
the keys are the ones recorded for the named node. Only then is the outcome a ``registration`` audit
entry (claims digest, measurement, TCB status, groups, reasons), durable before the reply, whose sequence
is ``audit_sequence`` in the result; its actor names a node (``node:<id>``) only for a Renew, whose
node has then proven it. Every refusal before that point (malformed request, unknown, expired, replayed
or misnamed nonce, unknown or unrenewable node, other keys on Renew, evidence that does not verify or
bind) is counted and rate-limit logged (``kms.usecases.metrics.Refusals``, endpoint ``node``; malformed requests,
raised as REQUEST_INVALID, by the servicer) and never written to the ledger: anyone can send those, and
they prove nothing about any node. An outcome is authenticated exactly when it carries claims
(``AttestationOutcome.authenticated``); a refusal after verification must carry them to be recorded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from attestation.binding import verify_binding
from attestation.claims import Claims
from attestation.coded import Reason
from attestation.errors import AttestationError
from attestation.evidence import detect_tee
from kms.audit.draft import Draft, node_actor, reasons_of
from kms.audit.entry import Decision, Kind
from kms.clock import Clock
from kms.domain.registry import (
    Evidence,
    Lease,
    NodeChange,
    NodeRecord,
    NodeState,
    NodeStore,
    claims_digest,
    new_lease,
    new_node_id,
    operator_suspended,
    reasons_from,
    renewed,
)
from kms.envelope import SUITES, Suite, check_recipient_key
from kms.envelope.errors import EnvelopeError
from kms.errors import Code, KmsError
from kms.sql.audit_append import AuditLedger
from kms.usecases.gpu_appraisal import gpu_audit_fields
from kms.usecases.metrics import Metrics
from kms.usecases.nonces import Challenge, NonceError, require_label
from kms.usecases.policy_source import ActivePolicy
from policies import Verdict, appraise
from policies.errors import PolicyError
from proto.contract import GpuEvidenceItem, GpuEvidenceRejected, check_gpu_evidence, gpu_commitment, gpu_nonce

MAX_GROUPS = 32
MAX_ENDORSEMENTS = 8
MAX_REPORT = 64 << 10
SIGNING_KEY_BYTES = 32
ACCEPTED_SUITES: tuple[Suite, ...] = tuple(SUITES.values())


class Outcome(StrEnum):
    ATTESTED = "attested"
    PENDING_APPROVAL = "pending"
    REJECTED = "rejected"


@dataclass(frozen=True)
class NodeKeys:
    kem_suite: bytes  # 6 bytes: kem_id || kdf_id || aead_id
    kem_public: bytes
    signing_public: bytes


@dataclass(frozen=True)
class EvidenceInput:
    tee: str  # "snp" or "tdx" as declared by the node
    report: bytes = field(repr=False)
    endorsements: tuple[bytes, ...] = field(default=(), repr=False)
    gpus: tuple[GpuEvidenceItem, ...] = field(default=(), repr=False)  # RegisterRequest.gpu_evidence


@dataclass(frozen=True)
class RegisterInput:
    nonce: bytes
    evidence: EvidenceInput
    keys: NodeKeys
    node_name: str
    requested_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenewInput:
    node_id: str
    nonce: bytes
    evidence: EvidenceInput
    keys: NodeKeys


@dataclass(frozen=True)
class AttestationOutcome:
    node_id: str
    outcome: Outcome
    lease: Lease | None
    reasons: tuple[Reason, ...]
    claims: Claims | None
    groups: tuple[str, ...]
    policy_version: int
    audit_sequence: int = 0  # of the registration entry (0: not recorded, or no ledger wired)

    @property
    def authenticated(self) -> bool:
        """The evidence verified and bound the spent nonce and the keys (module docstring): claims
        exist only past that point."""
        return self.claims is not None


_DECISION = {Outcome.ATTESTED: Decision.GRANT, Outcome.REJECTED: Decision.DENY}


def registration_draft(
    result: AttestationOutcome, node_name: str, tee: str, renew_of: NodeRecord | None
) -> Draft:
    fields: dict[str, Any] = {
        "node_id": result.node_id,
        "node_name": node_name,
        "tee": tee,
        "state": result.outcome.value,
        "groups": list(result.groups),
        "policy_version": result.policy_version,
    }
    if renew_of is not None:
        fields["old_state"] = renew_of.state.value
    if result.claims is not None:
        fields["claims_digest"] = claims_digest(result.claims.to_dict())
        fields["measurement"] = result.claims.measurement.hex()
        fields["tcb_status"] = result.claims.tcb_status.value
        fields.update(gpu_audit_fields(result.claims))
    return Draft(
        Kind.REGISTRATION if renew_of is None else Kind.NODE_RENEW,
        node_actor(result.node_id),
        _DECISION.get(result.outcome, Decision.NONE),
        reasons_of(result.reasons),
        fields,
    )


class _Rejected(Exception):
    def __init__(self, reasons: list[Reason], claims: Claims | None = None) -> None:
        super().__init__(reasons[0].code if reasons else "rejected")
        self.reasons = reasons
        self.claims = claims


def _reject(code: Code | str, message: str, hint: str = "") -> _Rejected:
    return _Rejected([Reason(str(code), message, hint)])


def _invalid(message: str) -> KmsError:
    return KmsError(message, code=Code.REQUEST_INVALID)


# --- shape checks (before any state changes) -------------------------------------------------------


def check_keys(keys: NodeKeys) -> Suite:
    suite = next((s for s in ACCEPTED_SUITES if s.id_bytes() == keys.kem_suite), None)
    if suite is None:
        raise _invalid(f"KEM suite {keys.kem_suite.hex()} is not accepted by this server")
    if len(keys.kem_public) != suite.public_key_len:
        raise _invalid(f"kem_public_key must be {suite.public_key_len} bytes for {suite.name}")
    try:  # the key every release is sealed to: refused here unless sealing to it cannot fail
        check_recipient_key(suite, keys.kem_public)
    except (EnvelopeError, ValueError):
        raise KmsError(
            f"kem_public_key is not a {suite.name} public key that keys can be sealed to",
            code=Code.NODE_KEM_KEY_INVALID,
        ) from None
    if len(keys.signing_public) != SIGNING_KEY_BYTES:
        raise _invalid("signing_public_key must be a 32-byte Ed25519 public key")
    return suite


def check_evidence(evidence: EvidenceInput) -> None:
    if evidence.tee not in ("snp", "tdx"):
        raise _invalid("evidence.tee must be TEE_SNP or TEE_TDX")
    if not 1 <= len(evidence.report) <= MAX_REPORT:
        raise _invalid(f"evidence.report must be 1 byte to {MAX_REPORT} bytes")
    if len(evidence.endorsements) > MAX_ENDORSEMENTS:
        raise _invalid(f"at most {MAX_ENDORSEMENTS} endorsements")
    if evidence.tee == "tdx" and evidence.endorsements:
        raise _invalid("endorsements are only for SNP evidence")
    if any(not 1 <= len(e) <= 16 << 10 for e in evidence.endorsements):
        raise _invalid("each endorsement must be 1 byte to 16 KiB of DER")
    try:
        check_gpu_evidence(evidence.gpus)
    except GpuEvidenceRejected as exc:
        raise _invalid(f"gpu_evidence: {exc}") from None


def check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    if len(groups) > MAX_GROUPS:
        raise _invalid(f"at most {MAX_GROUPS} groups")
    for g in groups:
        require_label(g, "group")
    return tuple(dict.fromkeys(groups))


def granted_groups(requested: Sequence[str], eligible: Sequence[str]) -> tuple[str, ...]:
    """What the node gets: the eligible groups it asked for (all eligible ones if it asked for none)."""
    return tuple(g for g in eligible if not requested or g in requested)


# --- the use case -----------------------------------------------------------------------------------


class NonceBook(Protocol):
    """``kms.usecases.nonces.Nonces``."""

    def issue(self, node_name: str) -> Challenge: ...

    def consume(self, nonce: bytes, node_name: str) -> None: ...


class Verifier(Protocol):
    """``kms.usecases.verifier.EvidenceVerifier``."""

    def verify(self, report: bytes, endorsements: Sequence[bytes], now: datetime) -> Claims: ...


class GpuVerifier(Protocol):
    """``kms.usecases.gpu_appraisal.GpuVerifier``: the node's GPUs -> claim entries, or a GPU_* AttestationError."""

    def verify(
        self, items: Sequence[GpuEvidenceItem], *, nonce: bytes, now: datetime
    ) -> list[dict[str, Any]]: ...


class Policies(Protocol):
    """``kms.usecases.policy_source.PolicySource``."""

    def active(self, *, max_age: float = 0.0) -> ActivePolicy: ...


class Attestation:
    def __init__(
        self,
        nodes: NodeStore,
        *,
        nonces: NonceBook,
        verifier: Verifier,
        policies: Policies,
        clock: Clock,
        metrics: Metrics | None = None,
        audit: AuditLedger | None = None,
        gpus: GpuVerifier | None = None,
    ) -> None:
        self._nodes = nodes
        self._gpus = gpus
        self._audit = audit
        self._nonces = nonces
        self._verifier = verifier
        self._policies = policies
        self._clock = clock
        self._metrics = metrics

    def challenge(self, node_name: str) -> tuple[Challenge, tuple[Suite, ...]]:
        return self._nonces.issue(node_name), ACCEPTED_SUITES

    def register(self, req: RegisterInput) -> AttestationOutcome:
        result = self._register(req)
        return self._recorded(result, req.node_name, req.evidence.tee, None)

    def renew(self, req: RenewInput) -> AttestationOutcome:
        node = self._nodes.get(req.node_id) if isinstance(req.node_id, str) and req.node_id else None
        result = self._renew(req)
        return self._recorded(result, node.node_name if node else "", req.evidence.tee, node)

    def refused(self, code: str) -> None:
        """Count (and rate-limit log) a call refused before authentication; never audited. The servicer
        calls it for the requests refused as malformed (raised, INVALID_ARGUMENT)."""
        if self._metrics is not None:
            self._metrics.refusals.refused("node", code)

    def _recorded(
        self, result: AttestationOutcome, node_name: str, tee: str, renew_of: NodeRecord | None
    ) -> AttestationOutcome:
        if not result.authenticated:
            self.refused(result.reasons[0].code if result.reasons else Code.REQUEST_INVALID.value)
            return result
        if self._audit is None:
            return result
        (seq,) = self._audit.record(registration_draft(result, node_name, tee, renew_of))
        return dataclasses.replace(result, audit_sequence=seq)

    def _register(self, req: RegisterInput) -> AttestationOutcome:
        require_label(req.node_name, "node name")
        check_keys(req.keys)
        check_evidence(req.evidence)
        requested = check_groups(req.requested_groups)
        if len(req.nonce) != 32:
            raise _invalid("nonce must be 32 bytes")
        policy = self._policies.active()
        try:
            self._spend(req.nonce, req.node_name)
            claims = self._verify(req.evidence, req.nonce, req.keys)
            claims = self._verify_gpus(req.evidence, req.nonce, req.keys, claims)
            appraisal = self._appraise(policy, claims)
        except _Rejected as rej:
            return self._rejected("", rej, policy)
        now = self._clock()
        reasons = reasons_from(appraisal.reasons)
        if appraisal.verdict is Verdict.REJECTED:
            return self._rejected("", _Rejected(reasons, claims), policy)
        groups = granted_groups(requested, appraisal.groups)
        if not groups:
            return self._rejected(
                "",
                _Rejected(
                    [
                        Reason(
                            Code.NODE_GROUPS_DENIED.value,
                            f"none of the requested groups [{', '.join(requested)}] is open to this node",
                        )
                    ],
                    claims,
                ),
                policy,
            )
        attested = appraisal.verdict is Verdict.ATTESTED
        lease = new_lease(now, policy.policy.release.lease_seconds) if attested else None
        record = NodeRecord(  # a new node: its first state, not a transition
            node_id=new_node_id(),
            node_name=req.node_name,
            state=NodeState.ATTESTED if attested else NodeState.PENDING,
            tee=claims.tee.value,
            kem_suite=req.keys.kem_suite,
            kem_public=req.keys.kem_public,
            signing_public=req.keys.signing_public,
            claims=claims.to_dict(),
            claims_digest=claims_digest(claims.to_dict()),
            groups=groups,
            requested_groups=requested,
            reasons=tuple(reasons),
            evidence_time=now,
            lease_id=lease.lease_id if lease else None,
            lease_issued_at=lease.issued_at if lease else None,
            lease_expires_at=lease.expires_at if lease else None,
            policy_version=policy.version,
            registered_at=now,
            attested_at=now,
            state_changed_at=now,
        )
        try:
            self._nodes.insert(record)
        except KmsError as err:
            if err.code != Code.NODE_KEYS_IN_USE:
                raise
            return self._rejected("", _Rejected(reasons_from([err]), claims), policy)
        outcome = Outcome.ATTESTED if attested else Outcome.PENDING_APPROVAL
        self._count(outcome, "")
        return AttestationOutcome(
            record.node_id, outcome, lease, tuple(reasons), claims, groups, policy.version
        )

    def _renew(self, req: RenewInput) -> AttestationOutcome:
        check_keys(req.keys)
        check_evidence(req.evidence)
        if not isinstance(req.node_id, str) or not 1 <= len(req.node_id) <= 64 or not req.node_id.isascii():
            raise _invalid("node_id must be 1-64 ASCII characters")
        if len(req.nonce) != 32:
            raise _invalid("nonce must be 32 bytes")
        policy = self._policies.active()
        node = self._nodes.get(req.node_id)
        try:
            self._spend(req.nonce, node.node_name if node else None)
            if node is None:
                raise _reject(Code.NODE_NOT_FOUND, f"no node with id {req.node_id!r}", "register instead")
            self._check_renewable(node, req.keys)
            claims = self._verify(req.evidence, req.nonce, req.keys)
            claims = self._verify_gpus(req.evidence, req.nonce, req.keys, claims)
            appraisal = self._appraise(policy, claims)
        except _Rejected as rej:
            return self._rejected(req.node_id if node else "", rej, policy)
        try:
            return self._settle_renewal(node, claims, appraisal, policy)
        except _Rejected as rej:  # revoked meanwhile: that stands
            return self._rejected(node.node_id, _Rejected(rej.reasons, claims), policy)

    def _settle_renewal(
        self, node: NodeRecord, claims: Claims, appraisal: Any, policy: ActivePolicy
    ) -> AttestationOutcome:
        reasons = reasons_from(appraisal.reasons)
        now = self._clock()
        if appraisal.verdict is Verdict.REJECTED:
            updated = self._apply_renewal(
                node, claims=claims, state=NodeState.SUSPENDED, lease=None, groups=node.groups,
                reasons=reasons, policy=policy, now=now,
            )  # fmt: skip
            if operator_suspended(updated):
                return self._held_by_operator(node, claims, reasons, policy)
            return self._rejected(node.node_id, _Rejected(reasons, claims), policy)
        keeps_standing = appraisal.verdict is Verdict.ATTESTED or node.state is NodeState.ATTESTED
        if appraisal.verdict is Verdict.PENDING_APPROVAL and node.state is NodeState.ATTESTED:
            # an operator approved it: their groups stand, not the matched rule's, as far as the new
            # claims still match them
            groups = tuple(g for g in node.groups if g in appraisal.groups)
        else:
            groups = granted_groups(node.requested_groups, appraisal.groups)
        attested = keeps_standing and bool(groups)
        lease = new_lease(now, policy.policy.release.lease_seconds) if attested else None
        updated = self._apply_renewal(
            node, claims=claims, state=NodeState.ATTESTED if attested else NodeState.PENDING, lease=lease,
            groups=groups, reasons=[] if attested else reasons, policy=policy, now=now,
        )  # fmt: skip
        if operator_suspended(updated):
            return self._held_by_operator(node, claims, [] if attested else reasons, policy)
        outcome = Outcome.ATTESTED if attested else Outcome.PENDING_APPROVAL
        self._count(outcome, "")
        return AttestationOutcome(
            node.node_id, outcome, lease, () if attested else tuple(reasons), claims, groups, policy.version
        )

    # -- steps

    def _spend(self, nonce: bytes, node_name: str | None) -> None:
        try:
            self._nonces.consume(nonce, node_name if node_name is not None else "")
        except NonceError as err:
            if node_name is None and err.code == Code.NONCE_NAME_MISMATCH:
                return  # unknown node: the caller reports NODE_NOT_FOUND
            raise _Rejected(reasons_from([err])) from None

    def _verify(self, evidence: EvidenceInput, nonce: bytes, keys: NodeKeys) -> Claims:
        started = time.perf_counter()
        try:
            actual = detect_tee(evidence.report).value
            if actual != evidence.tee:
                raise _reject(
                    Code.EVIDENCE_TEE_MISMATCH,
                    f"evidence declared as {evidence.tee} is {actual} evidence",
                    "set Evidence.tee to the TEE that produced the report",
                )
            claims = self._verifier.verify(evidence.report, evidence.endorsements, self._clock())
            verify_binding(
                claims.report_data, nonce, keys.kem_suite, keys.kem_public, keys.signing_public,
                gpu_commitment=gpu_commitment(evidence.gpus),
            )  # fmt: skip
        except AttestationError as err:
            raise _Rejected(reasons_from([err])) from None
        finally:
            if self._metrics is not None:
                self._metrics.verification_seconds.labels(evidence.tee).observe(time.perf_counter() - started)
        return claims

    def _verify_gpus(self, evidence: EvidenceInput, nonce: bytes, keys: NodeKeys, claims: Claims) -> Claims:
        """The GPUs the CPU report committed to, each answering the transcript's GPU nonce; their entries go
        beside the CPU claims (``details["gpus"]``). A node without GPUs keeps its claims as they were. The
        node is authenticated by now (its CPU evidence bound the nonce), so a refusal carries its claims."""
        if not evidence.gpus:
            return claims
        started = time.perf_counter()
        try:
            if self._gpus is None:
                raise _Rejected(
                    [
                        Reason(
                            "GPU_COLLATERAL_MISSING",
                            "this control plane verifies no GPU evidence (no GPU verifier configured)",
                        )
                    ],
                    claims,
                )
            expected = gpu_nonce(nonce, keys.kem_suite, keys.kem_public, keys.signing_public)
            entries = self._gpus.verify(evidence.gpus, nonce=expected, now=self._clock())
        except AttestationError as err:
            raise _Rejected(reasons_from([err]), claims) from None
        finally:
            if self._metrics is not None:
                self._metrics.verification_seconds.labels("gpu").observe(time.perf_counter() - started)
        return dataclasses.replace(claims, details={**claims.details, "gpus": entries})

    def _appraise(self, policy: ActivePolicy, claims: Claims) -> Any:
        try:
            return appraise(policy.policy, claims, now=self._clock())
        except PolicyError as err:
            raise _Rejected(reasons_from([err]), claims) from None

    def _check_renewable(self, node: NodeRecord, keys: NodeKeys) -> None:
        if node.state is NodeState.REVOKED:
            raise _reject(
                Code.NODE_NOT_RENEWABLE, f"node {node.node_id} is revoked", "register with fresh keys"
            )
        if (keys.kem_suite, keys.kem_public, keys.signing_public) != (
            node.kem_suite,
            node.kem_public,
            node.signing_public,
        ):
            raise _reject(
                Code.NODE_KEYS_CHANGED,
                "the keys differ from the ones recorded at registration",
                "new keys mean a new registration: call Register",
            )

    def _apply_renewal(
        self,
        node: NodeRecord,
        *,
        claims: Claims,
        state: NodeState,
        lease: Lease | None,
        groups: Sequence[str],
        reasons: list[Reason],
        policy: ActivePolicy,
        now: datetime,
    ) -> NodeRecord:
        """Record the renewal (``kms.domain.registry.renewed``). A node revoked meanwhile stays revoked
        (``_Rejected``); one suspended by an operator stays suspended with its new claims: the caller
        sees that in the returned record."""
        evidence = Evidence(claims.to_dict(), now)

        def transition(current: NodeRecord) -> NodeChange:
            return renewed(
                current, evidence=evidence, state=state, lease=lease, groups=groups, reasons=reasons,
                policy_version=policy.version,
            )  # fmt: skip

        try:
            return self._nodes.apply(node.node_id, transition)
        except KmsError as err:
            if err.code != Code.NODE_NOT_RENEWABLE:
                raise
            raise _Rejected(reasons_from([err])) from None

    def _held_by_operator(
        self, node: NodeRecord, claims: Claims, reasons: list[Reason], policy: ActivePolicy
    ) -> AttestationOutcome:
        suspended = _reject(
            Code.NODE_SUSPENDED_BY_OPERATOR,
            f"node {node.node_id} is suspended by an operator; its new evidence is recorded",
            "a renewal does not lift an operator's suspension: an operator approves the node again",
        )
        return self._rejected(node.node_id, _Rejected(suspended.reasons + reasons, claims), policy)

    def _rejected(self, node_id: str, rej: _Rejected, policy: ActivePolicy) -> AttestationOutcome:
        self._count(Outcome.REJECTED, rej.reasons[0].code if rej.reasons else "")
        return AttestationOutcome(
            node_id, Outcome.REJECTED, None, tuple(rej.reasons), rej.claims, (), policy.version
        )

    def _count(self, outcome: Outcome, code: str) -> None:
        if self._metrics is not None:
            self._metrics.attestations.labels(outcome.value, code).inc()
