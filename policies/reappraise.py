"""Re-appraisal after a policy change: which stored nodes change state, and why (pure; the control plane
applies the result)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attestation.claims import Claims
from policies.appraise import Appraisal, appraise
from policies.errors import Code, PolicyError, Reason
from policies.model import NodeState, Policy, Verdict

# (current state, new verdict) -> next state. REJECTED and REVOKED never change here: a rejected node
# registers again with fresh evidence, and only an operator undoes a revocation.
_NEXT: dict[NodeState, dict[Verdict, NodeState]] = {
    NodeState.ATTESTED: {
        Verdict.ATTESTED: NodeState.ATTESTED,
        # approval gates entry; a node already attested keeps its standing when its claims still pass
        Verdict.PENDING_APPROVAL: NodeState.ATTESTED,
        Verdict.REJECTED: NodeState.SUSPENDED,
    },
    NodeState.SUSPENDED: {
        Verdict.ATTESTED: NodeState.ATTESTED,
        Verdict.PENDING_APPROVAL: NodeState.PENDING_APPROVAL,
        Verdict.REJECTED: NodeState.SUSPENDED,
    },
    NodeState.PENDING_APPROVAL: {
        Verdict.ATTESTED: NodeState.ATTESTED,
        Verdict.PENDING_APPROVAL: NodeState.PENDING_APPROVAL,
        Verdict.REJECTED: NodeState.REJECTED,
    },
}


@dataclass(frozen=True)
class Change:
    node_id: str
    old_state: NodeState
    new_state: NodeState
    groups: tuple[str, ...]  # the node's groups under the new policy (empty unless it passes)
    reasons: tuple[Reason, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "old_state": self.old_state.value,
            "new_state": self.new_state.value,
            "groups": list(self.groups),
            "reasons": [x.to_dict() for x in self.reasons],
        }


def node_state(value: object) -> NodeState:
    if not isinstance(value, str) or value not in {s.value for s in NodeState}:
        raise PolicyError(f"{value!r:.60} is not a node state", code=Code.NODE_STATE_INVALID)
    return NodeState(value)


def reappraise_one(
    policy: Policy, node_id: str, claims: Claims, current: str, now: datetime
) -> tuple[Change | None, Appraisal | None]:
    """One node's re-appraisal: its change (None when its state stays) and the appraisal it rests on
    (None for a state a policy change never moves), so a caller need not appraise the claims twice."""
    state = node_state(current)
    table = _NEXT.get(state)
    if table is None:
        return None, None
    result = appraise(policy, claims, now=now)
    new = table[result.verdict]
    change = Change(node_id, state, new, result.groups, result.reasons) if new is not state else None
    return change, result


def reappraise(policy: Policy, nodes: Iterable[tuple[str, Claims, str]], now: datetime) -> list[Change]:
    """Appraise every node's stored claims against ``policy``; return the nodes whose state changes."""
    changes = []
    for node_id, claims, current in nodes:
        change, _ = reappraise_one(policy, node_id, claims, current, now)
        if change is not None:
            changes.append(change)
    return changes
