"""Who gets which keys, against the real server process (own server: its policy has a second group).

A node's groups decide its keys, so assigning them is a two-person change like a policy change
(ApproveNode is held by default), and an approval can only confirm what the node's stored claims
earn under the active policy: never another group, never evidence that fails. An operator's
suspension holds until an operator lifts it, also over a policy suspension and across renewals.
Registration refuses KEM keys no key could be sealed to, and no grant is recorded for a release whose
seal would fail. A node not entitled to a key learns nothing about whether it exists."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from e2e.node_client import NodeClient, evidence_message, keys_message, rpc_error
from e2e.operators import StandinRealm
from e2e.world import SNP_MEASUREMENT, Bao, ServerProcess, prepare, server_policy

from attestation.binding import expected_report_data
from attestation.simulate import SimulatedPki
from enclave.identity import NodeIdentity
from enclave.providers.simulated import simulated_snp
from kms.envelope import MLKEM768_X25519_SUITE, X25519_SUITE, Suite
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2

SC = grpc.StatusCode
EVALUATOR_MEASUREMENT = b"\x33" * 48
UNKNOWN_MEASUREMENT = b"\x44" * 48
# X25519 public keys of small order (RFC 7748 section 6.1: their shared secret is all zeros)
LOW_ORDER_X25519 = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def groups_policy() -> str:
    """The e2e policy plus an "evaluators" group (another SNP image) that may read eval/* only."""
    evaluators = (
        f'[[appraisal.snp.groups]]\nname = "evaluators"\nmeasurements = ["{EVALUATOR_MEASUREMENT.hex()}"]\n\n'
    )
    rule = (
        '\n[[release.rules]]\nname = "evaluators-read-eval"\ngroups = ["evaluators"]\n'
        'keys = ["eval/*"]\npurposes = ["read"]\n'
    )
    text = server_policy()
    assert text.count("[appraisal.tdx]\n") == 1
    return text.replace("[appraisal.tdx]\n", evaluators + "[appraisal.tdx]\n") + rule


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, bao: Bao, realm: StandinRealm
) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("e2e-groups")
    inputs = prepare(workdir, pki, datetime.now(UTC))
    inputs.policy.write_text(groups_policy())
    proc = ServerProcess(workdir, inputs, bao, realm).start()  # two-person actions: the defaults
    try:
        with proc.admin_channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for name in ("dataset/train", "eval/set"):
                admin.CreateKey(admin_pb2.CreateKeyRequest(name=name, kind=common_pb2.KEY_KIND_DATASET))
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, "sovereign serve did not stop cleanly on SIGTERM:\n" + "\n".join(proc.output[-20:])


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(server.admin_channel("alice"))


@pytest.fixture(scope="module")
def bob(server: ServerProcess) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(server.admin_channel("bob"))


def snp_node(server: ServerProcess, pki: SimulatedPki, name: str, measurement: bytes) -> NodeClient:
    return NodeClient(server.channel(), simulated_snp(pki, measurement=measurement), name=name)


def registered(node: NodeClient, *groups: str) -> NodeClient:
    result = node.register(requested_groups=list(groups))
    assert result.state == common_pb2.NODE_STATE_ATTESTED, result.reasons
    return node


def grants(server: ServerProcess, node: NodeClient) -> int:
    with sqlite3.connect(server.db) as db:
        return int(db.execute("SELECT count(*) FROM grants WHERE node_id = ?", (node.node_id,)).fetchone()[0])


def release_refused(node: NodeClient, key_name: str) -> tuple[SC, str, common_pb2.ErrorDetail]:
    return rpc_error(node.release_stub.ReleaseKey, node.release_request(key_name))


def node_state(admin: admin_pb2_grpc.AdminStub, node: NodeClient) -> admin_pb2.Node:
    return admin.GetNode(admin_pb2.GetNodeRequest(node_id=node.node_id))


def pending_ids(admin: admin_pb2_grpc.AdminStub) -> list[str]:
    return [c.change_id for c in admin.ListPendingChanges(admin_pb2.ListPendingChangesRequest()).changes]


def approve(admin: admin_pb2_grpc.AdminStub, node: NodeClient, *groups: str) -> admin_pb2.NodeChangeResponse:
    request = admin_pb2.ApproveNodeRequest(node_id=node.node_id, groups=list(groups), comment="checked")
    response: admin_pb2.NodeChangeResponse = admin.ApproveNode(request)
    return response


def suspend(admin: admin_pb2_grpc.AdminStub, node: NodeClient) -> None:
    admin.SuspendNode(admin_pb2.SuspendNodeRequest(node_id=node.node_id, reason="investigating"))


# --- the two-person rule over node groups ------------------------------------------------------------


def test_suspend_then_approve_does_not_give_an_evaluator_the_trainers_key(
    server: ServerProcess, pki: SimulatedPki, alice: admin_pb2_grpc.AdminStub
) -> None:
    """The review's attack: one admin suspends an "evaluators" node and approves it into "trainers"."""
    evaluator = registered(snp_node(server, pki, "attack-eval", EVALUATOR_MEASUREMENT), "evaluators")
    assert release_refused(evaluator, "dataset/train")[:2] == (SC.PERMISSION_DENIED, "RELEASE_NO_RULE")
    before = pending_ids(alice)
    suspend(alice, evaluator)
    status, reason, detail = rpc_error(
        alice.ApproveNode, admin_pb2.ApproveNodeRequest(node_id=evaluator.node_id, groups=["trainers"])
    )
    assert (status, reason) == (SC.FAILED_PRECONDITION, "NODE_GROUPS_NOT_ELIGIBLE"), detail
    assert pending_ids(alice) == before  # refused when proposed: nothing waits for a second person
    assert node_state(alice, evaluator).state == common_pb2.NODE_STATE_SUSPENDED
    assert release_refused(evaluator, "dataset/train")[1] == "RELEASE_NODE_NOT_ATTESTED"
    assert grants(server, evaluator) == 0


def test_approving_a_node_waits_for_a_second_person(
    server: ServerProcess,
    pki: SimulatedPki,
    alice: admin_pb2_grpc.AdminStub,
    bob: admin_pb2_grpc.AdminStub,
) -> None:
    evaluator = registered(snp_node(server, pki, "held-eval", EVALUATOR_MEASUREMENT), "evaluators")
    assert len(evaluator.release("eval/set")[0]) == 32
    suspend(alice, evaluator)
    held = approve(alice, evaluator, "evaluators")
    assert held.WhichOneof("outcome") == "pending_change", held
    change = held.pending_change
    assert change.method == "ApproveNode" and change.state == admin_pb2.PENDING_CHANGE_STATE_PENDING
    assert node_state(alice, evaluator).state == common_pb2.NODE_STATE_SUSPENDED  # held, not applied
    assert release_refused(evaluator, "eval/set")[1] == "RELEASE_NODE_NOT_ATTESTED"
    status, reason, _ = rpc_error(
        alice.ApprovePendingChange, admin_pb2.ApprovePendingChangeRequest(change_id=change.change_id)
    )
    assert (status, reason) == (SC.PERMISSION_DENIED, "AUTH_SAME_APPROVER")
    applied = bob.ApprovePendingChange(admin_pb2.ApprovePendingChangeRequest(change_id=change.change_id))
    assert applied.node.state == common_pb2.NODE_STATE_ATTESTED and list(applied.node.groups) == [
        "evaluators"
    ]
    assert len(evaluator.release("eval/set")[0]) == 32
    assert release_refused(evaluator, "dataset/train")[1] == "RELEASE_NO_RULE"


def test_a_node_whose_latest_evidence_fails_cannot_be_approved(
    server: ServerProcess, pki: SimulatedPki, alice: admin_pb2_grpc.AdminStub
) -> None:
    trainer = registered(snp_node(server, pki, "failing-trainer", SNP_MEASUREMENT), "trainers")
    trainer.provider = simulated_snp(pki, measurement=UNKNOWN_MEASUREMENT)
    renewed = trainer.renew()
    assert [r.code for r in renewed.reasons] == ["POLICY_MEASUREMENT_NOT_ALLOWED"]
    assert node_state(alice, trainer).state == common_pb2.NODE_STATE_SUSPENDED
    status, reason, _ = rpc_error(
        alice.ApproveNode, admin_pb2.ApproveNodeRequest(node_id=trainer.node_id, groups=["trainers"])
    )
    assert (status, reason) == (SC.FAILED_PRECONDITION, "NODE_EVIDENCE_FAILS_POLICY")
    assert release_refused(trainer, "dataset/train")[1] == "RELEASE_NODE_NOT_ATTESTED"
    # the way back: renew with evidence that passes
    trainer.provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
    assert trainer.renew().state == common_pb2.NODE_STATE_ATTESTED
    assert len(trainer.release("dataset/train")[0]) == 32


def test_an_operator_suspension_over_a_policy_suspension_holds_across_renewals(
    server: ServerProcess,
    pki: SimulatedPki,
    alice: admin_pb2_grpc.AdminStub,
    bob: admin_pb2_grpc.AdminStub,
) -> None:
    trainer = registered(snp_node(server, pki, "suspect-trainer", SNP_MEASUREMENT), "trainers")
    trainer.provider = simulated_snp(pki, measurement=UNKNOWN_MEASUREMENT)
    assert trainer.renew().state == common_pb2.NODE_STATE_REJECTED  # suspended by the policy
    suspend(alice, trainer)  # and now by an operator as well
    node = node_state(alice, trainer)
    assert [r.code for r in node.reasons][:2] == [
        "NODE_SUSPENDED_BY_OPERATOR",
        "POLICY_MEASUREMENT_NOT_ALLOWED",
    ]
    status, reason, _ = rpc_error(
        alice.SuspendNode, admin_pb2.SuspendNodeRequest(node_id=trainer.node_id, reason="again")
    )
    assert (status, reason) == (SC.FAILED_PRECONDITION, "NODE_TRANSITION_INVALID")

    trainer.provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
    renewed = trainer.renew()  # passing evidence: recorded, but the operator's suspension stands
    assert renewed.state == common_pb2.NODE_STATE_REJECTED
    assert [r.code for r in renewed.reasons] == ["NODE_SUSPENDED_BY_OPERATOR"]
    node = node_state(alice, trainer)
    assert node.state == common_pb2.NODE_STATE_SUSPENDED
    assert [r.code for r in node.reasons] == ["NODE_SUSPENDED_BY_OPERATOR"]
    assert node.claims.measurement == SNP_MEASUREMENT
    assert release_refused(trainer, "dataset/train")[1] == "RELEASE_NODE_NOT_ATTESTED"

    change = approve(alice, trainer, "trainers").pending_change
    bob.ApprovePendingChange(admin_pb2.ApprovePendingChangeRequest(change_id=change.change_id))
    assert len(trainer.release("dataset/train")[0]) == 32


# --- KEM keys ----------------------------------------------------------------------------------------


def register_with_kem(
    server: ServerProcess, pki: SimulatedPki, suite: Suite, kem_public: bytes
) -> tuple[SC, str, common_pb2.ErrorDetail]:
    """Register with evidence that binds ``kem_public``, as a node would that made such a key."""
    node = snp_node(server, pki, "odd-kem", SNP_MEASUREMENT)
    nonce = node.challenge()
    signing = node.identity.signing_public
    evidence = node.provider.get_evidence(expected_report_data(nonce, suite.id_bytes(), kem_public, signing))
    keys = keys_message(node.identity)
    keys.kem_suite.kem_id = suite.kem_id
    keys.kem_public_key = kem_public
    request = node.register_request(nonce=nonce, evidence=evidence_message(evidence), keys=keys)
    return rpc_error(node.attestation.Register, request)


@pytest.mark.parametrize("point", LOW_ORDER_X25519, ids=lambda p: p.hex()[:8])
def test_low_order_x25519_keys_are_refused_at_registration(
    server: ServerProcess, pki: SimulatedPki, point: bytes
) -> None:
    status, reason, _ = register_with_kem(server, pki, X25519_SUITE, point)
    assert (status, reason) == (SC.INVALID_ARGUMENT, "NODE_KEM_KEY_INVALID")


def test_xwing_keys_that_cannot_be_sealed_to_are_refused_at_registration(
    server: ServerProcess, pki: SimulatedPki
) -> None:
    encapsulation = mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
    x_public = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    malformed = b"\xff" * 1152 + encapsulation[1152:]  # coefficients >= q: not an ML-KEM-768 key
    for kem_public in (encapsulation + LOW_ORDER_X25519[0], malformed + x_public):
        status, reason, _ = register_with_kem(server, pki, MLKEM768_X25519_SUITE, kem_public)
        assert (status, reason) == (SC.INVALID_ARGUMENT, "NODE_KEM_KEY_INVALID")


def test_no_grant_is_recorded_for_a_release_that_cannot_be_sealed(
    server: ServerProcess, pki: SimulatedPki
) -> None:
    """A node row whose KEM key was stored before registration checked it (made here by editing the
    row) is refused before the grant commit, never granted and then failed while sealing."""
    trainer = registered(snp_node(server, pki, "legacy-kem", SNP_MEASUREMENT), "trainers")
    with sqlite3.connect(server.db, timeout=30) as db:
        db.execute(
            "UPDATE nodes SET kem_public = ? WHERE node_id = ?", (LOW_ORDER_X25519[2], trainer.node_id)
        )
    status, reason, _ = release_refused(trainer, "dataset/train")
    assert (status, reason) == (SC.INVALID_ARGUMENT, "NODE_KEM_KEY_INVALID")
    assert grants(server, trainer) == 0


# --- no key-name oracle ------------------------------------------------------------------------------


def test_a_node_not_entitled_to_a_key_cannot_tell_whether_it_exists(
    server: ServerProcess, pki: SimulatedPki
) -> None:
    trainer = registered(snp_node(server, pki, "curious-trainer", SNP_MEASUREMENT), "trainers")
    answers = {}
    for name in (
        "eval/set",
        "eval/missing",
        "secret/missing",
    ):  # eval/set exists; no rule gives it to trainers
        status, reason, detail = release_refused(trainer, name)
        metadata = sorted(f"{k}={v}" for k, v in detail.metadata.items() if k != "denial_id")
        answers[name] = (status, reason, detail.hint, detail.domain, tuple(metadata))
    assert len(set(answers.values())) == 1, answers
    assert answers["eval/set"][:2] == (SC.PERMISSION_DENIED, "RELEASE_NO_RULE")
    with sqlite3.connect(server.db) as db:  # the ledger keeps the catalogue's answer
        rows = dict(
            db.execute(
                "SELECT key_name, reason_codes FROM audit_entries WHERE kind = 'release.deny' AND node_id = ?",
                (trainer.node_id,),
            ).fetchall()
        )
    assert "KEY_NOT_FOUND" in rows["eval/missing"] and "KEY_NOT_FOUND" not in rows["eval/set"]
    # a node the rules do entitle still hears that a key is missing
    assert release_refused(trainer, "dataset/missing")[:2] == (SC.NOT_FOUND, "KEY_NOT_FOUND")


def test_registration_still_accepts_fresh_xwing_keys(server: ServerProcess, pki: SimulatedPki) -> None:
    node = snp_node(server, pki, "pq-node", SNP_MEASUREMENT)
    node.identity = NodeIdentity.generate(MLKEM768_X25519_SUITE)
    assert node.register().state == common_pb2.NODE_STATE_ATTESTED
    assert len(node.release("dataset/train")[0]) == 32
