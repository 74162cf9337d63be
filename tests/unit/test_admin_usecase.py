"""The Admin use case's node operations (approve, suspend, revoke, get) over small fakes at its ports:
node store (with its audit entries), policy source, clock; nodes are registered through the Attestation
use case over the same fakes. The real-component path is tests/e2e/test_admin.py and
test_node_groups.py; the SQL side of the same transitions is checked at the end of this file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from node_fakes import (
    APPROVAL_POLICY,
    NOW,
    OTHER_MEASUREMENT,
    POLICY,
    FakeNodes,
    FakeNonces,
    FakePolicies,
    FakeVerifier,
    evidence,
    keys_of,
)

from attestation.coded import Reason
from enclave.identity import NodeIdentity
from kms.audit.entry import Kind
from kms.clock import ManualClock
from kms.domain.registry import (
    Evidence,
    NodeRecord,
    NodeState,
    Transition,
    new_lease,
    operator_suspended,
    policy_suspended,
    reappraised,
    renewed,
)
from kms.domain.registry import approve as approve_transition
from kms.domain.registry import revoke as revoke_transition
from kms.domain.registry import suspend as suspend_transition
from kms.errors import Code, KmsError
from kms.sql import open_store
from kms.sql.nodes import SqlNodes
from kms.usecases.admin import Admin
from kms.usecases.attest import Attestation, Outcome, RegisterInput, RenewInput


class World:
    def __init__(self, policy: str = APPROVAL_POLICY) -> None:
        self.policies = FakePolicies(policy)
        self.clock = ManualClock(NOW)
        self.nodes = FakeNodes(active_version=lambda: self.policies.version)
        self.nonces = FakeNonces()
        self.verifier = FakeVerifier()
        self.attestation = Attestation(
            self.nodes, nonces=self.nonces, verifier=self.verifier, policies=self.policies, clock=self.clock
        )
        # node operations use only the node store, the policy source and the clock
        unused: Any = None
        self.admin = Admin(unused, unused, cast(Any, self.policies), unused, self.clock, nodes=self.nodes)

        self.identities: dict[str, NodeIdentity] = {}

    def register(self, groups: tuple[str, ...] = ()) -> NodeRecord:
        identity = NodeIdentity.generate()
        nonce = self.nonces.issue("node-a").nonce
        report = evidence(identity.report_data(nonce))
        result = self.attestation.register(RegisterInput(nonce, report, keys_of(identity), "node-a", groups))
        assert result.outcome is not Outcome.REJECTED, result.reasons
        self.identities[result.node_id] = identity
        return self.admin.get_node(result.node_id)

    def renew(self, node_id: str) -> None:
        identity = self.identities[node_id]
        nonce = self.nonces.issue("node-a").nonce
        report = evidence(identity.report_data(nonce))
        self.attestation.renew(RenewInput(node_id, nonce, report, keys_of(identity)))


def refused(code: Code, call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(KmsError) as info:
        call(*args, **kwargs)
    assert info.value.code is code


@pytest.fixture
def world() -> World:
    return World()


def test_approve_attests_a_pending_node_into_eligible_groups_with_a_lease(world: World) -> None:
    pending = world.register()
    assert pending.state is NodeState.PENDING
    world.clock.advance(30)
    approved = world.admin.approve_node(pending.node_id, ["evaluators"], "ok", actor={"subject": "alice"})
    assert approved.state is NodeState.ATTESTED and approved.groups == ("evaluators",)
    assert approved.reasons == () and approved.state_changed_at == world.clock()
    assert approved.lease_expires_at is not None and approved.lease_expires_at > world.clock()
    (entry,) = world.nodes.entries
    assert entry.kind is Kind.NODE_APPROVE and entry.fields["old_state"] == "pending"
    assert entry.fields["policy_version"] == 1 and "alice" in entry.actor


def test_approve_refusals_leave_the_node_as_it_was(world: World) -> None:
    pending = world.register()
    refused(Code.NODE_GROUPS_NOT_ELIGIBLE, world.admin.approve_node, pending.node_id, ["auditors"], "")
    refused(Code.REQUEST_INVALID, world.admin.approve_node, pending.node_id, [], "")
    refused(Code.NODE_NOT_FOUND, world.admin.approve_node, "n-missing", ["trainers"], "")
    # its latest verified evidence no longer passes the active policy
    world.policies.put(APPROVAL_POLICY.replace("1111", "1313"))
    refused(Code.NODE_EVIDENCE_FAILS_POLICY, world.admin.approve_node, pending.node_id, ["trainers"], "")
    assert world.admin.get_node(pending.node_id) == pending and not world.nodes.entries


def test_approve_only_from_pending_or_suspended(world: World) -> None:
    node = world.register()
    world.admin.approve_node(node.node_id, ["trainers"], "")
    refused(Code.NODE_TRANSITION_INVALID, world.admin.approve_node, node.node_id, ["trainers"], "")
    world.admin.revoke_node(node.node_id, "stolen")
    refused(Code.NODE_TRANSITION_INVALID, world.admin.approve_node, node.node_id, ["trainers"], "")


def test_approve_is_refused_when_the_policy_changes_while_it_is_checked(world: World) -> None:
    pending = world.register()
    world.nodes.before_apply = lambda: world.policies.put(APPROVAL_POLICY)
    refused(Code.POLICY_VERSION_CONFLICT, world.admin.approve_node, pending.node_id, ["trainers"], "")
    assert world.admin.get_node(pending.node_id).state is NodeState.PENDING


def test_suspend_is_an_operator_hold_that_only_approve_lifts(world: World) -> None:
    node = world.admin.approve_node(world.register().node_id, ["trainers"], "")
    suspended = world.admin.suspend_node(node.node_id, "investigating")
    assert suspended.state is NodeState.SUSPENDED and operator_suspended(suspended)
    assert suspended.lease_id is None and suspended.groups == ("trainers",)
    assert suspended.reasons[0].code == "NODE_SUSPENDED_BY_OPERATOR"
    refused(Code.NODE_TRANSITION_INVALID, world.admin.suspend_node, node.node_id, "again")
    refused(Code.REQUEST_INVALID, world.admin.suspend_node, node.node_id, "")
    lifted = world.admin.approve_node(node.node_id, ["trainers"], "cleared")
    assert lifted.state is NodeState.ATTESTED and not operator_suspended(lifted)
    kinds = [e.kind for e in world.nodes.entries]
    assert kinds == [Kind.NODE_APPROVE, Kind.NODE_SUSPEND, Kind.NODE_APPROVE]


def test_suspend_over_a_policy_suspension_keeps_its_reasons_under_the_operators() -> None:
    world = World(POLICY)
    node = world.register(("trainers",))
    world.verifier.fields = {"measurement": OTHER_MEASUREMENT}
    world.renew(node.node_id)
    by_policy = world.admin.get_node(node.node_id)
    assert by_policy.state is NodeState.SUSPENDED and not operator_suspended(by_policy)
    held = world.admin.suspend_node(node.node_id, "investigating")
    assert operator_suspended(held)
    assert held.reasons[1:] == by_policy.reasons  # the policy's reasons stay, under the operator's


def test_revoke_is_final(world: World) -> None:
    node = world.register()
    revoked = world.admin.revoke_node(node.node_id, "stolen")
    assert revoked.state is NodeState.REVOKED and revoked.lease_id is None
    assert [r.code for r in revoked.reasons] == ["NODE_REVOKED_BY_OPERATOR"]
    refused(Code.NODE_TRANSITION_INVALID, world.admin.revoke_node, node.node_id, "again")
    refused(Code.NODE_TRANSITION_INVALID, world.admin.suspend_node, node.node_id, "now")
    assert world.nodes.entries[-1].kind is Kind.NODE_REVOKE


# --- the SQL store gives every transition the meaning the fakes give it -----------------------------


def test_sql_store_writes_each_transition_as_applied_to(tmp_path: Path) -> None:
    world = World(POLICY)
    record = world.register(("trainers",))
    sql = SqlNodes(open_store(tmp_path / "db.sqlite"))
    sql.insert(record)
    later = NOW.replace(hour=13)
    lease = new_lease(later, 60)
    steps: list[Transition] = [
        lambda n: suspend_transition(n, "hold", later),
        lambda n: renewed(
            n,
            evidence=_evidence(n, later),
            state=NodeState.ATTESTED,
            lease=lease,
            groups=("trainers",),
            reasons=(),
            policy_version=2,
        ),
        lambda n: approve_transition(n, groups=("evaluators",), policy_version=3, lease=lease, now=later),
        lambda n: policy_suspended(n, [Reason("X", "m")], later),
        lambda n: reappraised(n, NodeState.PENDING, ("trainers",), (), later),
        lambda n: revoke_transition(n, "gone", later),
    ]
    for step in steps:
        current = sql.get(record.node_id)
        assert current is not None
        expected = step(current).applied_to(current)
        assert sql.apply(record.node_id, step) == expected


def _evidence(node: NodeRecord, at: datetime) -> Evidence:
    return Evidence({**node.claims, "version": 5}, at)
