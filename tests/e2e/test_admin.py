"""Operator flows on the operator port (TLS + Keycloak stand-in tokens) against the real server process
(own server: these tests change policy and key state). alice and bob are admins and key custodians;
policy changes and key destruction need both (two-person rule)."""

from __future__ import annotations

import grpc
import pytest
from e2e.node_client import NodeClient, rpc_error
from e2e.world import SNP_MEASUREMENT, TDX_MRTD, ServerProcess, server_policy

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp, simulated_tdx
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2

SC = grpc.StatusCode


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(server.admin_channel("alice"))


@pytest.fixture(scope="module")
def second(server: ServerProcess) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(server.admin_channel("bob"))


@pytest.fixture(scope="module")
def nodes(server: ServerProcess, pki: SimulatedPki) -> dict[str, NodeClient]:
    out = {
        "snp": NodeClient(
            server.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="admin-snp"
        ),
        "tdx": NodeClient(server.channel(), simulated_tdx(pki, mrtd=TDX_MRTD), name="admin-tdx"),
    }
    for node in out.values():
        assert node.register().state == common_pb2.NODE_STATE_ATTESTED
    return out


def test_list_and_get_nodes(admin: admin_pb2_grpc.AdminStub, nodes: dict[str, NodeClient]) -> None:
    listed = admin.ListNodes(admin_pb2.ListNodesRequest(states=[common_pb2.NODE_STATE_ATTESTED]))
    ids = [n.node_id for n in listed.nodes]
    assert nodes["snp"].node_id in ids and nodes["tdx"].node_id in ids
    node = admin.GetNode(admin_pb2.GetNodeRequest(node_id=nodes["tdx"].node_id))
    assert node.claims.tee == common_pb2.TEE_TDX and node.claims.measurement == TDX_MRTD
    assert node.keys.signing_public_key == nodes["tdx"].identity.signing_public
    assert node.lease.expires_at.seconds > 0 and list(node.groups) == ["trainers"]
    assert rpc_error(admin.GetNode, admin_pb2.GetNodeRequest(node_id="n-nope"))[:2] == (
        SC.NOT_FOUND,
        "NODE_NOT_FOUND",
    )


def test_suspend_then_approve(
    admin: admin_pb2_grpc.AdminStub, second: admin_pb2_grpc.AdminStub, nodes: dict[str, NodeClient]
) -> None:
    node = nodes["tdx"]
    admin.SuspendNode(admin_pb2.SuspendNodeRequest(node_id=node.node_id, reason="maintenance"))
    assert (
        rpc_error(node.release_stub.ReleaseKey, node.release_request("dataset/train"))[1]
        == "RELEASE_NODE_NOT_ATTESTED"
    )
    assert [r.code for r in node.renew().reasons] == ["NODE_SUSPENDED_BY_OPERATOR"]
    held = admin.ApproveNode(admin_pb2.ApproveNodeRequest(node_id=node.node_id, groups=["trainers"]))
    assert held.pending_change.method == "ApproveNode"  # who gets which keys: a second person decides
    approved = second.ApprovePendingChange(
        admin_pb2.ApprovePendingChangeRequest(change_id=held.pending_change.change_id)
    )
    assert approved.node.state == common_pb2.NODE_STATE_ATTESTED
    assert len(node.release("dataset/train")[0]) == 32
    status, reason, _ = rpc_error(
        admin.ApproveNode, admin_pb2.ApproveNodeRequest(node_id=node.node_id, groups=["trainers"])
    )
    assert (status, reason) == (SC.FAILED_PRECONDITION, "NODE_TRANSITION_INVALID")


