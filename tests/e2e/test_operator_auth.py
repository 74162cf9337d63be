"""Operator sign-in against the real server and the real OIDC provider (the Keycloak stand-in): every
refused token, a missing role, the two-person rule's same-approver refusal; each refusal audited."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

import grpc
import pytest
from e2e.node_client import rpc_error
from e2e.operators import StandinRealm, operator_token
from e2e.scrape import refusals
from e2e.world import ServerProcess
from oidc import forge
from oidc.provider import OTHER_REALM

from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2

SC = grpc.StatusCode
CREATE = admin_pb2.CreateKeyRequest(name="dataset/auth-probe", kind=common_pb2.KEY_KIND_DATASET)


def admin_as(server: ServerProcess, token: str | None) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(server.operator_channel(token))


def audit_rows(server: ServerProcess, code: str) -> list[dict[str, object]]:
    """Ledger entries carrying ``code`` among their reasons (decoded canonical JSON)."""
    with sqlite3.connect(server.db) as db:
        rows = db.execute(
            "SELECT canonical FROM audit_entries WHERE reason_codes LIKE ?", (f"% {code} %",)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def wait_audited(server: ServerProcess, code: str, count: int = 1) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while True:
        rows = audit_rows(server, code)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def genuine(realm: StandinRealm) -> str:
    return realm.standin.mint(username="alice")


ATTACKS: dict[str, tuple[Callable[[StandinRealm], str | None], str]] = {
    "missing": (lambda r: None, "AUTH_MISSING_TOKEN"),
    "expired": (
        lambda r: r.standin.mint(claims={"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}),
        "AUTH_TOKEN_EXPIRED",
    ),
    "not-yet-valid": (
        lambda r: r.standin.mint(claims={"nbf": int(time.time()) + 3600}),
        "AUTH_TOKEN_NOT_YET_VALID",
    ),
    "wrong-issuer": (
        lambda r: r.standin.mint(claims={"iss": "https://evil.example/realms/sovereign"}),
        "AUTH_WRONG_ISSUER",
    ),
    "wrong-audience": (lambda r: r.standin.mint(azp="other-app"), "AUTH_WRONG_AUDIENCE"),
    "alg-none": (lambda r: forge.alg_none(genuine(r)), "AUTH_ALG_NOT_ALLOWED"),
    "hs256-public-key": (
        lambda r: forge.hs256_with_public_key(genuine(r), r.issuer),
        "AUTH_ALG_NOT_ALLOWED",
    ),
    "unknown-kid": (lambda r: forge.own_key(genuine(r), "attacker-kid"), "AUTH_UNKNOWN_KID"),
    "another-realm": (lambda r: operator_token(r.standin, "alice", OTHER_REALM), "AUTH_WRONG_ISSUER"),
    "tampered-roles": (
        lambda r: forge.tampered(
            r.standin.mint(username="erin"), realm_access={"roles": ["sovereign-key-custodian"]}
        ),
        "AUTH_BAD_SIGNATURE",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_bad_tokens_are_unauthenticated_counted_and_not_audited(
    server: ServerProcess, realm: StandinRealm, attack: str
) -> None:
    """Without a valid token nobody is authenticated: the refusal is counted by reason, and the ledger
    (which anyone could otherwise grow, one fsync per call) does not change."""
    make, code = ATTACKS[attack]
    before, counted = audit_rows(server, code), refusals(server)[("operator", code)]
    status, reason, detail = rpc_error(admin_as(server, make(realm)).CreateKey, CREATE)
    assert (status, reason) == (SC.UNAUTHENTICATED, code)
    assert detail.hint
    assert refusals(server)[("operator", code)] == counted + 1
    assert audit_rows(server, code) == before


@pytest.mark.parametrize(
    ("username", "method", "message"),
    [
        ("erin", "CreateKey", CREATE),  # signed in, no role at all
        ("dave", "CreateKey", CREATE),  # read-only operator
        ("carol", "ApproveNode", admin_pb2.ApproveNodeRequest(node_id="n-x", groups=["trainers"])),
    ],
)
def test_a_valid_token_without_the_role_is_permission_denied(
    server: ServerProcess, realm: StandinRealm, username: str, method: str, message: object
) -> None:
    before = len(audit_rows(server, "AUTH_ROLE_MISSING"))
    stub = admin_as(server, realm.token(username))
    status, reason, detail = rpc_error(getattr(stub, method), message)
    assert (status, reason) == (SC.PERMISSION_DENIED, "AUTH_ROLE_MISSING")
    assert username in detail.hint or "role" in detail.hint
    rows = wait_audited(server, "AUTH_ROLE_MISSING", before + 1)
    assert rows[-1]["fields"]["username"] == username and rows[-1]["actor"] != "anonymous"  # type: ignore[index]


def test_read_only_operator_reads(server: ServerProcess, realm: StandinRealm) -> None:
    listed = admin_as(server, realm.token("dave")).ListKeys(admin_pb2.ListKeysRequest())
    assert "dataset/train" in [k.name for k in listed.keys]


def test_every_change_records_the_actor(server: ServerProcess, realm: StandinRealm) -> None:
    admin_as(server, realm.token("bob")).CreateKey(
        admin_pb2.CreateKeyRequest(name="dataset/by-bob", kind=common_pb2.KEY_KIND_DATASET)
    )
    with sqlite3.connect(server.db) as db:
        row = db.execute(
            "SELECT canonical FROM audit_entries WHERE kind = 'key.create' AND key_name = 'dataset/by-bob'"
        ).fetchone()
    entry = json.loads(row[0])
    fields = entry["fields"]
    assert fields["username"] == "bob" and "sovereign-key-custodian" in fields["roles"]
    assert entry["actor"] == fields["subject"] != "bob"  # the token subject, not the display name


def test_two_person_rule_refuses_the_same_person(server: ServerProcess, realm: StandinRealm) -> None:
    alice = admin_as(server, realm.token("alice"))
    alice.CreateKey(admin_pb2.CreateKeyRequest(name="dataset/two-person", kind=common_pb2.KEY_KIND_DATASET))
    held = alice.DestroyKey(
        admin_pb2.DestroyKeyRequest(name="dataset/two-person", confirm_name="dataset/two-person", reason="x")
    ).pending_change
    assert held.state == admin_pb2.PENDING_CHANGE_STATE_PENDING
    again = admin_pb2.ApprovePendingChangeRequest(change_id=held.change_id)
    before = len(audit_rows(server, "AUTH_SAME_APPROVER"))
    status, reason, _ = rpc_error(alice.ApprovePendingChange, again)
    assert (status, reason) == (SC.PERMISSION_DENIED, "AUTH_SAME_APPROVER")
    # a fresh token of the same person is the same person
    status, reason, _ = rpc_error(admin_as(server, realm.token("alice")).ApprovePendingChange, again)
    assert reason == "AUTH_SAME_APPROVER"
    assert len(wait_audited(server, "AUTH_SAME_APPROVER", before + 2)) == before + 2
    # a key custodian by client role only (frank) may approve a key destruction
    frank = admin_as(server, realm.token("frank"))
    done = frank.ApprovePendingChange(again)
    assert done.key.state == admin_pb2.KEY_STATE_DESTROYED
    status, reason, _ = rpc_error(admin_as(server, realm.token("bob")).ApprovePendingChange, again)
    assert (status, reason) == (SC.FAILED_PRECONDITION, "AUTH_CHANGE_NOT_PENDING")


def test_a_key_custodian_cannot_approve_a_policy_change(server: ServerProcess, realm: StandinRealm) -> None:
    alice = admin_as(server, realm.token("alice"))
    current = alice.GetPolicy(admin_pb2.GetPolicyRequest())
    held = alice.PutPolicy(
        admin_pb2.PutPolicyRequest(toml=current.toml, expected_version=current.version)
    ).pending_change
    frank = admin_as(server, realm.token("frank"))
    approve = admin_pb2.ApprovePendingChangeRequest(change_id=held.change_id)
    assert rpc_error(frank.ApprovePendingChange, approve)[:2] == (SC.PERMISSION_DENIED, "AUTH_ROLE_MISSING")
    rejected = alice.RejectPendingChange(
        admin_pb2.RejectPendingChangeRequest(change_id=held.change_id, comment="withdrawn")
    )
    assert rejected.state == admin_pb2.PENDING_CHANGE_STATE_REJECTED
    assert alice.GetPolicy(admin_pb2.GetPolicyRequest()).version == current.version
