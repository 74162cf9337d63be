"""``sovereign.client`` against the real server: typed records back, the two-person rule across two
operators, every refusal one ``OperatorError`` with the server's code, and the Audit client's checkpoint,
proofs and export checked with the offline audit core."""

from __future__ import annotations

import contextlib
import tempfile
import time

import pytest
from e2e.node_client import NodeClient
from e2e.world import SNP_MEASUREMENT, ServerProcess

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp
from kms.audit.checkpoint import Checkpoint
from kms.audit.export import write_items
from kms.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from proto.sovereign.v1 import common_pb2
from sovereign.client import AdminClient, AuditClient, OperatorError
from sovereign.client.records import ChangeState, KeyKind, KeyState, NodeState


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> AdminClient:
    return AdminClient(server.admin_channel("alice"))


@pytest.fixture(scope="module")
def bob(server: ServerProcess) -> AdminClient:
    return AdminClient(server.admin_channel("bob"))


def test_nodes_and_keys_come_back_as_records(
    server: ServerProcess, pki: SimulatedPki, alice: AdminClient
) -> None:
    node = NodeClient(server.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="client-snp")
    assert node.register().state == common_pb2.NODE_STATE_ATTESTED
    page = alice.list_nodes([NodeState.ATTESTED])
    assert node.node_id in [n.node_id for n in page.nodes]
    got = alice.get_node(node.node_id)
    assert got.state is NodeState.ATTESTED and got.groups == ("trainers",)
    assert got.claims is not None and got.claims.measurement == SNP_MEASUREMENT
    assert got.lease is not None and got.lease.expires_at is not None
    created = alice.create_key("dataset/client-e2e", KeyKind.DATASET)
    assert created.pending_change is None and created.key is not None
    assert created.key.state is KeyState.ENABLED and created.key.latest_version == 1
    assert "dataset/client-e2e" in [k.name for k in alice.list_keys(kind=KeyKind.DATASET).keys]


def test_two_person_rule_through_the_client(alice: AdminClient, bob: AdminClient) -> None:
    alice.create_key("model/client-e2e", KeyKind.MODEL)
    held = alice.destroy_key("model/client-e2e", "model/client-e2e", "retired")
    assert held.key is None and held.pending_change is not None
    change = held.pending_change
    assert change.method == "DestroyKey" and change.state is ChangeState.PENDING
    assert change.request is not None and change.request["name"] == "model/client-e2e"
    assert change.change_id in [c.change_id for c in bob.list_pending().changes]
    with pytest.raises(OperatorError) as same:
        alice.approve(change.change_id)
    assert (same.value.code, same.value.status) == ("AUTH_SAME_APPROVER", "PERMISSION_DENIED")
    assert same.value.hint
    approved = bob.approve(change.change_id, "agreed")
    assert approved.change is not None and approved.change.state is ChangeState.APPLIED
    assert approved.key is not None and approved.key.state is KeyState.DESTROYED
    with pytest.raises(OperatorError) as again:
        bob.reject(change.change_id, "too late")
    assert again.value.code == "AUTH_CHANGE_NOT_PENDING"


def test_a_refusal_is_one_coded_error(server: ServerProcess, alice: AdminClient) -> None:
    with pytest.raises(OperatorError) as missing:
        alice.get_node("n-nope")
    assert (missing.value.code, missing.value.status) == ("NODE_NOT_FOUND", "NOT_FOUND")
    auditor = AdminClient(server.admin_channel("carol"))
    with pytest.raises(OperatorError) as role:
        auditor.list_keys()
    assert role.value.code == "AUTH_ROLE_MISSING"


def latest_checkpoint(client: AuditClient, at_least: int) -> Checkpoint:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OperatorError):  # none yet: one is signed at least every second
            cp = client.checkpoint()
            if cp.size >= at_least:
                return cp
        assert time.monotonic() < deadline, f"no checkpoint of {at_least} entries within 30 s"
        time.sleep(0.2)


def test_the_audit_client_gives_what_the_offline_core_checks(server: ServerProcess) -> None:
    carol = AuditClient(server.admin_channel("carol"))
    head = latest_checkpoint(carol, 2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as spool:
        items = list(carol.export(0, head.size))
        final = write_items(out, iter(items), spool)
    assert final.size == head.size and final.root == head.root
    first = next(i for i in items if isinstance(i, Checkpoint))
    proof = list(carol.consistency_proof(first.size, head.size))
    verify_consistency(first.size, head.size, first.root, head.root, proof)
    entry = carol.list_entries(page_token="0", page_size=1).entries[0]
    assert entry.sequence == 0 and entry.canonical == items[0]
    verify_inclusion(
        0, head.size, leaf_hash(entry.canonical), list(carol.inclusion_proof(0, head.size)), head.root
    )
    with pytest.raises(OperatorError) as beyond:
        carol.inclusion_proof(0, head.size + 10_000)
    assert beyond.value.code == "AUDIT_NOT_FOUND"
