"""The two-person workflow as a use case: submit a change (applied now, or held for a second operator),
approve, reject and list held changes.

The decisions themselves (who may approve, expiry, the payload digest, compare-and-set) are
``kms.oidc.two_person``; this module runs them with the ports a held change needs: ``Actions`` (check a
command before it is held, apply it as someone), ``CommandCodec`` (the exact bytes a held change keeps
and applies), ``PendingAudit`` (the ledger) and the clock. A held change is claimed (PENDING -> APPLIED)
before it is applied, so two approvers cannot both apply it; if applying fails the claim is undone and
the change stays pending. Every proposal, approval and rejection is audited; a refused approval or
rejection is audited as ``operator.refused``; the applied change itself is audited by ``Actions``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from kms.audit.entry import Kind
from kms.clock import Clock
from kms.oidc.errors import AuthError
from kms.oidc.roles import ADMIN_SERVICE, method_path
from kms.oidc.tokens import Actor
from kms.oidc.two_person import ChangeState, OperatorRef, PendingChange, TwoPersonRule, verify_payload
from kms.usecases.admin import next_token, page_bounds, require_text


class Command(Protocol):
    action: ClassVar[str]  # the Admin method name, e.g. "PutPolicy"


C = TypeVar("C", bound=Command)
C_contra = TypeVar("C_contra", bound=Command, contravariant=True)
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Actions(Protocol[C_contra, R_co]):
    def check(self, command: C_contra) -> str:
        """Refuse (a coded error) what could never be applied; else a one-line summary for humans."""
        ...

    def apply(self, command: C_contra, by: Actor | OperatorRef) -> R_co:
        """Make the change as ``by`` and audit it."""
        ...


class CommandCodec(Protocol[C]):
    def encode(self, command: C) -> bytes: ...

    def decode(self, action: str, payload: bytes) -> C: ...


class PendingAudit(Protocol):
    def pending(self, actor: Actor, kind: Kind, fields: Mapping[str, Any]) -> int: ...

    def refused(self, actor: Actor | None, method: str, err: AuthError) -> int: ...


@dataclass(frozen=True)
class Applied(Generic[R]):
    result: R


@dataclass(frozen=True)
class Held:
    change: PendingChange


@dataclass(frozen=True)
class Approved(Generic[R]):
    change: PendingChange  # APPLIED
    result: R


class PendingChanges(Generic[C, R]):
    def __init__(
        self,
        rule: TwoPersonRule,
        actions: Actions[C, R],
        codec: CommandCodec[C],
        audit: PendingAudit,
        clock: Clock,
    ) -> None:
        self._rule = rule
        self._actions = actions
        self._codec = codec
        self._audit = audit
        self._clock = clock

    def submit(self, command: C, actor: Actor, audit_fields: Mapping[str, Any]) -> Applied[R] | Held:
        """Apply ``command`` as ``actor`` now, or hold it when the two-person rule covers its action
        (``audit_fields`` name what the proposal is about in its audit entry)."""
        if not self._rule.requires_approval(command.action):
            return Applied(self._actions.apply(command, actor))
        summary = self._actions.check(command)
        change = self._rule.propose(
            command.action, self._codec.encode(command), summary, actor, now=self._clock()
        )
        self._audit.pending(actor, Kind.PENDING_CREATE, {**audit_fields, "pending_id": change.change_id})
        return Held(change)

    def approve(self, change_id: str, actor: Actor, comment: str = "") -> Approved[R]:
        """Apply a held change as its proposer; ``actor`` must be someone else holding its role."""
        require_text(comment, "comment", required=False)
        try:
            decided = self._rule.approve(change_id, actor, now=self._clock(), comment=comment)
        except AuthError as err:
            raise self._refused(actor, "ApprovePendingChange", err) from None
        try:
            verify_payload(decided)
            result = self._actions.apply(
                self._codec.decode(decided.action, decided.payload), decided.proposed_by
            )
        except BaseException:
            reopened = dataclasses.replace(
                decided, state=ChangeState.PENDING, decided_by=None, decided_at=None, comment=""
            )
            self._rule.store.swap(decided, reopened)
            raise
        self._audit.pending(
            actor, Kind.PENDING_APPROVE, {"pending_id": decided.change_id, "comment": decided.comment}
        )
        return Approved(decided, result)

    def reject(self, change_id: str, actor: Actor, comment: str) -> PendingChange:
        """Drop a held change: its proposer withdrawing it, or anyone allowed to make it."""
        require_text(comment, "comment", required=True)
        try:
            decided = self._rule.reject(change_id, actor, now=self._clock(), comment=comment)
        except AuthError as err:
            raise self._refused(actor, "RejectPendingChange", err) from None
        self._audit.pending(
            actor, Kind.PENDING_REJECT, {"pending_id": decided.change_id, "comment": decided.comment}
        )
        return decided

    def list(
        self, state: ChangeState, page_size: int, page_token: str
    ) -> tuple[Sequence[PendingChange], str]:
        """One page of changes in ``state`` in proposal order (overdue ones marked EXPIRED first)."""
        offset, size = page_bounds(page_size, page_token)
        self._rule.store.expire_due(self._clock())
        changes = self._rule.store.page(state, offset, size)
        return changes, next_token(offset, size, len(changes))

    def _refused(self, actor: Actor, method: str, err: AuthError) -> AuthError:
        self._audit.refused(actor, method_path(ADMIN_SERVICE, method), err)
        return err