def test_key_lifecycle(
    admin: admin_pb2_grpc.AdminStub, second: admin_pb2_grpc.AdminStub, nodes: dict[str, NodeClient]
) -> None:
    node = nodes["snp"]
    admin.DisableKey(admin_pb2.DisableKeyRequest(name="dataset/other", reason="audit"))
    assert rpc_error(node.release_stub.ReleaseKey, node.release_request("dataset/other"))[:2] == (
        SC.FAILED_PRECONDITION,
        "KEY_DISABLED",
    )
    admin.EnableKey(admin_pb2.EnableKeyRequest(name="dataset/other"))
    old, _ = node.release("model/main", "write")
    rotated = admin.RotateKey(admin_pb2.RotateKeyRequest(name="model/main")).key
    assert rotated.latest_version == 2 and len(rotated.versions) == 2
    new, response = node.release("model/main", "write")
    assert response.key_version == 2 and new != old
    assert node.release("model/main", "read", key_version=1)[0] == old
    assert (
        rpc_error(node.release_stub.ReleaseKey, node.release_request("model/main", "write", key_version=1))[1]
        == "RELEASE_VERSION_NOT_WRITABLE"
    )
    assert rpc_error(
        admin.DestroyKey,
        admin_pb2.DestroyKeyRequest(name="dataset/other", confirm_name="dataset/train", reason="x"),
    )[:2] == (SC.INVALID_ARGUMENT, "REQUEST_INVALID")
    held = admin.DestroyKey(
        admin_pb2.DestroyKeyRequest(name="dataset/other", confirm_name="dataset/other", reason="retired")
    ).pending_change
    assert held.method == "DestroyKey" and held.state == admin_pb2.PENDING_CHANGE_STATE_PENDING
    assert len(node.release("dataset/other")[0]) == 32  # held: nothing destroyed yet
    approved = second.ApprovePendingChange(admin_pb2.ApprovePendingChangeRequest(change_id=held.change_id))
    assert approved.key.state == admin_pb2.KEY_STATE_DESTROYED
    assert approved.change.state == admin_pb2.PENDING_CHANGE_STATE_APPLIED
    assert approved.change.decided_by.startswith("bob ") and held.proposed_by.startswith("alice ")
    assert (
        rpc_error(node.release_stub.ReleaseKey, node.release_request("dataset/other"))[1] == "KEY_DESTROYED"
    )
    assert rpc_error(
        admin.CreateKey, admin_pb2.CreateKeyRequest(name="dataset/other", kind=common_pb2.KEY_KIND_DATASET)
    )[:2] == (SC.ALREADY_EXISTS, "KEY_EXISTS")
    listed = admin.ListKeys(admin_pb2.ListKeysRequest())
    assert [k.name for k in listed.keys] == [
        "dataset/train",
        "ds-other",
        "ds-train",
        "model-main",
        "model/main",
    ]


def test_policy_change_reappraises_and_suspends(
    admin: admin_pb2_grpc.AdminStub, second: admin_pb2_grpc.AdminStub, nodes: dict[str, NodeClient]
) -> None:
    current = admin.GetPolicy(admin_pb2.GetPolicyRequest())
    assert current.version == 1 and current.toml == server_policy()
    stricter = server_policy().replace("1" * 96, "3" * 96)  # the SNP trainers measurement changes
    status, reason, _ = rpc_error(
        admin.PutPolicy, admin_pb2.PutPolicyRequest(toml=stricter, expected_version=7)
    )
    assert (status, reason) == (SC.ABORTED, "POLICY_VERSION_CONFLICT")
    assert rpc_error(admin.PutPolicy, admin_pb2.PutPolicyRequest(toml="schema = [", expected_version=1))[
        :2
    ] == (
        SC.INVALID_ARGUMENT,
        "POLICY_INVALID",
    )
    dry = admin.PutPolicy(admin_pb2.PutPolicyRequest(toml=stricter, expected_version=1, dry_run=True)).applied
    assert dry.dry_run and dry.policy.version == 1
    assert [s.node_id for s in dry.reappraisal.suspended] == [nodes["snp"].node_id]
    assert len(nodes["snp"].release("dataset/train")[0]) == 32  # a dry run changes nothing

    held = admin.PutPolicy(admin_pb2.PutPolicyRequest(toml=stricter, expected_version=1)).pending_change
    assert admin.GetPolicy(admin_pb2.GetPolicyRequest()).version == 1  # held, not applied
    listed = second.ListPendingChanges(admin_pb2.ListPendingChangesRequest())
    assert held.change_id in [c.change_id for c in listed.changes]
    applied = second.ApprovePendingChange(
        admin_pb2.ApprovePendingChangeRequest(change_id=held.change_id)
    ).policy
    assert applied.policy.version == 2 and not applied.dry_run
    assert applied.policy.updated_by.startswith("operator:")
    assert [s.node_id for s in applied.reappraisal.suspended] == [nodes["snp"].node_id]
    snp = admin.GetNode(admin_pb2.GetNodeRequest(node_id=nodes["snp"].node_id))
    assert snp.state == common_pb2.NODE_STATE_SUSPENDED
    assert snp.reasons[0].code == "NODE_SUSPENDED_BY_POLICY"
    assert rpc_error(nodes["snp"].release_stub.ReleaseKey, nodes["snp"].release_request("dataset/train"))[
        1
    ] == ("RELEASE_NODE_NOT_ATTESTED")
    assert len(nodes["tdx"].release("dataset/train")[0]) == 32


def test_import_collateral(admin: admin_pb2_grpc.AdminStub, pki: SimulatedPki) -> None:
    tcb_info = pki.tdx_collateral_items()["tcb_infos"][0]
    first = admin.ImportCollateral(admin_pb2.ImportCollateralRequest(bundle=tcb_info))
    assert first.added == 1 and [i.kind for i in first.items] == ["tdx-tcb-info"]
    again = admin.ImportCollateral(admin_pb2.ImportCollateralRequest(bundle=tcb_info))
    assert again.added == 0 and [i.already_present for i in again.items] == [True]
    status, reason, _ = rpc_error(admin.ImportCollateral, admin_pb2.ImportCollateralRequest(bundle=b"junk"))
    assert status == SC.INVALID_ARGUMENT and reason == "COLLATERAL_MALFORMED"
