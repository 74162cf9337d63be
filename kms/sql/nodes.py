"""SQL for the node registry (table ``nodes``): implements ``kms.domain.registry.NodeStore``. The only place
a node or a ``NodeChange`` is mapped to columns."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from attestation.coded import Reason
from kms.domain.registry import (
    KEEP,
    NodeChange,
    NodeRecord,
    NodeState,
    Transition,
    canonical_json,
    claims_digest,
)
from kms.errors import Code, KmsError
from kms.sql.control_schema import nodes
from kms.sql.policy_versions import active_version
from kms.sql.store import Store

if TYPE_CHECKING:
    from kms.audit.draft import Draft

AppendEntries = Callable[[Connection, Sequence["Draft"]], object]


def to_row(record: NodeRecord) -> dict[str, Any]:
    return {
        "node_id": record.node_id,
        "node_name": record.node_name,
        "state": record.state.value,
        "tee": record.tee,
        "kem_suite": record.kem_suite.hex(),
        "kem_public": record.kem_public,
        "signing_public": record.signing_public,
        "claims_json": canonical_json(record.claims),
        "claims_digest": record.claims_digest,
        "groups_json": json.dumps(list(record.groups)),
        "requested_groups_json": json.dumps(list(record.requested_groups)),
        "reasons_json": json.dumps([r.to_dict() for r in record.reasons]),
        "evidence_time": record.evidence_time,
        "lease_id": record.lease_id,
        "lease_issued_at": record.lease_issued_at,
        "lease_expires_at": record.lease_expires_at,
        "policy_version": record.policy_version,
        "registered_at": record.registered_at,
        "attested_at": record.attested_at,
        "state_changed_at": record.state_changed_at,
    }


def from_row(row: Row[Any]) -> NodeRecord:
    m = row._mapping
    return NodeRecord(
        node_id=m["node_id"],
        node_name=m["node_name"],
        state=NodeState(m["state"]),
        tee=m["tee"],
        kem_suite=bytes.fromhex(m["kem_suite"]),
        kem_public=bytes(m["kem_public"]),
        signing_public=bytes(m["signing_public"]),
        claims=json.loads(m["claims_json"]),
        claims_digest=m["claims_digest"],
        groups=tuple(json.loads(m["groups_json"])),
        requested_groups=tuple(json.loads(m["requested_groups_json"])),
        reasons=tuple(
            Reason(r["code"], r["message"], r.get("hint", "")) for r in json.loads(m["reasons_json"])
        ),
        evidence_time=m["evidence_time"],
        lease_id=m["lease_id"],
        lease_issued_at=m["lease_issued_at"],
        lease_expires_at=m["lease_expires_at"],
        policy_version=m["policy_version"],
        registered_at=m["registered_at"],
        attested_at=m["attested_at"],
        state_changed_at=m["state_changed_at"],
    )


def load(conn: Connection, node_id: str) -> NodeRecord | None:
    row = conn.execute(select(nodes).where(nodes.c.node_id == node_id)).first()
    return from_row(row) if row is not None else None


def change_columns(change: NodeChange) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": change.state.value,
        "reasons_json": canonical_json([r.to_dict() for r in change.reasons]),
    }
    if change.state_changed_at is not KEEP:
        values["state_changed_at"] = change.state_changed_at
    if change.groups is not KEEP:
        values["groups_json"] = canonical_json(list(change.groups))
    if change.lease is not KEEP:
        lease = change.lease
        values["lease_id"] = lease.lease_id if lease else None
        values["lease_issued_at"] = lease.issued_at if lease else None
        values["lease_expires_at"] = lease.expires_at if lease else None
    if change.evidence is not KEEP:
        values["claims_json"] = canonical_json(change.evidence.claims)
        values["claims_digest"] = claims_digest(change.evidence.claims)
        values["evidence_time"] = change.evidence.verified_at
        values["attested_at"] = change.evidence.verified_at
    if change.policy_version is not KEEP:
        values["policy_version"] = change.policy_version
    return values


def apply_change(conn: Connection, node_id: str, change: NodeChange) -> None:
    """Write ``change`` inside the caller's transaction."""
    conn.execute(update(nodes).where(nodes.c.node_id == node_id).values(**change_columns(change)))


