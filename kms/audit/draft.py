"""An audit entry before the ledger numbers it: ``Draft`` and the helpers that build one (pure).

The storage-backed appender (``kms.sql.audit_append``) gives drafts their sequence numbers and times;
everything that decides what to record (the domain, the use cases) builds drafts here without SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attestation.coded import Reason as CodedReason
from kms.audit.entry import Decision, Kind, Reason
from kms.audit.errors import AuditError

SYSTEM = "system"
MAX_REASON_MESSAGE = 1024


@dataclass(frozen=True)
class Draft:
    """An entry before the ledger gives it a sequence number and a time."""

    kind: Kind
    actor: str
    decision: Decision = Decision.NONE
    reasons: tuple[Reason, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


def reasons_of(items: Iterable[CodedReason]) -> tuple[Reason, ...]:
    """Refusal reasons -> entry reasons (the ledger records no hints)."""
    return tuple(Reason(r.code, r.message[:MAX_REASON_MESSAGE]) for r in items)


def node_actor(node_id: str) -> str:
    return f"node:{node_id}" if node_id else "node:unregistered"


def operator_draft(
    actor_fields: Mapping[str, Any],
    kind: Kind,
    fields: Mapping[str, Any],
    decision: Decision = Decision.NONE,
    reasons: Sequence[Reason] = (),
) -> Draft:
    """An operator action. ``actor_fields``: the authenticated operator, e.g. ``{"subject": ...,
    "username": ..., "roles": [...]}`` (kms.oidc's Actor); the actor string is the subject, else the
    username, and those fields are recorded too. Unknown actor keys are refused (closed vocabulary)."""
    subject = str(actor_fields.get("subject") or actor_fields.get("username") or "")
    if not subject:
        raise AuditError("an operator action needs the operator's subject or username")
    extra = {k: v for k, v in actor_fields.items() if k in ("subject", "username", "roles")}
    unknown = set(actor_fields) - {"subject", "username", "roles"}
    if unknown:
        raise AuditError(f"unknown operator fields {sorted(unknown)}: record subject, username, roles")
    return Draft(kind, subject, decision, tuple(reasons), {**fields, **extra})
