"""The two-person rule: some Admin changes are held until a second, different operator approves them.

Pure decisions (``propose``, ``approve``, ``reject``, ``expire``) take the change, the actor and ``now``
and return the new state or raise AuthError; ``TwoPersonRule`` runs them against a ``PendingStore``;
``kms.usecases.pending.PendingChanges`` is the workflow around them (apply, roll back, audit).
Which actions are held is configurable; by default ``PutPolicy``, ``DestroyKey`` and ``ApproveNode``
(who gets which keys: a node's groups, and any suspend-then-approve sequence).

The approver must hold a role of the held method itself (not just ApprovePendingChange's), and must not
be the proposer: neither the same subject nor the same user name. The stored request bytes are bound
by a digest recorded at proposal, so what is applied is exactly what was proposed and audited.
The store's ``swap`` is a compare-and-set, so two approvers racing cannot both apply a change; a store
backed by the control plane's database should apply the change in the same transaction as the swap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from kms.oidc.errors import AuthError, Code
from kms.oidc.roles import ADMIN_SERVICE, RoleMap, method_path, normalize_method
from kms.oidc.tokens import Actor

DEFAULT_ACTIONS = frozenset({"PutPolicy", "DestroyKey", "ApproveNode"})
# held for a second operator whatever the settings say: the rule makes them two-person by definition
ALWAYS_HELD = frozenset({"GrantLineageException"})
DEFAULT_TTL = timedelta(hours=24)
_DIGEST_LABEL = b"sovereign/v1 pending change\x00"


class ChangeState(StrEnum):
    PENDING = "PENDING"
    APPLIED = "APPLIED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class OperatorRef:
    """Who proposed or decided, as recorded with the change and in its audit entries."""

    subject: str
    username: str
    roles: frozenset[str]

    @classmethod
    def of(cls, actor: Actor) -> OperatorRef:
        return cls(actor.subject, actor.username, actor.roles)

    def same_person(self, actor: Actor) -> bool:
        return self.subject == actor.subject or self.username.casefold() == actor.username.casefold()

    def audit_fields(self) -> dict[str, Any]:
        return {"subject": self.subject, "username": self.username, "roles": sorted(self.roles)}


@dataclass(frozen=True)
class PendingChange:
    change_id: str
    action: str  # the Admin method name, e.g. "PutPolicy"
    payload: bytes = dataclasses.field(repr=False)  # the serialized original request
    payload_digest: bytes
    summary: str
    proposed_by: OperatorRef
    proposed_at: datetime
    expires_at: datetime
    state: ChangeState = ChangeState.PENDING
    decided_by: OperatorRef | None = None
    decided_at: datetime | None = None
    comment: str = ""

    @property
    def method(self) -> str:
        return method_path(ADMIN_SERVICE, self.action)


@dataclass(frozen=True)
class TwoPersonConfig:
    actions: frozenset[str] = DEFAULT_ACTIONS
    ttl: timedelta = DEFAULT_TTL

    def __post_init__(self) -> None:
        for action in self.actions:
            normalize_method(f"Admin/{action}")  # raises AUTH_CONFIG_INVALID for unknown methods
        if self.ttl <= timedelta(0):
            raise AuthError(Code.AUTH_CONFIG_INVALID, "the pending change lifetime must be positive")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TwoPersonConfig:
        """``{"actions": ["PutPolicy", ...], "ttl_seconds": 86400}``; both optional."""
        unknown = set(config) - {"actions", "ttl_seconds"}
        if unknown:
            raise AuthError(Code.AUTH_CONFIG_INVALID, f"unknown two-person settings {sorted(unknown)}")
        actions: Iterable[str] = config.get("actions", DEFAULT_ACTIONS)
        ttl = config.get("ttl_seconds", int(DEFAULT_TTL.total_seconds()))
        if isinstance(actions, str) or not isinstance(ttl, int) or isinstance(ttl, bool):
            raise AuthError(
                Code.AUTH_CONFIG_INVALID, "two-person actions must be a list and ttl_seconds an integer"
            )
        return cls(frozenset(actions), timedelta(seconds=ttl))

    def requires_approval(self, action: str) -> bool:
        return action in self.actions or action in ALWAYS_HELD


def payload_digest(action: str, payload: bytes) -> bytes:
    return hashlib.sha256(_DIGEST_LABEL + action.encode() + b"\x00" + payload).digest()


def propose(
    action: str, payload: bytes, summary: str, actor: Actor, *, change_id: str, now: datetime, ttl: timedelta
) -> PendingChange:
    return PendingChange(
        change_id=change_id,
        action=action,
        payload=payload,
        payload_digest=payload_digest(action, payload),
        summary=summary[:1024],
        proposed_by=OperatorRef.of(actor),
        proposed_at=now,
        expires_at=now + ttl,
    )


def _check_open(change: PendingChange, now: datetime) -> None:
    if change.state is not ChangeState.PENDING:
        raise AuthError(Code.AUTH_CHANGE_NOT_PENDING, f"change {change.change_id} is {change.state.value}")
    if now >= change.expires_at:
        raise AuthError(
            Code.AUTH_CHANGE_EXPIRED, f"change {change.change_id} expired at {change.expires_at.isoformat()}"
        )


def approve(
    change: PendingChange, actor: Actor, roles: RoleMap, *, now: datetime, comment: str = ""
) -> PendingChange:
    """The change decided APPLIED by ``actor``; the caller applies ``change.payload`` (already verified)."""
    _check_open(change, now)
    if change.proposed_by.same_person(actor):
        raise AuthError(
            Code.AUTH_SAME_APPROVER,
            f"{actor.username!r} proposed change {change.change_id} and cannot also approve it",
        )
    roles.authorize(actor, change.method)
    verify_payload(change)
    return dataclasses.replace(
        change,
        state=ChangeState.APPLIED,
        decided_by=OperatorRef.of(actor),
        decided_at=now,
        comment=comment[:1024],
    )


def reject(
    change: PendingChange, actor: Actor, roles: RoleMap, *, now: datetime, comment: str
) -> PendingChange:
    """The change decided REJECTED: by its proposer (withdrawal) or by anyone allowed to make it."""
    _check_open(change, now)
    if not change.proposed_by.same_person(actor):
        roles.authorize(actor, change.method)
    return dataclasses.replace(
        change,
        state=ChangeState.REJECTED,
        decided_by=OperatorRef.of(actor),
        decided_at=now,
        comment=comment[:1024],
    )


def expire(change: PendingChange, now: datetime) -> PendingChange:
    """EXPIRED if still pending past its deadline, else unchanged."""
    if change.state is ChangeState.PENDING and now >= change.expires_at:
        return dataclasses.replace(change, state=ChangeState.EXPIRED, decided_at=now)
    return change


def verify_payload(change: PendingChange) -> None:
    if not hmac.compare_digest(payload_digest(change.action, change.payload), change.payload_digest):
        raise AuthError(
            Code.AUTH_PAYLOAD_MISMATCH, f"the stored request of change {change.change_id} was altered"
        )


class PendingStore(Protocol):
    """Storage seam for pending changes (the control plane's database in production)."""

    def add(self, change: PendingChange) -> None: ...

    def get(self, change_id: str) -> PendingChange | None: ...

    def swap(self, expected: PendingChange, new: PendingChange) -> bool:
        """Replace ``expected`` by ``new`` if the stored change is still ``expected``; False otherwise."""
        ...

    def list(self, state: ChangeState | None = None) -> Sequence[PendingChange]: ...

    def page(self, state: ChangeState | None, offset: int, limit: int) -> Sequence[PendingChange]:
        """Changes in ``state`` (None: any) in proposal order, ``limit`` from ``offset``."""
        ...

    def expire_due(self, now: datetime) -> int:
        """Mark every undecided change past its deadline EXPIRED; how many were."""
        ...


class TwoPersonRule:
    """Hold, approve and reject changes against a store."""

    def __init__(
        self,
        store: PendingStore,
        roles: RoleMap,
        config: TwoPersonConfig | None = None,
        *,
        new_id: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.store = store
        self.roles = roles
        self.config = config or TwoPersonConfig()
        self._new_id = new_id

    def requires_approval(self, action: str) -> bool:
        return self.config.requires_approval(action)

    def propose(
        self, action: str, payload: bytes, summary: str, actor: Actor, *, now: datetime
    ) -> PendingChange:
        self.roles.authorize(actor, method_path(ADMIN_SERVICE, action))
        change = propose(
            action, payload, summary, actor, change_id=self._new_id(), now=now, ttl=self.config.ttl
        )
        self.store.add(change)
        return change

    def approve(self, change_id: str, actor: Actor, *, now: datetime, comment: str = "") -> PendingChange:
        change = self._open(change_id, now)
        return self._commit(change, approve(change, actor, self.roles, now=now, comment=comment))

    def reject(self, change_id: str, actor: Actor, *, now: datetime, comment: str) -> PendingChange:
        change = self._open(change_id, now)
        return self._commit(change, reject(change, actor, self.roles, now=now, comment=comment))

    def _open(self, change_id: str, now: datetime) -> PendingChange:
        change = self.store.get(change_id)
        if change is None:
            raise AuthError(Code.AUTH_CHANGE_NOT_FOUND, f"no pending change {change_id[:64]!r}")
        expired = expire(change, now)
        if expired is not change:
            self.store.swap(change, expired)
            _check_open(change, now)  # raises AUTH_CHANGE_EXPIRED
        return change

    def _commit(self, expected: PendingChange, new: PendingChange) -> PendingChange:
        if not self.store.swap(expected, new):
            raise AuthError(
                Code.AUTH_CHANGE_NOT_PENDING, f"change {expected.change_id} was decided concurrently"
            )
        return new
