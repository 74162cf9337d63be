"""The Attestation use case (Register, Renew) over small fakes at its ports: node store, nonce book,
verifier, policy source, clock. The real-component path is tests/e2e (test_attacks, test_node_groups,
test_unauthenticated) and tests/integration/test_control_plane_release.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from node_fakes import (
    APPROVAL_POLICY,
    NOW,
    OTHER_MEASUREMENT,
    FakeNodes,
    FakeNonces,
    FakePolicies,
    FakeVerifier,
    evidence,
    keys_of,
)

from attestation.errors import Code as AttestationCode
from enclave.identity import NodeIdentity
from kms.audit.entry import Kind
from kms.clock import ManualClock
from kms.domain.registry import NodeState, operator_suspended, revoke, suspend
from kms.errors import KmsError
from kms.usecases.attest import (
    Attestation,
    AttestationOutcome,
    Outcome,
    RegisterInput,
    RenewInput,
    registration_draft,
)


@dataclass
class World:
    policies: FakePolicies = field(default_factory=FakePolicies)
    nonces: FakeNonces = field(default_factory=FakeNonces)
    verifier: FakeVerifier = field(default_factory=FakeVerifier)
    clock: ManualClock = field(default_factory=lambda: ManualClock(NOW))
    nodes: FakeNodes = field(default_factory=FakeNodes)

    def __post_init__(self) -> None:
        self.nodes.active_version = lambda: self.policies.version
        self.use_case = Attestation(
            self.nodes, nonces=self.nonces, verifier=self.verifier, policies=self.policies, clock=self.clock
        )

    def register(
        self, identity: NodeIdentity, groups: tuple[str, ...] = ("trainers",), *, name: str = "node-a"
    ) -> AttestationOutcome:
        nonce = self.nonces.issue(name).nonce
        report = evidence(identity.report_data(nonce))
        return self.use_case.register(RegisterInput(nonce, report, keys_of(identity), name, groups))

    def renew(self, node_id: str, identity: NodeIdentity, *, name: str = "node-a") -> AttestationOutcome:
        nonce = self.nonces.issue(name).nonce
        report = evidence(identity.report_data(nonce))
        return self.use_case.renew(RenewInput(node_id, nonce, report, keys_of(identity)))


def codes(result: AttestationOutcome) -> list[str]:
    return [r.code for r in result.reasons]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def identity() -> NodeIdentity:
    return NodeIdentity.generate()


# --- Register ---------------------------------------------------------------------------------------


def test_register_attested_stores_the_node_with_a_lease_in_the_groups_it_asked_for(
    world: World, identity: NodeIdentity
) -> None:
    result = world.register(identity, ("trainers",))
    assert result.outcome is Outcome.ATTESTED and result.authenticated
    assert result.lease is not None and result.lease.expires_at == NOW + timedelta(seconds=600)
    stored = world.nodes.get(result.node_id)
    assert stored is not None and stored.state is NodeState.ATTESTED
    assert stored.groups == ("trainers",)  # eligible for evaluators too, but did not ask
    assert (stored.lease_id, stored.policy_version) == (result.lease.lease_id, 1)
    assert stored.signing_public == identity.signing_public


def test_register_pending_waits_for_an_operator_without_a_lease(identity: NodeIdentity) -> None:
    world = World(policies=FakePolicies(APPROVAL_POLICY))
    result = world.register(identity)
    assert result.outcome is Outcome.PENDING_APPROVAL and result.lease is None
    assert codes(result) == ["POLICY_OPERATOR_APPROVAL_REQUIRED"]
    stored = world.nodes.get(result.node_id)
    assert stored is not None and stored.state is NodeState.PENDING and stored.lease_id is None


def test_register_rejected_by_the_policy_records_no_node(world: World, identity: NodeIdentity) -> None:
    world.verifier.fields = {"measurement": OTHER_MEASUREMENT}
    result = world.register(identity)
    assert result.outcome is Outcome.REJECTED and result.authenticated  # verified, then refused
    assert result.node_id == "" and not world.nodes.nodes
    assert "POLICY_MEASUREMENT_NOT_ALLOWED" in codes(result)


def test_register_asking_only_for_closed_groups_is_rejected(world: World, identity: NodeIdentity) -> None:
    result = world.register(identity, ("auditors",))
    assert result.outcome is Outcome.REJECTED and codes(result) == ["NODE_GROUPS_DENIED"]
    assert not world.nodes.nodes


def test_register_refusals_before_authentication_carry_no_claims(
    world: World, identity: NodeIdentity
) -> None:
    world.verifier.fail = AttestationCode.SNP_SIGNATURE_INVALID
    failed = world.register(identity)
    assert failed.outcome is Outcome.REJECTED and not failed.authenticated
    assert codes(failed) == ["SNP_SIGNATURE_INVALID"]
    world.verifier.fail = None
    other = NodeIdentity.generate()  # evidence bound to other keys than the ones presented
    nonce = world.nonces.issue("node-a").nonce
    request = RegisterInput(nonce, evidence(other.report_data(nonce)), keys_of(identity), "node-a", ())
    unbound = world.use_case.register(request)
    assert unbound.outcome is Outcome.REJECTED and not unbound.authenticated
    assert codes(unbound) == ["BINDING_MISMATCH"]
    replayed = world.use_case.register(request)
    assert codes(replayed) == ["NONCE_REPLAYED"]
    assert not world.nodes.nodes


def test_register_with_keys_already_registered_is_rejected(world: World, identity: NodeIdentity) -> None:
    assert world.register(identity).outcome is Outcome.ATTESTED
    again = world.register(identity)
    assert again.outcome is Outcome.REJECTED and codes(again) == ["NODE_KEYS_IN_USE"]
    assert len(world.nodes.nodes) == 1


def test_malformed_register_raises_before_the_nonce_is_spent(world: World, identity: NodeIdentity) -> None:
    nonce = world.nonces.issue("node-a").nonce
    bad = RegisterInput(nonce, evidence(bytes(64)), keys_of(identity), "Not A Label", ())
    with pytest.raises(KmsError):
        world.use_case.register(bad)
    assert not world.nonces.spent and world.verifier.calls == 0


# --- Renew ------------------------------------------------------------------------------------------


def test_renew_gives_a_fresh_lease_and_records_the_new_evidence(world: World, identity: NodeIdentity) -> None:
    first = world.register(identity)
    world.clock.advance(300)
    renewed = world.renew(first.node_id, identity)
    assert renewed.outcome is Outcome.ATTESTED and renewed.lease is not None and first.lease is not None
    assert renewed.lease.lease_id != first.lease.lease_id
    stored = world.nodes.get(first.node_id)
    assert stored is not None and stored.state is NodeState.ATTESTED
    assert stored.lease_id == renewed.lease.lease_id and stored.evidence_time == world.clock()
    assert stored.state_changed_at == NOW  # still attested: no state change


def test_renew_with_failing_evidence_suspends_and_drops_the_lease(
    world: World, identity: NodeIdentity
) -> None:
    first = world.register(identity)
    world.verifier.fields = {"measurement": OTHER_MEASUREMENT}
    world.clock.advance(60)
    renewed = world.renew(first.node_id, identity)
    assert renewed.outcome is Outcome.REJECTED and "POLICY_MEASUREMENT_NOT_ALLOWED" in codes(renewed)
    stored = world.nodes.get(first.node_id)
    assert stored is not None and stored.state is NodeState.SUSPENDED and stored.lease_id is None
    assert stored.state_changed_at == world.clock() and not operator_suspended(stored)
    # a policy suspension is lifted by a renewal that passes again
    world.verifier.fields = {}
    assert world.renew(first.node_id, identity).outcome is Outcome.ATTESTED


def test_renew_of_an_operator_suspended_node_stays_suspended(world: World, identity: NodeIdentity) -> None:
    first = world.register(identity)
    world.nodes.apply(first.node_id, lambda n: suspend(n, "investigating", NOW))
    world.clock.advance(60)
    renewed = world.renew(first.node_id, identity)
    assert renewed.outcome is Outcome.REJECTED and renewed.lease is None
    assert codes(renewed)[0] == "NODE_SUSPENDED_BY_OPERATOR"
    stored = world.nodes.get(first.node_id)
    assert stored is not None and stored.state is NodeState.SUSPENDED and operator_suspended(stored)
    assert stored.lease_id is None and stored.groups == ("trainers",)
    assert stored.evidence_time == world.clock()  # the new evidence is recorded for the operator


def test_renew_of_a_revoked_node_is_refused_before_verification(world: World, identity: NodeIdentity) -> None:
    first = world.register(identity)
    world.nodes.apply(first.node_id, lambda n: revoke(n, "stolen", NOW))
    calls = world.verifier.calls
    renewed = world.renew(first.node_id, identity)
    assert renewed.outcome is Outcome.REJECTED and codes(renewed) == ["NODE_NOT_RENEWABLE"]
    assert world.verifier.calls == calls
    stored = world.nodes.get(first.node_id)
    assert stored is not None and stored.state is NodeState.REVOKED


def test_a_revocation_during_renewal_stands(world: World, identity: NodeIdentity) -> None:
    first = world.register(identity)

    def revoke_meanwhile() -> None:
        world.nodes.before_apply = lambda: None
        world.nodes.apply(first.node_id, lambda n: revoke(n, "stolen", NOW))

    world.nodes.before_apply = revoke_meanwhile
    renewed = world.renew(first.node_id, identity)
    assert renewed.outcome is Outcome.REJECTED and codes(renewed) == ["NODE_NOT_RENEWABLE"]
    stored = world.nodes.get(first.node_id)
    assert stored is not None and stored.state is NodeState.REVOKED and stored.lease_id is None


def test_renew_with_other_keys_or_an_unknown_id_is_refused(world: World, identity: NodeIdentity) -> None:
    first = world.register(identity)
    other = world.renew(first.node_id, NodeIdentity.generate())
    assert codes(other) == ["NODE_KEYS_CHANGED"] and not other.authenticated
    unknown = world.renew("n-unknown", identity)
    assert codes(unknown) == ["NODE_NOT_FOUND"] and unknown.node_id == ""


def test_a_renewal_is_recorded_as_node_renew_and_a_registration_as_registration(
    world: World, identity: NodeIdentity
) -> None:
    first = world.register(identity)
    node = world.nodes.get(first.node_id)
    assert node is not None
    assert registration_draft(first, "node-a", "snp", None).kind is Kind.REGISTRATION
    renewed = world.renew(first.node_id, identity)
    draft = registration_draft(renewed, "node-a", "snp", node)
    assert draft.kind is Kind.NODE_RENEW and draft.fields["old_state"] == "attested"
