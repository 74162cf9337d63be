"""The node registry: who registered, with which keys and claims, in which state, under which lease.

States: ``pending`` (evidence verified, waiting for an operator), ``attested`` (may request keys while
its lease lasts), ``suspended`` (barred for now: an operator or a policy change), ``revoked`` (barred
for good; the keys are never accepted again). A rejected registration is not recorded as a node.
Transitions are checked here and applied atomically by ``kms.storage.nodes``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from kms.errors import Code, KmsError


class NodeState(StrEnum):
    PENDING = "pending"
    ATTESTED = "attested"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


# The policies core names states in capitals (its own vocabulary); map at the boundary.
POLICY_STATE = {
    NodeState.PENDING: "PENDING_APPROVAL",
    NodeState.ATTESTED: "ATTESTED",
    NodeState.SUSPENDED: "SUSPENDED",
    NodeState.REVOKED: "REVOKED",
}
FROM_POLICY_STATE = {v: k for k, v in POLICY_STATE.items()}


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    node_name: str
    state: NodeState
    tee: str
    kem_suite: bytes
    kem_public: bytes
    signing_public: bytes
    claims: Mapping[str, Any] = field(repr=False)
    claims_digest: str
    groups: tuple[str, ...]
    requested_groups: tuple[str, ...]
    reasons: tuple[Mapping[str, str], ...]
    evidence_time: datetime
    lease_id: str | None
    lease_issued_at: datetime | None
    lease_expires_at: datetime | None
    policy_version: int
    registered_at: datetime
    attested_at: datetime
    state_changed_at: datetime


@dataclass(frozen=True)
class Lease:
    lease_id: str
    issued_at: datetime
    expires_at: datetime


def new_node_id() -> str:
    return "n-" + secrets.token_hex(12)


def new_lease(now: datetime, seconds: int) -> Lease:
    return Lease("l-" + secrets.token_hex(12), now, now + timedelta(seconds=seconds))


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def claims_digest(claims: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(claims).encode()).hexdigest()


def lease_values(lease: Lease | None) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id if lease else None,
        "lease_issued_at": lease.issued_at if lease else None,
        "lease_expires_at": lease.expires_at if lease else None,
    }


def reason_dicts(reasons: Iterable[Any]) -> list[dict[str, str]]:
    """Policy ``Reason``s, error objects or dicts -> [{"code", "message", "hint"}]."""
    out = []
    for r in reasons:
        if isinstance(r, Mapping):
            out.append({"code": str(r["code"]), "message": str(r["message"]), "hint": str(r.get("hint", ""))})
        else:
            code = getattr(r.code, "value", r.code)
            out.append({"code": str(code), "message": str(r.message), "hint": str(getattr(r, "hint", ""))})
    return out


def operator_suspended(record: NodeRecord) -> bool:
    """Suspended by an operator (a policy suspension may lie underneath): only an operator lifts it,
    never a renewal or a policy change. Recorded as the NODE_SUSPENDED_BY_OPERATOR reason."""
    return record.state is NodeState.SUSPENDED and any(
        r.get("code") == Code.NODE_SUSPENDED_BY_OPERATOR.value for r in record.reasons
    )


def require_from(record: NodeRecord, allowed: Sequence[NodeState], action: str) -> None:
    if record.state not in allowed:
        names = ", ".join(s.value for s in allowed)
        raise KmsError(
            f"cannot {action} node {record.node_id}: it is {record.state.value} (must be {names})",
            code=Code.NODE_TRANSITION_INVALID,
            hint="revoked nodes stay revoked; the machine registers again with fresh keys",
        )
