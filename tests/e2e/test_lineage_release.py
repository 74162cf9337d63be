"""Lineage-restricted releases against the real ``sovereign serve`` and OpenBao: a trainer node reads
dataset/train and records an output sealed with model/main; a rule lets group "inference" read model/*
with ``lineage_restricted = true``, but no rule lets "inference" read dataset/train. A node in that group
is refused model/main with RELEASE_LINEAGE_RESTRICTED (a release.deny entry), until two operators grant
a lineage exception (``sovereign admin lineage-exception grant`` by one, ``AdminClient.approve`` by the
other); then the same release is granted, until one operator withdraws the exception
(``sovereign admin lineage-exception withdraw``): refused again.

Independent oracle: the ledger entries are read from the server's database with sqlite3."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e.test_operator_auth_cli import admin
from e2e.world import SNP_MEASUREMENT, ServerProcess, server_policy

from attestation.simulate import SimulatedPki
from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient, ControlPlaneError
from enclave.identity import NodeIdentity
from enclave.providers.simulated import simulated_snp
from enclave.workload import OutputReport
from kms.oidc.cache import CachedToken, save_token
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc
from sovereign.client import AdminClient, OperatorError

INFERENCE = """
[[appraisal.snp.groups]]
name = "inference"
measurements = ["{measurement}"]
"""
RULE = """
[[release.rules]]
name = "inference-models"
groups = ["inference"]
keys = ["model/*"]
purposes = ["read"]
lineage_restricted = true
"""


def _agent(server: ServerProcess, pki: SimulatedPki, name: str, group: str) -> NodeAgent:
    assert server.ca is not None
    client = ControlPlaneClient(f"127.0.0.1:{server.port}", ca_pem=server.ca.read_bytes(), timeout=10)
    provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
    agent = NodeAgent(client, provider, NodeIdentity.generate(), node_name=name, groups=[group])
    agent.require_attested(agent.register())
    return agent


def _token_cache(server: ServerProcess, username: str, directory: Path) -> Path:
    """A token cache as ``sovereign login`` leaves it, holding a token of the offline realm."""
    now = datetime.now(UTC)
    cache = directory / f"{username}.json"
    token = server.operators().token(username)
    save_token(
        CachedToken("https://keycloak.invalid", "sovereign", "cli", token, now + timedelta(minutes=5), now),
        cache,
    )
    return cache


def _entries(server: ServerProcess, kind: str) -> list[dict[str, Any]]:
    rows = sqlite3.connect(server.db).execute(
        "SELECT canonical FROM audit_entries WHERE kind = ? ORDER BY seq", (kind,)
    )
    return [json.loads(bytes(c)) for (c,) in rows]


def _approved(server: ServerProcess, held: admin_pb2.PendingChange) -> admin_pb2.ApprovePendingChangeResponse:
    with server.admin_channel("bob") as channel:
        reply: admin_pb2.ApprovePendingChangeResponse = admin_pb2_grpc.AdminStub(
            channel
        ).ApprovePendingChange(admin_pb2.ApprovePendingChangeRequest(change_id=held.change_id))
        return reply


@pytest.fixture(scope="module")
def restricted_policy(server: ServerProcess) -> None:
    toml = server_policy().replace(
        "[appraisal.tdx]\n", INFERENCE.format(measurement=SNP_MEASUREMENT.hex()) + "\n[appraisal.tdx]\n", 1
    )
    with server.admin_channel() as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        version = admin.GetPolicy(admin_pb2.GetPolicyRequest()).version
        held = admin.PutPolicy(admin_pb2.PutPolicyRequest(toml=toml + RULE, expected_version=version))
    assert held.HasField("pending_change")
    assert _approved(server, held.pending_change).HasField("policy")


def test_a_model_trained_on_a_dataset_the_group_may_not_read_is_refused_until_an_exception(
    server: ServerProcess, pki: SimulatedPki, restricted_policy: None, tmp_path: Path
) -> None:
    trainer = _agent(server, pki, "lineage-trainer", "trainers")
    trainer.release("dataset/train", "read")
    write = trainer.release("model/main", "write")
    plain = os.urandom(1000)
    digest = hashlib.sha256(plain).hexdigest()
    trainer.record_output(
        OutputReport(
            "model/main", write.key_version, digest, digest, hashlib.sha256(b"s" + plain).hexdigest(), 1000
        )
    )

    reader = _agent(server, pki, "lineage-reader", "inference")
    with pytest.raises(ControlPlaneError) as refused:
        reader.release("model/main", "read")
    assert refused.value.reason == "RELEASE_LINEAGE_RESTRICTED"
    denies = [e for e in _entries(server, "release.deny") if e["fields"]["node_id"] == reader.node_id]
    assert [r["code"] for r in denies[-1]["reasons"]] == ["RELEASE_LINEAGE_RESTRICTED"]
    assert "dataset/train" in denies[-1]["reasons"][0]["message"]
    # the group's own entitlement is unchanged: it still may not read the dataset
    with pytest.raises(ControlPlaneError) as no_rule:
        reader.release("dataset/train", "read")
    assert no_rule.value.reason == "RELEASE_NO_RULE"

    # the exception through the operator CLI (as alice) and the typed client (bob approves)
    cache = _token_cache(server, "alice", tmp_path)
    alice = AdminClient(server.admin_channel("alice"))
    for key_name, group, reason, why in (
        ("model/main", "nobody", "x", "group"),
        ("dataset/train", "inference", "x", "model"),
        ("model/main", "inference", "", "reason"),
    ):
        with pytest.raises(OperatorError) as bad:
            alice.grant_lineage_exception(key_name, group, reason)
        assert bad.value.code == "REQUEST_INVALID", why
    run = admin(server, cache, "lineage-exception", "grant", "model/main", "--group", "inference",
                "--reason", "ticket 7")  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["ok"] is True and "lineage_exception" not in doc  # two-person always, whatever the settings
    held = doc["pending_change"]
    assert held["method"] == "GrantLineageException" and held["state"] == "PENDING_CHANGE_STATE_PENDING"
    assert held["request"]["key_name"] == "model/main" and held["request"]["group"] == "inference"
    with pytest.raises(OperatorError) as own:
        alice.approve(held["change_id"])
    assert (own.value.code, own.value.status) == ("AUTH_SAME_APPROVER", "PERMISSION_DENIED")
    # held, not applied: still refused
    with pytest.raises(ControlPlaneError) as still:
        reader.release("model/main", "read")
    assert still.value.reason == "RELEASE_LINEAGE_RESTRICTED"

    approved = AdminClient(server.admin_channel("bob")).approve(held["change_id"])
    assert approved.lineage_exception is not None
    assert (approved.lineage_exception.key_name, approved.lineage_exception.group) == (
        "model/main",
        "inference",
    )
    (exception,) = _entries(server, "lineage.exception")
    assert exception["fields"]["key_name"] == "model/main" and exception["fields"]["groups"] == ["inference"]
    granted = reader.release("model/main", "read")
    assert granted.key_name == "model/main" and granted.purpose == "read"

    # withdrawn by one operator (it only tightens): the same release is refused again
    run = admin(server, cache, "lineage-exception", "withdraw", "model/main", "--group", "inference",
                "--reason", "ticket 9")  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["ok"] is True and "pending_change" not in doc
    assert doc["withdrawn"] == {"key_name": "model/main", "group": "inference"}
    (withdrawal,) = _entries(server, "lineage.exception.withdraw")
    named = {k: withdrawal["fields"][k] for k in ("key_name", "groups", "comment", "username")}
    assert named == {
        "key_name": "model/main",
        "groups": ["inference"],
        "comment": "ticket 9",
        "username": "alice",
    }
    with pytest.raises(ControlPlaneError) as again:
        reader.release("model/main", "read")
    assert again.value.reason == "RELEASE_LINEAGE_RESTRICTED"
    # nothing left to withdraw
    with pytest.raises(OperatorError) as gone:
        alice.withdraw_lineage_exception("model/main", "inference", "twice")
    assert gone.value.code == "REQUEST_INVALID"
