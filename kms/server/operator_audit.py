"""Operator actions and refusals into the audit ledger (``kms.sql.audit_append.AuditLedger.record_operator_action``).

Every admitted change and every refused call of an authenticated operator (a valid token: a role it
lacks, the two-person rule) becomes one entry with the actor's subject, user name and roles. A call
refused before authentication (no token, a malformed, expired, forged or foreign one) proves nothing
about who sent it and costs the sender nothing: it is counted and rate-limit logged
(``kms.usecases.metrics.Refusals``, endpoint ``operator``), never appended to the ledger. The ledger's entry
vocabulary is closed: a kind the ledger does not know is logged instead of failing the call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kms.audit.entry import Decision, Kind, Reason
from kms.oidc.errors import AuthError
from kms.oidc.tokens import Actor
from kms.oidc.two_person import OperatorRef
from kms.usecases.metrics import Refusals

log = logging.getLogger("sovereign.audit")

ANONYMOUS = {"subject": "anonymous", "username": "anonymous", "roles": []}
REFUSED_KIND = "operator.refused"


class Sink(Protocol):
    def record_operator_action(
        self,
        actor_fields: Mapping[str, Any],
        kind: Any,
        fields: Mapping[str, Any],
        decision: Any = ...,
        reasons: Sequence[Reason] = (),
    ) -> int: ...


def _kind(value: str) -> Kind | None:
    try:
        return Kind(value)
    except ValueError:
        return None


def actor_fields(actor: Actor | OperatorRef | None) -> dict[str, Any]:
    """Who acted, as the ledger records it (``kms.audit.draft.operator_draft``)."""
    if actor is None:
        return dict(ANONYMOUS)
    return {"subject": actor.subject, "username": actor.username, "roles": sorted(actor.roles)}


class OperatorAudit:
    """Records operator actions in the ledger; ``sink`` None logs only (unit tests, replicas).
    ``refusals`` counts the calls refused before authentication (None: they are only logged)."""

    def __init__(self, sink: Sink | None, refusals: Refusals | None = None) -> None:
        self._sink = sink
        self._refusals = refusals

    def _write(
        self,
        actor: Actor | None,
        kind_name: str,
        fields: Mapping[str, Any],
        decision: Decision,
        reasons: Sequence[Reason],
    ) -> int:
        kind = _kind(kind_name)
        if self._sink is None or kind is None:
            log.warning(
                "operator action not in the ledger (kind %r %s): %s %s %s",
                kind_name,
                "unknown to the ledger" if kind is None else "no ledger",
                actor_fields(actor)["subject"],
                decision.value,
                [r.code for r in reasons],
            )
            return -1
        return self._sink.record_operator_action(actor_fields(actor), kind, fields, decision, reasons)

    def pending(self, actor: Actor, kind: Kind, fields: Mapping[str, Any]) -> int:
        """A proposal, approval or rejection under the two-person rule (the applied change itself is
        recorded by its use case), durable before the reply."""
        return self._write(actor, kind.value, fields, Decision.NONE, ())

    def on_refused(self, actor: Actor | None, method: str, err: AuthError) -> None:
        self.refused(actor, method, err)

    def refused(self, actor: Actor | None, method: str, err: AuthError) -> int:
        """A refused operator call (``OperatorAuthInterceptor``'s ``on_refused`` and two-person refusals):
        a ledger entry when ``actor`` authenticated, else counted only (-1: no entry)."""
        name = method.rsplit("/", 1)[-1]
        if actor is None:
            if self._refusals is not None:
                self._refusals.refused("operator", err.code.value)
            else:
                log.debug("operator call refused before authentication: %s %s", name, err.code.value)
            return -1
        reason = Reason(err.code.value, f"{name}: {err.message}"[:1024])
        return self._write(actor, REFUSED_KIND, {}, Decision.DENY, (reason,))
