"""SQL for release decisions: seen request ids, and grant and deny entries in the audit ledger.

``commit_grants`` writes a whole batch of grants in one transaction with a handful of statements: it
re-reads, inside the writing transaction, everything a grant depends on (node state and lease, key state,
active policy version, request ids already seen), refuses each item whose premises changed and appends a
``release.grant`` ledger entry for each other one; the entry's sequence number is the grant's audit
sequence (bound into the release AAD). ``insert_denial`` appends a ``release.deny`` entry. The old
``grants`` and ``denials`` tables are views over these entries now (``audit_migrations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection

from kms.audit.entry import Decision, Kind, Reason
from kms.audit.ledger import Draft, append_entries, node_actor
from kms.errors import Code
from kms.storage.control_schema import nodes, release_requests
from kms.storage.policy_versions import active_version
from kms.storage.schema import key_versions, keys
from policies.errors import Code as PolicyCode


@dataclass(frozen=True)
class GrantRow:
    granted_at: datetime
    node_id: str
    key_name: str
    key_version: int
    purpose: str
    request_id: bytes
    openbao_request_id: str
    lease_expires_at: datetime
    policy_version: int
    rule: str
    bao_batch_index: int = 0  # this item's index in the OpenBao batch decrypt (all share the request id)
    bao_batch_size: int = 1


@dataclass(frozen=True)
class PendingGrant:
    """A grant to record if its premises still hold: the node's lease, the request id's freshness."""

    row: GrantRow
    lease_id: str
    keep_request_until: datetime


@dataclass(frozen=True)
class DenialRow:
    denied_at: datetime
    node_id: str
    key_name: str
    purpose: str
    request_id: bytes
    code: str
    message: str
    openbao_request_id: str | None = None  # set when the key was decrypted before the refusal
    bao_batch_index: int | None = None
    bao_batch_size: int | None = None
    more_reasons: tuple[tuple[str, str], ...] = ()  # (code, message) after the first one


@dataclass(frozen=True)
class Refusal:
    """Why a pending grant was not recorded (a stable code from any of the cores)."""

    code: str
    message: str
    hint: str = ""


_KEY_CODES = {"disabled": Code.KEY_DISABLED.value, "destroyed": Code.KEY_DESTROYED.value}


def _refusal(
    item: PendingGrant,
    standing: dict[str, tuple[str, str | None, datetime | None]],
    key_state: dict[tuple[str, int], str],
    latest: dict[str, int],
    policy: int,
) -> Refusal | None:
    row = item.row
    node = standing.get(row.node_id)
    if node is None or node[0] != "attested":
        return Refusal(
            PolicyCode.RELEASE_NODE_NOT_ATTESTED.value,
            f"node {row.node_id} is {node[0] if node else 'gone'}, not attested",
        )
    if node[1] != item.lease_id or node[2] is None or node[2] <= row.granted_at:
        return Refusal(
            Code.RELEASE_NODE_CHANGED.value,
            f"the lease of node {row.node_id} ended or was replaced",
            "re-attest (Renew) and retry",
        )
    state = key_state.get((row.key_name, row.key_version))
    if state != "active":
        code = _KEY_CODES.get(state or "", Code.KEY_NOT_FOUND.value)
        return Refusal(code, f"key {row.key_name} v{row.key_version} is {state or 'gone'}")
    if row.purpose == "write" and latest.get(row.key_name) != row.key_version:
        return Refusal(
            Code.RELEASE_VERSION_NOT_WRITABLE.value,
            f"{row.key_name} was rotated: v{row.key_version} is no longer released for write",
            "retry with a fresh request id",
        )
    if policy != row.policy_version:
        return Refusal(
            Code.RELEASE_POLICY_CHANGED.value,
            f"the policy changed (v{row.policy_version} -> v{policy}) while the request was served",
            "retry with a fresh request id",
        )
    return None


# Built once: per batch only parameters change (SQLAlchemy then skips building and coercing them).
_STANDING = select(nodes.c.node_id, nodes.c.state, nodes.c.lease_id, nodes.c.lease_expires_at).where(
    nodes.c.node_id.in_(bindparam("node_ids", expanding=True))
)
_KEYS = (
    select(
        keys.c.name,
        keys.c.state,
        keys.c.current_version,
        key_versions.c.version,
        key_versions.c.ciphertext.is_not(None).label("ciphertext_present"),
    )
    .join(key_versions, key_versions.c.key_name == keys.c.name)
    .where(keys.c.name.in_(bindparam("names", expanding=True)))
)
# both columns of the primary key, so SQLite looks the pairs up in its index
_SEEN = select(release_requests.c.node_id, release_requests.c.request_id).where(
    release_requests.c.node_id.in_(bindparam("node_ids", expanding=True)),
    release_requests.c.request_id.in_(bindparam("request_ids", expanding=True)),
)
_INSERT_REQUEST = insert(release_requests)


def commit_grants(conn: Connection, items: Sequence[PendingGrant], now: datetime) -> list[int | Refusal]:
    """Record every item whose premises hold; return its ledger sequence, or the reason it was refused."""
    node_ids = sorted({i.row.node_id for i in items})
    standing = {
        r.node_id: (r.state, r.lease_id, r.lease_expires_at)
        for r in conn.execute(_STANDING, {"node_ids": node_ids})
    }
    latest: dict[str, int] = {}
    key_state: dict[tuple[str, int], str] = {}
    for r in conn.execute(_KEYS, {"names": sorted({i.row.key_name for i in items})}):
        key_state[(r.name, r.version)] = r.state if r.ciphertext_present else "destroyed"
        latest[r.name] = r.current_version
    policy = active_version(conn)
    pairs = [(i.row.node_id, i.row.request_id.hex()) for i in items]
    wanted = set(pairs)
    seen = {
        (r.node_id, r.request_id)
        for r in conn.execute(_SEEN, {"node_ids": node_ids, "request_ids": sorted({rid for _, rid in pairs})})
        if (r.node_id, r.request_id) in wanted
    }
    outcome: list[int | Refusal] = []
    accepted: list[PendingGrant] = []
    for item, pair in zip(items, pairs, strict=True):
        refusal = _refusal(item, standing, key_state, latest, policy)
        if refusal is None and pair in seen:
            refusal = Refusal(
                Code.REQUEST_REPLAYED.value,
                "this request id was already used by the node",
                "every release request needs a fresh random 16-byte request_id",
            )
        if refusal is None:
            seen.add(pair)
            accepted.append(item)
            outcome.append(0)
        else:
            outcome.append(refusal)
    if not accepted:
        return outcome
    conn.execute(
        _INSERT_REQUEST,
        [
            {
                "node_id": i.row.node_id,
                "request_id": i.row.request_id.hex(),
                "keep_until": i.keep_request_until,
            }
            for i in accepted
        ],
    )
    it = iter(append_entries(conn, [grant_draft(i.row) for i in accepted], now))
    return [next(it) if o == 0 else o for o in outcome]


def purge_request_ids(conn: Connection, now: datetime) -> None:
    """Forget request ids whose timestamps can no longer pass the skew check."""
    conn.execute(delete(release_requests).where(release_requests.c.keep_until < now))


def grant_draft(row: GrantRow) -> Draft:
    fields: dict[str, object] = {
        "node_id": row.node_id,
        "key_name": row.key_name,
        "key_version": row.key_version,
        "purpose": row.purpose,
        "request_id": row.request_id.hex(),
        "bao_request_id": row.openbao_request_id,
        "bao_batch_index": row.bao_batch_index,
        "bao_batch_size": row.bao_batch_size,
        "lease_expiry": int(row.lease_expires_at.timestamp()),
        "policy_version": row.policy_version,
        "rule": row.rule,
    }
    return Draft(Kind.RELEASE_GRANT, node_actor(row.node_id), Decision.GRANT, (), fields)


def denial_draft(row: DenialRow) -> Draft:
    fields: dict[str, object] = {
        "node_id": row.node_id[:64],
        "key_name": row.key_name[:128],
        "purpose": row.purpose[:8],
        "request_id": row.request_id.hex()[:32],
    }
    if row.openbao_request_id:
        fields.update(
            bao_request_id=row.openbao_request_id,
            bao_batch_index=row.bao_batch_index,
            bao_batch_size=row.bao_batch_size,
        )
    reasons = tuple(Reason(c, m[:1024]) for c, m in ((row.code, row.message), *row.more_reasons))
    return Draft(Kind.RELEASE_DENY, node_actor(row.node_id[:64]), Decision.DENY, reasons, fields)


def insert_denial(conn: Connection, row: DenialRow) -> int:
    """Append the ``release.deny`` entry; returns its ledger sequence."""
    return append_entries(conn, [denial_draft(row)], row.denied_at)[0]
