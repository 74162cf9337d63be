"""The node transitions of ``kms.domain.registry`` (pure): what each sets, what each refuses, and the policies
core's state names mapped at that boundary only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from attestation.coded import Reason
from kms.domain.registry import (
    KEEP,
    NodeRecord,
    NodeState,
    Transition,
    approve,
    from_policy_state,
    new_lease,
    operator_suspended,
    policy_state,
    policy_suspended,
    reappraised,
    revoke,
    suspend,
)
from kms.errors import Code, KmsError
from policies import NodeState as PolicyNodeState

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def node(state: NodeState = NodeState.ATTESTED, reasons: tuple[Reason, ...] = ()) -> NodeRecord:
    lease = new_lease(NOW, 600)
    return NodeRecord(
        node_id="n-1", node_name="node-a", state=state, tee="snp", kem_suite=b"\x00\x20\x00\x01\x00\x03",
        kem_public=bytes(32), signing_public=bytes(32), claims={"tee": "snp"}, claims_digest="d",
        groups=("trainers",), requested_groups=(), reasons=reasons, evidence_time=NOW,
        lease_id=lease.lease_id, lease_issued_at=lease.issued_at, lease_expires_at=lease.expires_at,
        policy_version=1, registered_at=NOW, attested_at=NOW, state_changed_at=NOW,
    )  # fmt: skip


POLICY_REASON = Reason("NODE_SUSPENDED_BY_POLICY", "m")


def test_policy_state_names_are_mapped_both_ways_and_rejected_is_not_a_stored_state() -> None:
    for state in NodeState:
        assert from_policy_state(policy_state(state)) is state
    with pytest.raises(KmsError) as info:
        from_policy_state(PolicyNodeState.REJECTED)
    assert info.value.code is Code.NODE_TRANSITION_INVALID


def test_suspend_keeps_what_was_there_under_the_operators_reason() -> None:
    by_policy = node(NodeState.SUSPENDED, (POLICY_REASON,))
    change = suspend(by_policy, "investigating", LATER)
    assert change.state is NodeState.SUSPENDED and change.lease is None and change.groups is KEEP
    assert [r.code for r in change.reasons] == ["NODE_SUSPENDED_BY_OPERATOR", "NODE_SUSPENDED_BY_POLICY"]
    held = change.applied_to(by_policy)
    assert operator_suspended(held) and held.lease_id is None and held.state_changed_at == LATER
    with pytest.raises(KmsError) as info:
        suspend(held, "again", LATER)
    assert info.value.code is Code.NODE_TRANSITION_INVALID


def test_a_policy_change_never_lifts_an_operators_suspension() -> None:
    held = suspend(node(), "investigating", LATER).applied_to(node())
    with pytest.raises(KmsError) as info:
        reappraised(held, NodeState.ATTESTED, ("trainers",), (), LATER)
    assert info.value.code is Code.NODE_TRANSITION_INVALID
    demoted = policy_suspended(held, [Reason("POLICY_X", "m")], LATER).applied_to(held)
    assert operator_suspended(demoted)  # the operator's hold stays first
    assert [r.code for r in demoted.reasons] == [
        "NODE_SUSPENDED_BY_OPERATOR", "NODE_SUSPENDED_BY_POLICY", "POLICY_X",
    ]  # fmt: skip


def test_reappraised_keeps_the_lease_and_stamps_only_a_real_state_change() -> None:
    attested = node()
    narrowed = reappraised(attested, NodeState.ATTESTED, ("evaluators",), (), LATER).applied_to(attested)
    assert narrowed.groups == ("evaluators",) and narrowed.lease_id == attested.lease_id
    assert narrowed.state_changed_at == NOW
    pending = reappraised(attested, NodeState.PENDING, (), (), LATER).applied_to(attested)
    assert pending.state_changed_at == LATER


@pytest.mark.parametrize("state", [NodeState.ATTESTED, NodeState.REVOKED])
def test_approve_only_from_pending_or_suspended(state: NodeState) -> None:
    with pytest.raises(KmsError) as info:
        approve(node(state), groups=("trainers",), policy_version=2, lease=new_lease(LATER, 60), now=LATER)
    assert info.value.code is Code.NODE_TRANSITION_INVALID


def test_revoked_is_final() -> None:
    revoked = revoke(node(), "stolen", LATER).applied_to(node())
    assert revoked.state is NodeState.REVOKED and revoked.lease_id is None
    transitions: list[Transition] = [lambda n: revoke(n, "x", LATER), lambda n: suspend(n, "x", LATER)]
    for transition in transitions:
        with pytest.raises(KmsError) as info:
            transition(revoked)
        assert info.value.code is Code.NODE_TRANSITION_INVALID
