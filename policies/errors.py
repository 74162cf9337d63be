"""Codes and the error type of the policies core.

Two kinds of outcome share one code space, so a code seen in an audit entry or a gRPC ``ErrorInfo.reason``
means one thing everywhere:

* ``PolicyError`` is raised when an *input* is unusable: a policy document that does not validate, a
  claims document that does not decode, a naive ``now``. It carries a code, a message and a hint.
* ``Reason`` is a *result*: one failing appraisal or release rule. Appraisal and release never raise for a
  node that does not pass; they return every failing rule as a ``Reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from attestation.coded import CodedError


class Code(StrEnum):
    """Stable codes. Never rename or reuse: they are part of the wire and audit contract."""

    # Inputs
    POLICY_INVALID = "POLICY_INVALID"
    POLICY_UNREADABLE = "POLICY_UNREADABLE"
    CLAIMS_INVALID = "CLAIMS_INVALID"
    NODE_STATE_INVALID = "NODE_STATE_INVALID"
    TIME_INVALID = "TIME_INVALID"
    # Appraisal: claims -> verdict
    POLICY_TEE_NOT_ALLOWED = "POLICY_TEE_NOT_ALLOWED"
    POLICY_SIMULATED_EVIDENCE = "POLICY_SIMULATED_EVIDENCE"
    POLICY_DEBUG_FORBIDDEN = "POLICY_DEBUG_FORBIDDEN"
    POLICY_MEASUREMENT_NOT_ALLOWED = "POLICY_MEASUREMENT_NOT_ALLOWED"
    POLICY_RTMR_MISMATCH = "POLICY_RTMR_MISMATCH"
    POLICY_HOST_DATA_MISMATCH = "POLICY_HOST_DATA_MISMATCH"
    POLICY_PRODUCT_NOT_ALLOWED = "POLICY_PRODUCT_NOT_ALLOWED"
    POLICY_TCB_BELOW_MINIMUM = "POLICY_TCB_BELOW_MINIMUM"
    POLICY_TCB_STATUS_NOT_ACCEPTED = "POLICY_TCB_STATUS_NOT_ACCEPTED"
    POLICY_VMPL_TOO_HIGH = "POLICY_VMPL_TOO_HIGH"
    POLICY_SMT_FORBIDDEN = "POLICY_SMT_FORBIDDEN"
    POLICY_MIGRATION_AGENT_FORBIDDEN = "POLICY_MIGRATION_AGENT_FORBIDDEN"
    POLICY_SINGLE_SOCKET_REQUIRED = "POLICY_SINGLE_SOCKET_REQUIRED"
    POLICY_SIGNING_KEY_NOT_ALLOWED = "POLICY_SIGNING_KEY_NOT_ALLOWED"
    POLICY_ADVISORY_FORBIDDEN = "POLICY_ADVISORY_FORBIDDEN"
    POLICY_MRSEAM_NOT_ALLOWED = "POLICY_MRSEAM_NOT_ALLOWED"
    POLICY_COLLATERAL_EXPIRED = "POLICY_COLLATERAL_EXPIRED"
    POLICY_REVOCATION_NOT_CHECKED = "POLICY_REVOCATION_NOT_CHECKED"
    POLICY_CLAIM_INVALID = "POLICY_CLAIM_INVALID"
    POLICY_RULE_ERROR = "POLICY_RULE_ERROR"
    POLICY_OPERATOR_APPROVAL_REQUIRED = "POLICY_OPERATOR_APPROVAL_REQUIRED"
    # Appraisal of the node's GPUs ([appraisal.gpu])
    POLICY_GPU_COUNT = "POLICY_GPU_COUNT"
    POLICY_GPU_ARCHITECTURE_NOT_ALLOWED = "POLICY_GPU_ARCHITECTURE_NOT_ALLOWED"
    POLICY_GPU_DRIVER_BELOW_MINIMUM = "POLICY_GPU_DRIVER_BELOW_MINIMUM"
    POLICY_GPU_VBIOS_NOT_ALLOWED = "POLICY_GPU_VBIOS_NOT_ALLOWED"
    POLICY_GPU_RIM_NOT_MATCHED = "POLICY_GPU_RIM_NOT_MATCHED"
    POLICY_GPU_CC_MODE_REQUIRED = "POLICY_GPU_CC_MODE_REQUIRED"
    POLICY_GPU_UEID_NOT_ALLOWED = "POLICY_GPU_UEID_NOT_ALLOWED"
    # Release: (node, key, purpose) -> grant or deny
    RELEASE_NODE_NOT_ATTESTED = "RELEASE_NODE_NOT_ATTESTED"
    RELEASE_LEASE_EXPIRED = "RELEASE_LEASE_EXPIRED"
    RELEASE_KEY_NAME_INVALID = "RELEASE_KEY_NAME_INVALID"
    RELEASE_NO_RULE = "RELEASE_NO_RULE"
    RELEASE_PURPOSE_NOT_ALLOWED = "RELEASE_PURPOSE_NOT_ALLOWED"
    RELEASE_EVIDENCE_TOO_OLD = "RELEASE_EVIDENCE_TOO_OLD"
    RELEASE_EVIDENCE_TIME_INVALID = "RELEASE_EVIDENCE_TIME_INVALID"
    RELEASE_LINEAGE_RESTRICTED = "RELEASE_LINEAGE_RESTRICTED"


_DEFAULT_HINTS: dict[Code, str] = {
    Code.POLICY_INVALID: "fix the policy where the message points, then run: sovereign policy check FILE",
    Code.POLICY_UNREADABLE: "check the path and permissions of the policy file",
    Code.CLAIMS_INVALID: "pass claims exactly as Claims.to_dict() wrote them",
    Code.NODE_STATE_INVALID: "node states are ATTESTED, PENDING_APPROVAL, REJECTED, SUSPENDED or REVOKED",
    Code.TIME_INVALID: "pass timezone-aware datetimes (UTC)",
    Code.RELEASE_LINEAGE_RESTRICTED: (
        "a group that may not read a dataset the model was trained on cannot read the model; "
        "two operators may grant an exception for the group (Admin.GrantLineageException)"
    ),
}


@dataclass(frozen=True)
class Reason:
    """One failing rule: a stable code and a message saying what failed (never secrets)."""

    code: Code
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class PolicyError(CodedError):
    """An unusable input to the policies core. ``path`` and ``line`` locate policy schema errors."""

    code: Code

    def __init__(
        self,
        message: str,
        *,
        code: Code = Code.POLICY_INVALID,
        hint: str | None = None,
        source: str | None = None,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(code, message, hint if hint is not None else _DEFAULT_HINTS.get(code, ""))
        self.source = source
        self.path = path
        self.line = line

    def to_dict(self) -> dict[str, str]:
        where = {"source": self.source, "path": self.path, "line": self.line}
        return super().to_dict() | {k: str(v) for k, v in where.items() if v is not None}
