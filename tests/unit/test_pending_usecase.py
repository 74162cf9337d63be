"""``kms.usecases.pending.PendingChanges`` with small fakes at its ports: an in-memory store, actions that record
what they apply, a JSON codec, an audit sink and a settable clock. The two-person decisions are the
real ``kms.oidc.two_person`` ones."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kms.audit.entry import Kind
from kms.errors import Code, KmsError
from kms.oidc.errors import AuthError
from kms.oidc.errors import Code as AuthCode
from kms.oidc.roles import RoleMap
from kms.oidc.tokens import Actor
from kms.oidc.two_person import ChangeState, OperatorRef, PendingChange, TwoPersonConfig, TwoPersonRule
from kms.usecases.admin_commands import AdminCommand, DestroyKey, PutPolicy, RotateKey
from kms.usecases.pending import Applied, Held, PendingChanges

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
CUSTODIAN = "sovereign-key-custodian"


def operator(username: str, *roles: str) -> Actor:
    return Actor(
        subject=f"sub-{username}", username=username, roles=frozenset(roles), client_roles={},
        realm="sovereign", issuer="https://sso.example/realms/sovereign", client_id="sovereign",
        token_id="t", expires_at=T0 + timedelta(days=1),
    )  # fmt: skip


ALICE = operator("alice", CUSTODIAN, "sovereign-admin")
BOB = operator("bob", CUSTODIAN)
CAROL = operator("carol", "sovereign-operator")


class MemoryStore:
    def __init__(self) -> None:
        self.items: dict[str, PendingChange] = {}

    def add(self, change: PendingChange) -> None:
        self.items[change.change_id] = change

    def get(self, change_id: str) -> PendingChange | None:
        return self.items.get(change_id)

    def swap(self, expected: PendingChange, new: PendingChange) -> bool:
        if self.items.get(expected.change_id) != expected:
            return False
        self.items[new.change_id] = new
        return True

    def list(self, state: ChangeState | None = None) -> Sequence[PendingChange]:
        return [c for c in self.items.values() if state is None or c.state is state]

    def page(self, state: ChangeState | None, offset: int, limit: int) -> Sequence[PendingChange]:
        return list(self.list(state))[offset : offset + limit]

    def expire_due(self, now: datetime) -> int:
        due = [c for c in self.items.values() if c.state is ChangeState.PENDING and now >= c.expires_at]
        for c in due:
            self.items[c.change_id] = dataclasses.replace(c, state=ChangeState.EXPIRED, decided_at=now)
        return len(due)


class RecordingActions:
    def __init__(self) -> None:
        self.applied: list[tuple[AdminCommand, str]] = []
        self.fail_with: Exception | None = None
        self.refuse: KmsError | None = None

    def check(self, command: AdminCommand) -> str:
        if self.refuse is not None:
            raise self.refuse
        return f"summary of {command.action}"

    def apply(self, command: AdminCommand, by: Actor | OperatorRef) -> str:
        if self.fail_with is not None:
            raise self.fail_with
        self.applied.append((command, by.username))
        return f"applied {command.action}"


class JsonCodec:
    TYPES: Mapping[str, type[Any]] = {
        "DestroyKey": DestroyKey,
        "RotateKey": RotateKey,
        "PutPolicy": PutPolicy,
    }

    def encode(self, command: AdminCommand) -> bytes:
        return json.dumps(dataclasses.asdict(command), sort_keys=True).encode()

    def decode(self, action: str, payload: bytes) -> AdminCommand:
        return self.TYPES[action](**json.loads(payload))  # type: ignore[no-any-return]


class AuditSink:
    def __init__(self) -> None:
        self.pending_entries: list[tuple[str, Kind, dict[str, Any]]] = []
        self.refusals: list[tuple[str, str, AuthCode]] = []

    def pending(self, actor: Actor, kind: Kind, fields: Mapping[str, Any]) -> int:
        self.pending_entries.append((actor.username, kind, dict(fields)))
        return len(self.pending_entries)

    def refused(self, actor: Actor | None, method: str, err: AuthError) -> int:
        assert actor is not None
        self.refusals.append((actor.username, method, err.code))
        return len(self.refusals)


class World:
    def __init__(self) -> None:
        self.now = T0
        self.store = MemoryStore()
        self.actions = RecordingActions()
        self.audit = AuditSink()
        ids = iter(f"change-{i}" for i in range(1, 100))
        rule = TwoPersonRule(
            self.store, RoleMap.default(), TwoPersonConfig(ttl=timedelta(hours=1)), new_id=lambda: next(ids)
        )
        self.pending: PendingChanges[AdminCommand, str] = PendingChanges(
            rule, self.actions, JsonCodec(), self.audit, lambda: self.now
        )

    def propose_destroy(self) -> PendingChange:
        out = self.pending.submit(DestroyKey("k", "k", "retired"), ALICE, {"key_name": "k"})
        assert isinstance(out, Held)
        return out.change


@pytest.fixture
def world() -> World:
    return World()


def test_a_held_action_is_checked_stored_and_audited_not_applied(world: World) -> None:
    change = world.propose_destroy()
    assert change.state is ChangeState.PENDING and change.summary == "summary of DestroyKey"
    assert change.proposed_by == OperatorRef.of(ALICE) and change.expires_at == T0 + timedelta(hours=1)
    assert world.store.get(change.change_id) == change
    assert JsonCodec().decode("DestroyKey", change.payload) == DestroyKey("k", "k", "retired")
    assert world.audit.pending_entries == [
        ("alice", Kind.PENDING_CREATE, {"key_name": "k", "pending_id": change.change_id})
    ]
    assert world.actions.applied == []


def test_an_action_not_held_is_applied_at_once_as_the_caller(world: World) -> None:
    out = world.pending.submit(RotateKey("k"), BOB, {"key_name": "k"})
    assert out == Applied("applied RotateKey")
    assert world.actions.applied == [(RotateKey("k"), "bob")]
    assert world.store.items == {} and world.audit.pending_entries == []


def test_a_change_that_fails_its_checks_is_never_held(world: World) -> None:
    world.actions.refuse = KmsError("no such key", code=Code.KEY_NOT_FOUND)
    with pytest.raises(KmsError) as info:
        world.pending.submit(DestroyKey("k", "k", "retired"), ALICE, {"key_name": "k"})
    assert info.value.code is Code.KEY_NOT_FOUND
    assert world.store.items == {} and world.audit.pending_entries == []


def test_the_proposer_cannot_approve_their_own_change(world: World) -> None:
    change = world.propose_destroy()
    with pytest.raises(AuthError) as info:
        world.pending.approve(change.change_id, ALICE)
    assert info.value.code is AuthCode.AUTH_SAME_APPROVER
    assert world.audit.refusals == [
        ("alice", "/sovereign.v1.Admin/ApprovePendingChange", AuthCode.AUTH_SAME_APPROVER)
    ]
    assert world.actions.applied == [] and world.store.items[change.change_id].state is ChangeState.PENDING


def test_an_approver_without_the_held_methods_role_is_refused(world: World) -> None:
    change = world.propose_destroy()
    with pytest.raises(AuthError) as info:
        world.pending.approve(change.change_id, CAROL)
    assert info.value.code is AuthCode.AUTH_ROLE_MISSING
    assert world.actions.applied == [] and world.audit.refusals[0][2] is AuthCode.AUTH_ROLE_MISSING


def test_a_second_operator_applies_the_change_as_proposed(world: World) -> None:
    change = world.propose_destroy()
    world.now = T0 + timedelta(minutes=5)
    approved = world.pending.approve(change.change_id, BOB, "agreed")
    assert approved.result == "applied DestroyKey"
    assert world.actions.applied == [(DestroyKey("k", "k", "retired"), "alice")]  # as the proposer
    assert approved.change.state is ChangeState.APPLIED
    assert approved.change.decided_by == OperatorRef.of(BOB) and approved.change.decided_at == world.now
    assert world.store.items[change.change_id] == approved.change
    assert world.audit.pending_entries[-1] == (
        "bob",
        Kind.PENDING_APPROVE,
        {"pending_id": change.change_id, "comment": "agreed"},
    )
    with pytest.raises(AuthError) as again:  # applied once only
        world.pending.approve(change.change_id, BOB)
    assert again.value.code is AuthCode.AUTH_CHANGE_NOT_PENDING
    assert len(world.actions.applied) == 1


def test_an_expired_change_is_refused_and_recorded_expired(world: World) -> None:
    change = world.propose_destroy()
    world.now = T0 + timedelta(hours=1)
    with pytest.raises(AuthError) as info:
        world.pending.approve(change.change_id, BOB)
    assert info.value.code is AuthCode.AUTH_CHANGE_EXPIRED
    assert world.store.items[change.change_id].state is ChangeState.EXPIRED
    assert world.actions.applied == []
    assert world.audit.refusals[-1][2] is AuthCode.AUTH_CHANGE_EXPIRED


def test_an_altered_stored_payload_is_refused(world: World) -> None:
    change = world.propose_destroy()
    forged = JsonCodec().encode(DestroyKey("other", "other", "retired"))
    world.store.items[change.change_id] = dataclasses.replace(change, payload=forged)
    with pytest.raises(AuthError) as info:
        world.pending.approve(change.change_id, BOB)
    assert info.value.code is AuthCode.AUTH_PAYLOAD_MISMATCH
    assert world.actions.applied == []
    assert world.store.items[change.change_id].state is ChangeState.PENDING


def test_a_failed_apply_puts_the_change_back_to_pending(world: World) -> None:
    change = world.propose_destroy()
    world.actions.fail_with = KmsError("OpenBao is unreachable", code=Code.KMS_UNAVAILABLE)
    with pytest.raises(KmsError) as info:
        world.pending.approve(change.change_id, BOB, "agreed")
    assert info.value.code is Code.KMS_UNAVAILABLE
    stored = world.store.items[change.change_id]
    assert stored.state is ChangeState.PENDING and stored.decided_by is None and stored.comment == ""
    assert [k for _, k, _ in world.audit.pending_entries] == [Kind.PENDING_CREATE]  # no approval entry
    world.actions.fail_with = None
    assert world.pending.approve(change.change_id, BOB).result == "applied DestroyKey"


def test_reject_needs_a_comment_and_is_audited(world: World) -> None:
    change = world.propose_destroy()
    with pytest.raises(KmsError) as info:
        world.pending.reject(change.change_id, BOB, "")
    assert info.value.code is Code.REQUEST_INVALID
    rejected = world.pending.reject(change.change_id, ALICE, "withdrawn")  # the proposer may withdraw
    assert rejected.state is ChangeState.REJECTED and rejected.comment == "withdrawn"
    assert world.audit.pending_entries[-1] == (
        "alice",
        Kind.PENDING_REJECT,
        {"pending_id": change.change_id, "comment": "withdrawn"},
    )
    with pytest.raises(AuthError) as late:
        world.pending.approve(change.change_id, BOB)
    assert late.value.code is AuthCode.AUTH_CHANGE_NOT_PENDING
    assert world.audit.refusals[-1][1] == "/sovereign.v1.Admin/ApprovePendingChange"


def test_reject_by_someone_without_the_role_is_refused_and_audited(world: World) -> None:
    change = world.propose_destroy()
    with pytest.raises(AuthError):
        world.pending.reject(change.change_id, CAROL, "no")
    assert world.audit.refusals == [
        ("carol", "/sovereign.v1.Admin/RejectPendingChange", AuthCode.AUTH_ROLE_MISSING)
    ]


def test_list_pages_in_proposal_order_and_marks_overdue_changes_expired(world: World) -> None:
    first = world.propose_destroy()
    world.now = T0 + timedelta(minutes=30)
    second = world.propose_destroy()
    page, token = world.pending.list(ChangeState.PENDING, 1, "")
    assert [c.change_id for c in page] == [first.change_id] and token == "1"
    page, token = world.pending.list(ChangeState.PENDING, 1, token)
    assert [c.change_id for c in page] == [second.change_id] and token == "2"
    world.now = T0 + timedelta(minutes=61)
    pending, _ = world.pending.list(ChangeState.PENDING, 0, "")
    expired, _ = world.pending.list(ChangeState.EXPIRED, 0, "")
    assert [c.change_id for c in pending] == [second.change_id]
    assert [c.change_id for c in expired] == [first.change_id]
    with pytest.raises(KmsError) as info:
        world.pending.list(ChangeState.PENDING, 0, "not-a-token")
    assert info.value.code is Code.REQUEST_INVALID
