"""The node registry: who registered, with which keys and claims, in which state, under which lease.

States: ``pending`` (evidence verified, waiting for an operator), ``attested`` (may request keys while
its lease lasts), ``suspended`` (barred for now: an operator or a policy change), ``revoked`` (barred
for good; the keys are never accepted again). A rejected registration is not recorded as a node.

``NodeState`` is the control plane's one vocabulary for these: the wire names (``NODE_STATE_*``) are
mapped in ``kms.server.codec``, the policies core's names by ``policy_state``/``from_policy_state``.
Every change of a stored node is one of the transitions below (``approve``, ``suspend``, ``revoke``,
``renewed``, ``policy_suspended``, ``reappraised``): each checks the current record and returns a
``NodeChange``; ``kms.sql.nodes`` applies it atomically and alone maps it to columns.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from attestation.coded import CodedError, Reason
from kms.errors import Code, KmsError
from policies import NodeState as PolicyNodeState
from policies.errors import Reason as RuleReason

if TYPE_CHECKING:
    from kms.audit.draft import Draft


class NodeState(StrEnum):
    PENDING = "pending"
    ATTESTED = "attested"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


# The policies core has its own state names (and a REJECTED verdict no stored node has); map at
# that boundary only.
POLICY_STATE: Mapping[NodeState, PolicyNodeState] = {
    NodeState.PENDING: PolicyNodeState.PENDING_APPROVAL,
    NodeState.ATTESTED: PolicyNodeState.ATTESTED,
    NodeState.SUSPENDED: PolicyNodeState.SUSPENDED,
    NodeState.REVOKED: PolicyNodeState.REVOKED,
}
_FROM_POLICY_STATE = {v: k for k, v in POLICY_STATE.items()}


def policy_state(state: NodeState) -> PolicyNodeState:
    return POLICY_STATE[state]


def from_policy_state(state: PolicyNodeState) -> NodeState:
    """A REJECTED verdict is not a stored state (a re-appraised node is suspended instead): refused."""
    found = _FROM_POLICY_STATE.get(state)
    if found is None:
        raise KmsError(f"{state.value} is not a stored node state", code=Code.NODE_TRANSITION_INVALID)
    return found


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
    reasons: tuple[Reason, ...]
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


def reasons_from(reasons: Iterable[Reason | RuleReason | CodedError]) -> list[Reason]:
    """The policies core's failing rules (code + message) and coded errors as ``Reason``s."""
    out = []
    for r in reasons:
        if isinstance(r, Reason):
            out.append(r)
        elif isinstance(r, CodedError):
            out.append(r.as_reason())
        else:
            out.append(Reason(str(r.code), r.message))
    return out


def operator_suspended(record: NodeRecord) -> bool:
    """Suspended by an operator (a policy suspension may lie underneath): only an operator lifts it,
    never a renewal or a policy change. Recorded as the NODE_SUSPENDED_BY_OPERATOR reason."""
    return record.state is NodeState.SUSPENDED and any(
        r.code == Code.NODE_SUSPENDED_BY_OPERATOR.value for r in record.reasons
    )


def require_from(record: NodeRecord, allowed: Sequence[NodeState], action: str) -> None:
    if record.state not in allowed:
        names = ", ".join(s.value for s in allowed)
        raise KmsError(
            f"cannot {action} node {record.node_id}: it is {record.state.value} (must be {names})",
            code=Code.NODE_TRANSITION_INVALID,
            hint="revoked nodes stay revoked; the machine registers again with fresh keys",
        )


def reason(code: Code, message: str, hint: str = "") -> Reason:
    return Reason(code.value, message, hint)


# --- transitions ------------------------------------------------------------------------------------


class Keep(Enum):
    """A ``NodeChange`` field left as it is stored."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True)
class Evidence:
    """Claims of newly verified evidence and when they were verified."""

    claims: Mapping[str, Any] = field(repr=False)
    verified_at: datetime


@dataclass(frozen=True)
class NodeChange:
    """What one transition sets on a stored node; ``KEEP`` fields stay as they are."""

    state: NodeState
    reasons: tuple[Reason, ...]
    state_changed_at: datetime | Keep = KEEP
    groups: tuple[str, ...] | Keep = KEEP
    lease: Lease | Keep | None = KEEP
    evidence: Evidence | Keep = KEEP
    policy_version: int | Keep = KEEP

    def applied_to(self, record: NodeRecord) -> NodeRecord:
        """``record`` after this change (what the store reads back after writing it)."""
        out = replace(record, state=self.state, reasons=self.reasons)
        if self.state_changed_at is not KEEP:
            out = replace(out, state_changed_at=self.state_changed_at)
        if self.groups is not KEEP:
            out = replace(out, groups=self.groups)
        if self.lease is not KEEP:
            lease = self.lease
            out = replace(
                out,
                lease_id=lease.lease_id if lease else None,
                lease_issued_at=lease.issued_at if lease else None,
                lease_expires_at=lease.expires_at if lease else None,
            )
        if self.evidence is not KEEP:
            ev = self.evidence
            out = replace(
                out,
                claims=ev.claims,
                claims_digest=claims_digest(ev.claims),
                evidence_time=ev.verified_at,
                attested_at=ev.verified_at,
            )
        if self.policy_version is not KEEP:
            out = replace(out, policy_version=self.policy_version)
        return out


Transition = Callable[[NodeRecord], NodeChange]
_BARRABLE = (NodeState.PENDING, NodeState.ATTESTED, NodeState.SUSPENDED)


def _changed_at(record: NodeRecord, state: NodeState, now: datetime) -> datetime | Keep:
    return now if record.state is not state else KEEP


def approve(
    record: NodeRecord, *, groups: Sequence[str], policy_version: int, lease: Lease, now: datetime
) -> NodeChange:
    """An operator attests a pending or suspended node (lifting an operator's suspension too). Whether
    its claims pass and which groups they match is checked by the caller against the active policy."""
    require_from(record, (NodeState.PENDING, NodeState.SUSPENDED), "approve")
    return NodeChange(
        NodeState.ATTESTED, (), state_changed_at=now, groups=tuple(groups), lease=lease,
        policy_version=policy_version,
    )  # fmt: skip


def suspend(record: NodeRecord, why: str, now: datetime) -> NodeChange:
    """An operator's suspension: only an operator lifts it (``approve``), never a renewal or a policy
    change. The node's reasons so far (a policy suspension's, say) stay under the operator's."""
    require_from(record, _BARRABLE, "suspend")
    if operator_suspended(record):
        raise KmsError(
            f"node {record.node_id} is already suspended by an operator",
            code=Code.NODE_TRANSITION_INVALID,
            hint="see its reasons with GetNode; ApproveNode lifts the suspension",
        )
    reasons = (reason(Code.NODE_SUSPENDED_BY_OPERATOR, why), *record.reasons)
    return NodeChange(NodeState.SUSPENDED, reasons, state_changed_at=now, lease=None)


