"""OperatorAuthInterceptor on a real gRPC server on loopback, with stub Admin/Audit servicers.

The stubs stand in for the control plane's servicers: they record ``current_actor()`` and run the
two-person rule for PutPolicy / DestroyKey. Every attack of the issue is refused with the right status,
an ErrorDetail trailer carrying the code, and a call of the ``on_refused`` (audit) hook.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from keycloak import KeycloakOpenID
from oidc import forge
from oidc.provider import CLIENT_ID, OTHER_REALM, REALM, Standin, keycloak_fixture, password_of  # noqa: F401

from kms.oidc.errors import AuthError, Code
from kms.oidc.roles import RoleMap
from kms.oidc.tokens import Actor, keycloak_validator
from kms.oidc.two_person import ChangeState, PendingChange, TwoPersonConfig, TwoPersonRule
from kms.server.auth_interceptor import OperatorAuthInterceptor, abort, current_actor
from proto.contract import ErrorDetail, parse_error_detail
from proto.sovereign.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    attestation_pb2,
    attestation_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
)

pytestmark = pytest.mark.integration


class MemoryStore:
    """PendingStore in memory with compare-and-set (the control plane's is its database)."""

    def __init__(self) -> None:
        self._items: dict[str, PendingChange] = {}
        self._lock = threading.Lock()

    def add(self, change: PendingChange) -> None:
        self._items[change.change_id] = change

    def get(self, change_id: str) -> PendingChange | None:
        return self._items.get(change_id)

    def swap(self, expected: PendingChange, new: PendingChange) -> bool:
        with self._lock:
            if self._items.get(expected.change_id) != expected:
                return False
            self._items[new.change_id] = new
            return True

    def list(self, state: ChangeState | None = None) -> Sequence[PendingChange]:
        return [c for c in self._items.values() if state is None or c.state is state]

    def page(self, state: ChangeState | None, offset: int, limit: int) -> Sequence[PendingChange]:
        return list(self.list(state))[offset : offset + limit]

    def expire_due(self, now: datetime) -> int:
        due = [c for c in self._items.values() if c.state is ChangeState.PENDING and now >= c.expires_at]
        for change in due:
            self.swap(change, dataclasses.replace(change, state=ChangeState.EXPIRED, decided_at=now))
        return len(due)


@dataclass
class World:
    rule: TwoPersonRule
    seen: list[tuple[str, Actor]] = field(default_factory=list)
    refused: list[tuple[Actor | None, str, Code]] = field(default_factory=list)
    applied: list[tuple[str, bytes, Actor, Actor | None]] = field(default_factory=list)


class StubAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self, world: World) -> None:
        self.world = world

    def ListNodes(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ListNodesResponse:
        self.world.seen.append(("ListNodes", current_actor()))
        return admin_pb2.ListNodesResponse()

    def PutPolicy(self, request: admin_pb2.PutPolicyRequest, context: grpc.ServicerContext) -> Any:
        actor = current_actor()
        self.world.seen.append(("PutPolicy", actor))
        rule = self.world.rule
        payload = request.SerializeToString(deterministic=True)
        if rule.requires_approval("PutPolicy"):
            change = rule.propose("PutPolicy", payload, "replace the policy", actor, now=datetime.now(UTC))
            pending = admin_pb2.PendingChange(
                change_id=change.change_id, method="PutPolicy", proposed_by=actor.subject
            )
            return admin_pb2.PutPolicyResponse(pending_change=pending)
        self.world.applied.append(("PutPolicy", payload, actor, None))
        return admin_pb2.PutPolicyResponse(applied=admin_pb2.PolicyApplied())

    def ApprovePendingChange(self, request: Any, context: grpc.ServicerContext) -> Any:
        actor = current_actor()
        try:
            change = self.world.rule.approve(
                request.change_id, actor, now=datetime.now(UTC), comment=request.comment
            )
        except AuthError as err:
            self.world.refused.append((actor, "ApprovePendingChange", err.code))  # the servicer audits it
            abort(context, err)
        self.world.applied.append((change.action, change.payload, actor, None))
        return admin_pb2.ApprovePendingChangeResponse(
            change=admin_pb2.PendingChange(
                change_id=change.change_id,
                state=admin_pb2.PENDING_CHANGE_STATE_APPLIED,
                proposed_by=change.proposed_by.subject,
                decided_by=actor.subject,
            )
        )


class StubAudit(audit_pb2_grpc.AuditServicer):
    def __init__(self, world: World) -> None:
        self.world = world

    def Export(self, request: Any, context: grpc.ServicerContext) -> Iterator[audit_pb2.ExportItem]:
        for sequence in range(2):
            self.world.seen.append(("Export", current_actor()))
            yield audit_pb2.ExportItem(entry=audit_pb2.AuditEntry(sequence=sequence))


class StubAttestation(attestation_pb2_grpc.AttestationServicer):
    def Challenge(self, request: Any, context: grpc.ServicerContext) -> attestation_pb2.ChallengeResponse:
        return attestation_pb2.ChallengeResponse()


@dataclass
class Served:
    world: World
    admin: admin_pb2_grpc.AdminStub
    audit: audit_pb2_grpc.AuditStub
    attestation: attestation_pb2_grpc.AttestationStub


@pytest.fixture
def served(keycloak: Standin) -> Iterator[Served]:
    roles = RoleMap.default()
    world = World(rule=TwoPersonRule(MemoryStore(), roles, TwoPersonConfig()))
    interceptor = OperatorAuthInterceptor(
        keycloak_validator(keycloak.server_url, REALM, CLIENT_ID),
        roles,
        on_refused=lambda actor, method, err: world.refused.append((actor, method, err.code)),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    admin_pb2_grpc.add_AdminServicer_to_server(StubAdmin(world), server)
    audit_pb2_grpc.add_AuditServicer_to_server(StubAudit(world), server)
    attestation_pb2_grpc.add_AttestationServicer_to_server(StubAttestation(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(
            world,
            admin_pb2_grpc.AdminStub(channel),
            audit_pb2_grpc.AuditStub(channel),
            attestation_pb2_grpc.AttestationStub(channel),
        )
    finally:
        channel.close()
        server.stop(grace=None)


def token(keycloak: Standin, username: str, realm: str = REALM, client_id: str = CLIENT_ID) -> str:
    client = KeycloakOpenID(server_url=keycloak.server_url, realm_name=realm, client_id=client_id)
    return str(client.token(username, password_of(username))["access_token"])


def bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


def expect_refused(
    served: Served, call: Any, metadata: Any, status: grpc.StatusCode, code: Code, method: str = "ListNodes"
) -> ErrorDetail:
    before = len(served.world.refused)
    with pytest.raises(grpc.RpcError) as info:
        call(metadata)
    err: Any = info.value
    assert err.code() == status, err.details()
    assert err.details().startswith(f"{code.value}: ")
    detail = parse_error_detail(err.trailing_metadata())
    assert detail is not None and detail.reason == code.value and detail.hint
    assert served.world.refused[before:] and served.world.refused[-1][1:] == (
        f"/sovereign.v1.Admin/{method}" if "/" not in method else method,
        code,
    )
    return detail


def list_nodes(served: Served) -> Any:
    return lambda md: served.admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=md)


def test_admitted_call_sees_the_actor(keycloak: Standin, served: Served) -> None:
    served.admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=bearer(token(keycloak, "dave")))
    ((name, actor),) = served.world.seen
    assert (name, actor.username) == ("ListNodes", "dave")
    assert actor.audit_fields()["roles"] == sorted(actor.roles)
    assert not served.world.refused


def test_streaming_audit_call_sees_the_actor_and_roles_apply(keycloak: Standin, served: Served) -> None:
    items = list(served.audit.Export(audit_pb2.ExportRequest(), metadata=bearer(token(keycloak, "carol"))))
    assert [i.entry.sequence for i in items] == [0, 1]
    assert [(n, a.username) for n, a in served.world.seen] == [("Export", "carol"), ("Export", "carol")]
    with pytest.raises(grpc.RpcError) as info:
        list(served.audit.Export(audit_pb2.ExportRequest(), metadata=bearer(token(keycloak, "alice"))))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert served.world.refused[-1][1:] == ("/sovereign.v1.Audit/Export", Code.AUTH_ROLE_MISSING)


def test_missing_token(served: Served) -> None:
    expect_refused(served, list_nodes(served), (), grpc.StatusCode.UNAUTHENTICATED, Code.AUTH_MISSING_TOKEN)
    expect_refused(
        served, list_nodes(served), (("authorization", "Basic Zm9vOmJhcg=="),),
        grpc.StatusCode.UNAUTHENTICATED, Code.AUTH_MALFORMED_TOKEN,
    )  # fmt: skip
    assert served.world.refused[-1][0] is None and not served.world.seen


def test_expired(keycloak: Standin, served: Served) -> None:
    t = int(time.time())
    expired = keycloak.mint(username="dave", claims={"exp": t - 3600, "iat": t - 3900})
    expect_refused(
        served, list_nodes(served), bearer(expired), grpc.StatusCode.UNAUTHENTICATED, Code.AUTH_TOKEN_EXPIRED
    )


def test_not_yet_valid(keycloak: Standin, served: Served) -> None:
    early = keycloak.mint(username="dave", claims={"nbf": int(time.time()) + 3600})
    expect_refused(
        served,
        list_nodes(served),
        bearer(early),
        grpc.StatusCode.UNAUTHENTICATED,
        Code.AUTH_TOKEN_NOT_YET_VALID,
    )


def test_wrong_issuer(keycloak: Standin, served: Served) -> None:
    evil = keycloak.mint(username="dave", claims={"iss": "https://evil.example/realms/sovereign"})
    expect_refused(
        served, list_nodes(served), bearer(evil), grpc.StatusCode.UNAUTHENTICATED, Code.AUTH_WRONG_ISSUER
    )


def test_wrong_audience(keycloak: Standin, served: Served) -> None:
    other_client = token(keycloak, "dave", client_id="other-app")
    expect_refused(
        served,
        list_nodes(served),
        bearer(other_client),
        grpc.StatusCode.UNAUTHENTICATED,
        Code.AUTH_WRONG_AUDIENCE,
    )


def test_alg_none(keycloak: Standin, served: Served) -> None:
    none = forge.alg_none(token(keycloak, "dave"))
    expect_refused(
        served, list_nodes(served), bearer(none), grpc.StatusCode.UNAUTHENTICATED, Code.AUTH_ALG_NOT_ALLOWED
    )


def test_hs256_signed_with_the_public_key(keycloak: Standin, served: Served) -> None:
    confused = forge.hs256_with_public_key(token(keycloak, "dave"), keycloak.issuer())
    expect_refused(
        served,
        list_nodes(served),
        bearer(confused),
        grpc.StatusCode.UNAUTHENTICATED,
        Code.AUTH_ALG_NOT_ALLOWED,
    )


def test_unknown_kid(keycloak: Standin, served: Served) -> None:
    foreign = forge.own_key(token(keycloak, "dave"), "attacker-kid")
    expect_refused(
        served, list_nodes(served), bearer(foreign), grpc.StatusCode.UNAUTHENTICATED, Code.AUTH_UNKNOWN_KID
    )


def test_valid_token_without_the_role(keycloak: Standin, served: Served) -> None:
    detail = expect_refused(
        served,
        list_nodes(served),
        bearer(token(keycloak, "erin")),
        grpc.StatusCode.PERMISSION_DENIED,
        Code.AUTH_ROLE_MISSING,
    )
    assert detail.domain == "kms"
    actor = served.world.refused[-1][0]
    assert actor is not None and actor.username == "erin"  # the refusal is audited with who it was

    # An auditor is not an admin: right token, wrong duty.
    def put(md: Any) -> admin_pb2.PutPolicyResponse:
        return served.admin.PutPolicy(admin_pb2.PutPolicyRequest(toml="x"), metadata=md)

    expect_refused(
        served,
        put,
        bearer(token(keycloak, "carol")),
        grpc.StatusCode.PERMISSION_DENIED,
        Code.AUTH_ROLE_MISSING,
        "PutPolicy",
    )


def test_token_from_another_realm(keycloak: Standin, served: Served) -> None:
    foreign = token(keycloak, "alice", realm=OTHER_REALM)
    expect_refused(
        served, list_nodes(served), bearer(foreign), grpc.StatusCode.UNAUTHENTICATED, Code.AUTH_WRONG_ISSUER
    )


def test_two_person_rule_and_same_approver(keycloak: Standin, served: Served) -> None:
    alice, bob, dave = token(keycloak, "alice"), token(keycloak, "bob"), token(keycloak, "dave")
    reply = served.admin.PutPolicy(
        admin_pb2.PutPolicyRequest(toml="version = 2", expected_version=1), metadata=bearer(alice)
    )
    assert reply.WhichOneof("outcome") == "pending_change"
    change_id = reply.pending_change.change_id
    assert not served.world.applied

    def approve(md: Any) -> admin_pb2.ApprovePendingChangeResponse:
        return served.admin.ApprovePendingChange(
            admin_pb2.ApprovePendingChangeRequest(change_id=change_id), metadata=md
        )

    # The proposer, with a fresh token, cannot approve her own change.
    before = len(served.world.refused)
    with pytest.raises(grpc.RpcError) as info:
        approve(bearer(token(keycloak, "alice")))
    err: Any = info.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert parse_error_detail(err.trailing_metadata()).reason == Code.AUTH_SAME_APPROVER.value  # type: ignore[union-attr]
    assert served.world.refused[before:] == [
        (served.world.refused[-1][0], "ApprovePendingChange", Code.AUTH_SAME_APPROVER)
    ]
    # A read-only operator may not approve at all (interceptor), nor may anyone without the held method's role.
    expect_refused(
        served,
        approve,
        bearer(dave),
        grpc.StatusCode.PERMISSION_DENIED,
        Code.AUTH_ROLE_MISSING,
        "ApprovePendingChange",
    )
    assert not served.world.applied

    done = approve(bearer(bob))
    assert done.change.state == admin_pb2.PENDING_CHANGE_STATE_APPLIED
    ((action, payload, approver, _),) = served.world.applied
    assert action == "PutPolicy" and approver.username == "bob"
    assert admin_pb2.PutPolicyRequest.FromString(payload).toml == "version = 2"
    change = served.world.rule.store.get(change_id)
    assert change is not None and change.proposed_by.username == "alice" and change.decided_by is not None
    assert change.decided_by.username == "bob"
    # Applied once: a second approval is refused.
    with pytest.raises(grpc.RpcError) as info:
        approve(bearer(bob))
    assert parse_error_detail(info.value.trailing_metadata()).reason == Code.AUTH_CHANGE_NOT_PENDING.value  # type: ignore[union-attr]


def test_custodian_without_admin_cannot_approve_a_policy_change(keycloak: Standin, served: Served) -> None:
    reply = served.admin.PutPolicy(
        admin_pb2.PutPolicyRequest(toml="v"), metadata=bearer(token(keycloak, "alice"))
    )
    with pytest.raises(grpc.RpcError) as info:
        served.admin.ApprovePendingChange(
            admin_pb2.ApprovePendingChangeRequest(change_id=reply.pending_change.change_id),
            metadata=bearer(token(keycloak, "frank")),  # key custodian (client role) only
        )
    assert parse_error_detail(info.value.trailing_metadata()).reason == Code.AUTH_ROLE_MISSING.value  # type: ignore[union-attr]


def test_pending_changes_expire(keycloak: Standin) -> None:
    roles = RoleMap.default()
    v = keycloak_validator(keycloak.server_url, REALM, CLIENT_ID)
    alice = v.validate(token(keycloak, "alice"), now=datetime.now(UTC))
    bob = v.validate(token(keycloak, "bob"), now=datetime.now(UTC))
    rule = TwoPersonRule(MemoryStore(), roles, TwoPersonConfig(ttl=timedelta(minutes=10)))
    t0 = datetime.now(UTC)
    change = rule.propose("DestroyKey", b"req", "destroy key k", alice, now=t0)
    with pytest.raises(AuthError) as info:
        rule.approve(change.change_id, bob, now=t0 + timedelta(minutes=11))
    assert info.value.code is Code.AUTH_CHANGE_EXPIRED
    stored = rule.store.get(change.change_id)
    assert stored is not None and stored.state is ChangeState.EXPIRED


def test_node_services_pass_through_without_a_token(served: Served) -> None:
    # Nodes authenticate by evidence and signatures, not operator tokens.
    served.attestation.Challenge(attestation_pb2.ChallengeRequest())
    assert not served.world.refused