class SqlNodes:
    def __init__(self, store: Store, append: AppendEntries | None = None) -> None:
        """``append``: the audit ledger's in-transaction append, for ``apply(..., entry=...)``."""
        self._store = store
        self._append = append

    def insert(self, record: NodeRecord) -> None:
        with self._store.transaction() as conn:
            taken = conn.execute(
                select(nodes.c.node_id).where(nodes.c.signing_public == record.signing_public)
            ).first()
            if taken is not None:
                raise KmsError(
                    "these node keys are already registered (or were revoked)",
                    code=Code.NODE_KEYS_IN_USE,
                    hint="a registered node re-attests with Renew; a new registration needs fresh keys",
                )
            conn.execute(insert(nodes).values(**to_row(record)))

    def get(self, node_id: str) -> NodeRecord | None:
        with self._store.reader() as conn:
            return load(conn, node_id)

    def apply(
        self,
        node_id: str,
        transition: Transition,
        *,
        entry: Callable[[NodeRecord, NodeRecord], Draft] | None = None,
        policy_version: int | None = None,
    ) -> NodeRecord:
        """See ``kms.domain.registry.NodeStore.apply``."""
        with self._store.transaction() as conn:
            if policy_version is not None and active_version(conn) != policy_version:
                raise KmsError(
                    f"the active policy changed from version {policy_version} while this was checked",
                    code=Code.POLICY_VERSION_CONFLICT,
                    hint="retry: the node is checked again under the new policy",
                )
            current = load(conn, node_id)
            if current is None:
                raise not_found(node_id)
            apply_change(conn, node_id, transition(current))
            updated = load(conn, node_id)
            assert updated is not None
            if entry is not None and self._append is not None:
                self._append(conn, [entry(current, updated)])
            return updated

    def list(self, states: Sequence[NodeState], offset: int, limit: int) -> list[NodeRecord]:
        query = select(nodes).order_by(nodes.c.registered_at, nodes.c.node_id).offset(offset).limit(limit)
        if states:
            query = query.where(nodes.c.state.in_([s.value for s in states]))
        with self._store.reader() as conn:
            return [from_row(r) for r in conn.execute(query)]


def not_found(node_id: str) -> KmsError:
    return KmsError(
        f"no node with id {node_id[:64]!r}",
        code=Code.NODE_NOT_FOUND,
        hint="list nodes with the Admin API, or register again",
    )


@dataclass(frozen=True)
class StoredClaims:
    """What a re-appraisal reads of a live node: its standing and stored claims, nothing else."""

    node_id: str
    state: NodeState
    claims: dict[str, Any]
    groups: tuple[str, ...]
    requested_groups: tuple[str, ...]
    reason_codes: frozenset[str]


def live_claims(conn: Connection, page: int) -> Iterator[list[StoredClaims]]:
    """Every node not revoked, in registration order, ``page`` rows at a time: one
    query whose rows are fetched as they are used, so memory holds one page, not the registry."""
    c = nodes.c
    query = (
        select(c.node_id, c.state, c.claims_json, c.groups_json, c.requested_groups_json, c.reasons_json)
        .where(c.state != NodeState.REVOKED.value)
        .order_by(c.registered_at, c.node_id)
    )
    result = conn.execute(query.execution_options(yield_per=page))  # this statement only, not the connection
    for rows in result.partitions():
        yield [
            StoredClaims(
                node_id=r.node_id,
                state=NodeState(r.state),
                claims=json.loads(r.claims_json),
                groups=_json_tuple(r.groups_json),
                requested_groups=_json_tuple(r.requested_groups_json),
                reason_codes=frozenset(x["code"] for x in _json_tuple(r.reasons_json)),
            )
            for r in rows
        ]


def _json_tuple(text: str) -> tuple[Any, ...]:
    """A stored JSON list; most are empty, which a re-appraisal of every node should not parse."""
    return () if text == "[]" else tuple(json.loads(text))


def load_many(conn: Connection, node_ids: Sequence[str], chunk: int = 500) -> dict[str, NodeRecord]:
    """The records of ``node_ids`` (the ones that exist), ``chunk`` ids per query."""
    found: dict[str, NodeRecord] = {}
    for i in range(0, len(node_ids), chunk):
        query = select(nodes).where(nodes.c.node_id.in_(node_ids[i : i + chunk]))
        found.update((r.node_id, from_row(r)) for r in conn.execute(query))
    return found


def apply_changes(conn: Connection, changes: Sequence[tuple[str, NodeChange]]) -> None:
    """Write many changes inside the caller's transaction: one executemany per set of columns written
    (the same columns ``apply_change`` writes for each)."""
    batches: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for node_id, change in changes:
        values = change_columns(change)
        row = {"b_node_id": node_id, **{f"b_{name}": value for name, value in values.items()}}
        batches.setdefault(tuple(sorted(values)), []).append(row)
    for columns, rows in batches.items():
        statement = (
            update(nodes)
            .where(nodes.c.node_id == bindparam("b_node_id"))
            .values({name: bindparam(f"b_{name}") for name in columns})
        )
        conn.execute(statement, rows)


def count_by_state(conn: Connection) -> dict[tuple[str, str], int]:
    """Nodes per (state, tee), for metrics."""
    rows = conn.execute(select(nodes.c.state, nodes.c.tee, func.count()).group_by(nodes.c.state, nodes.c.tee))
    return {(str(state), str(tee)): int(count) for state, tee, count in rows}


def leases_expiring(conn: Connection, now: datetime, within: Sequence[timedelta]) -> dict[timedelta, int]:
    """Attested nodes whose lease ends within each horizon of ``within`` (already expired ones excluded)."""
    c = nodes.c
    out = {}
    for horizon in within:
        query = select(func.count()).where(
            c.state == NodeState.ATTESTED.value, c.lease_expires_at > now, c.lease_expires_at <= now + horizon
        )
        out[horizon] = int(conn.execute(query).scalar_one())
    return out