def revoke(record: NodeRecord, why: str, now: datetime) -> NodeChange:
    require_from(record, _BARRABLE, "revoke")
    return NodeChange(
        NodeState.REVOKED, (reason(Code.NODE_REVOKED_BY_OPERATOR, why),), state_changed_at=now, lease=None
    )


def renewed(
    record: NodeRecord,
    *,
    evidence: Evidence,
    state: NodeState,
    lease: Lease | None,
    groups: Sequence[str],
    reasons: Sequence[Reason],
    policy_version: int,
) -> NodeChange:
    """A renewal's outcome. A revoked node stays revoked (refused: NODE_NOT_RENEWABLE). One suspended
    by an operator stays suspended, without a lease and with its groups, but with the new evidence
    (an operator's approval is checked against it) and the renewal's reasons under the operator's."""
    if record.state is NodeState.REVOKED:
        raise KmsError(
            f"node {record.node_id} is revoked", code=Code.NODE_NOT_RENEWABLE, hint="register with fresh keys"
        )
    if operator_suspended(record):
        held = tuple(r for r in record.reasons if r.code == Code.NODE_SUSPENDED_BY_OPERATOR.value)
        return NodeChange(
            NodeState.SUSPENDED, (*held, *reasons), lease=None, evidence=evidence,
            policy_version=policy_version,
        )  # fmt: skip
    return NodeChange(
        state, tuple(reasons), state_changed_at=_changed_at(record, state, evidence.verified_at),
        groups=tuple(groups), lease=lease, evidence=evidence, policy_version=policy_version,
    )  # fmt: skip


def policy_suspended(record: NodeRecord, reasons: Sequence[Reason], now: datetime) -> NodeChange:
    """A policy change re-appraised the stored claims and they no longer pass: suspended until the
    node renews with passing evidence (or an operator approves it). An operator's hold stays first."""
    held = tuple(r for r in record.reasons if r.code == Code.NODE_SUSPENDED_BY_OPERATOR.value)
    why = reason(
        Code.NODE_SUSPENDED_BY_POLICY,
        "a policy change re-appraised the stored claims and they no longer pass",
        "fix the node and Renew",
    )
    return NodeChange(
        NodeState.SUSPENDED, (*held, why, *reasons),
        state_changed_at=_changed_at(record, NodeState.SUSPENDED, now), lease=None,
    )  # fmt: skip


def reappraised(
    record: NodeRecord,
    state: NodeState,
    groups: Sequence[str],
    reasons: Sequence[Reason],
    now: datetime,
) -> NodeChange:
    """A policy change keeps, narrows or restores a node (its lease is left as it is). Never over an
    operator's suspension: refused, so the policy change fails rather than lift it."""
    if operator_suspended(record) or record.state is NodeState.REVOKED:
        raise KmsError(
            f"a policy change cannot move node {record.node_id} out of {record.state.value}",
            code=Code.NODE_TRANSITION_INVALID,
        )
    return NodeChange(
        state, tuple(reasons), state_changed_at=_changed_at(record, state, now), groups=tuple(groups)
    )


# --- the store port ---------------------------------------------------------------------------------


class NodeStore(Protocol):
    """Where nodes live (``kms.sql.nodes.SqlNodes``; a dict in unit tests)."""

    def insert(self, record: NodeRecord) -> None: ...

    def get(self, node_id: str) -> NodeRecord | None: ...

    def list(self, states: Sequence[NodeState], offset: int, limit: int) -> list[NodeRecord]: ...

    def apply(
        self,
        node_id: str,
        transition: Transition,
        *,
        entry: Callable[[NodeRecord, NodeRecord], Draft] | None = None,
        policy_version: int | None = None,
    ) -> NodeRecord:
        """Atomically read the node, let ``transition`` check it, write its change and return the
        node as written; with ``entry`` its audit entry is appended in the same transaction; with
        ``policy_version`` only while that is still the active policy version (else
        POLICY_VERSION_CONFLICT)."""
        ...
