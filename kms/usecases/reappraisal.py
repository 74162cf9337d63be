"""Re-appraising every stored node after a policy change, set-based: the stored claims are read a page at
a time in one query, each node is appraised once by the pure rule (``policies.reappraise_one``), and
the nodes whose state or groups change are written with one statement per kind of change, inside the
caller's transaction. No evidence is verified again. The result (changes, their order, the ledger
entries built from them) is what appraising and writing node by node gives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from kms.domain.registry import (
    NodeChange,
    NodeRecord,
    NodeState,
    from_policy_state,
    policy_state,
    policy_suspended,
    reappraised,
    reasons_from,
)
from kms.errors import Code
from kms.sql import Connection
from kms.sql.nodes import StoredClaims, apply_changes, live_claims, load_many
from kms.usecases.attest import granted_groups
from policies import Appraisal, Change, Policy, claims_from_dict, reappraise_one
from policies import NodeState as PolicyNodeState
from policies.errors import Code as PolicyCode
from policies.errors import Reason as PolicyReason

PAGE = 1000  # rows decoded and appraised at a time; memory holds one page plus the changes


@dataclass(frozen=True)
class Reappraisal:
    checked: int  # live (not revoked) nodes appraised
    changes: tuple[Change, ...]  # state changes first, then narrowed groups, each in registration order


def reappraise_stored(conn: Connection, policy: Policy, now: datetime, *, page: int = PAGE) -> Reappraisal:
    """Appraise every live node's stored claims under ``policy``; operator suspensions are never lifted
    by a policy change. Reads only: the caller writes with ``write_changes`` if it applies the policy."""
    checked, moved, narrowed = 0, [], []
    for rows in live_claims(conn, page):
        checked += len(rows)
        for node in rows:
            change, appraisal = reappraise_one(
                policy, node.node_id, claims_from_dict(node.claims), policy_state(node.state).value, now
            )
            if change is not None:
                if _operator_hold(node) and not is_demotion(change):
                    continue
                # as at registration: of the groups it is eligible for, only those the node asked for
                moved.append(
                    dataclasses.replace(change, groups=granted_groups(node.requested_groups, change.groups))
                )
            elif node.state is NodeState.ATTESTED and appraisal is not None:
                kept = _narrowed(node, appraisal)
                if kept is not None:
                    narrowed.append(kept)
    return Reappraisal(checked, (*moved, *narrowed))


def write_changes(conn: Connection, changes: tuple[Change, ...], now: datetime, *, page: int = PAGE) -> None:
    """Apply ``changes`` through the registry's transitions (``policy_suspended``, ``reappraised``),
    ``page`` nodes at a time: their records read in one query, their updates in one per kind."""
    for i in range(0, len(changes), page):
        chunk = changes[i : i + page]
        records = load_many(conn, [c.node_id for c in chunk])
        apply_changes(conn, [(c.node_id, _transition(records[c.node_id], c, now)) for c in chunk])


def is_demotion(change: Change) -> bool:
    return change.new_state.value in ("SUSPENDED", "REJECTED")


def _operator_hold(node: StoredClaims) -> bool:
    """``kms.domain.registry.operator_suspended`` on the columns read here."""
    return node.state is NodeState.SUSPENDED and Code.NODE_SUSPENDED_BY_OPERATOR.value in node.reason_codes


def _narrowed(node: StoredClaims, appraisal: Appraisal) -> Change | None:
    """An attested node that still passes keeps only the groups its claims match under the new
    policy; with none left it is suspended until it renews (or an operator approves it anew)."""
    eligible = appraisal.groups
    kept = tuple(g for g in node.groups if g in eligible)
    if kept == node.groups:
        return None
    if kept:
        return Change(node.node_id, PolicyNodeState.ATTESTED, PolicyNodeState.ATTESTED, kept, ())
    why = PolicyReason(
        PolicyCode.POLICY_MEASUREMENT_NOT_ALLOWED,
        f"its image is in none of its groups [{', '.join(node.groups)}] under the new policy "
        f"(it matches [{', '.join(eligible)}])",
    )
    return Change(node.node_id, PolicyNodeState.ATTESTED, PolicyNodeState.SUSPENDED, (), (why,))


def _transition(node: NodeRecord, change: Change, now: datetime) -> NodeChange:
    reasons = reasons_from(change.reasons)
    if is_demotion(change):
        return policy_suspended(node, reasons, now)
    return reappraised(node, from_policy_state(change.new_state), change.groups, reasons, now)


__all__ = ["PAGE", "Reappraisal", "is_demotion", "reappraise_stored", "write_changes"]
