"""SQL for the audit ledger: the head row, entries, subtree hashes and checkpoints (``audit_schema``).

Only SQLAlchemy Core; every write runs inside a transaction the caller owns (the release batch, the
group commit, an admin change), so an entry commits together with what it records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection

from kms.audit.checkpoint import Checkpoint, format_transit_signature, parse_transit_signature
from kms.audit.entry import Kind
from kms.audit.merkle import HASH_SIZE
from kms.sql.audit_schema import audit_checkpoints, audit_entries, audit_head, audit_nodes


@dataclass(frozen=True)
class Head:
    size: int
    frontier: tuple[bytes, ...]


@dataclass(frozen=True)
class EntryFilter:
    node_id: str = ""
    key_name: str = ""
    node_name: str = ""  # nodes registered under this name, from registration/renewal entries
    key_prefix: str = ""  # key names starting with this text
    decision: str = ""  # "grant", "deny" or "" for any
    reason_code: str = ""
    start_time: str = ""  # entry time text, inclusive
    end_time: str = ""  # exclusive


@dataclass(frozen=True)
class StoredEntry:
    seq: int
    canonical: bytes
    leaf_hash: bytes


_HEAD = select(audit_head.c.size, audit_head.c.frontier).where(audit_head.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_SET_HEAD = update(audit_head).where(audit_head.c.id == 1)
_INSERT_ENTRY = insert(audit_entries)
_INSERT_NODE = insert(audit_nodes)
_NODE = select(audit_nodes.c.hash).where(
    audit_nodes.c.level == bindparam("level"), audit_nodes.c.idx == bindparam("idx")
)
_LEAF = select(audit_entries.c.leaf_hash).where(audit_entries.c.seq == bindparam("seq"))


def read_head(conn: Connection, *, for_update: bool = False) -> Head:
    row = conn.execute(_HEAD_FOR_UPDATE if for_update else _HEAD).one()
    blob = bytes(row.frontier)
    return Head(int(row.size), tuple(blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)))


def write_head(conn: Connection, head: Head) -> None:
    conn.execute(_SET_HEAD, {"size": head.size, "frontier": b"".join(head.frontier)})


def insert_entries(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_INSERT_ENTRY, list(rows))


def insert_nodes(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_INSERT_NODE, list(rows))


def node_hash_at(conn: Connection, level: int, index: int) -> bytes | None:
    if level == 0:
        value = conn.execute(_LEAF, {"seq": index}).scalar()
    else:
        value = conn.execute(_NODE, {"level": level, "idx": index}).scalar()
    return bytes(value) if value is not None else None


_SLOTS = 32  # (level, idx) pairs per node lookup: one fixed statement, compiled once
_NODES = select(audit_nodes.c.level, audit_nodes.c.idx, audit_nodes.c.hash).where(
    or_(
        *(
            and_(audit_nodes.c.level == bindparam(f"l{i}"), audit_nodes.c.idx == bindparam(f"i{i}"))
            for i in range(_SLOTS)
        )
    )
)
_LEAVES = select(audit_entries.c.seq, audit_entries.c.leaf_hash).where(
    audit_entries.c.seq.in_(bindparam("seqs", expanding=True))
)


# PostgreSQL: leaves and nodes in one round trip, the nodes joined to two arrays (a nested loop over the
# primary key, planned in the same way whatever the count; a 32-way OR took three times as long there)
_PG_HASHES = text(
    "SELECT n.level, n.idx, n.hash FROM audit_nodes n"
    " JOIN unnest(CAST(:levels AS integer[]), CAST(:idxs AS bigint[])) AS w(level, idx)"
    " ON n.level = w.level AND n.idx = w.idx"
    " UNION ALL SELECT 0, e.seq, e.leaf_hash FROM audit_entries e WHERE e.seq = ANY(CAST(:seqs AS bigint[]))"
)


def node_hashes(conn: Connection, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored hashes of these (level, index) subtrees; what is not stored is absent from the result.

    PostgreSQL: one statement (``_PG_HASHES``). SQLite: leaves from the entries in one statement, the rest
    from ``audit_nodes`` in one statement per 32 (a proof at 10M entries needs fewer than 32 nodes that
    are not cached), a constant OR of ``(level = ? AND idx = ?)`` terms (unused slots ask for index -1)
    answered from the primary key; a row-value ``(level, idx) IN (...)`` makes SQLite scan the table, and
    an expression built per call costs more to compile than the lookup itself."""
    leaves = sorted({index for level, index in wanted if level == 0})
    nodes = sorted({(level, index) for level, index in wanted if level > 0})
    found: dict[tuple[int, int], bytes] = {}
    if conn.dialect.name == "postgresql":
        arrays = {"levels": [lv for lv, _ in nodes], "idxs": [ix for _, ix in nodes], "seqs": leaves}
        for level, index, value in conn.execute(_PG_HASHES, arrays):
            found[(int(level), int(index))] = bytes(value)
        return found
    if leaves:
        for seq, value in conn.execute(_LEAVES, {"seqs": leaves}):
            found[(0, int(seq))] = bytes(value)
    for chunk in range(0, len(nodes), _SLOTS):
        params: dict[str, int] = {}
        for i in range(_SLOTS):
            level, index = nodes[chunk + i] if chunk + i < len(nodes) else (0, -1)
            params[f"l{i}"], params[f"i{i}"] = level, index
        for level, index, value in conn.execute(_NODES, params):
            found[(int(level), int(index))] = bytes(value)
    return found


def latest_checkpoint_size(conn: Connection) -> int | None:
    """The size of the latest signed checkpoint (None: none yet), without reading its signature."""
    size = conn.execute(select(func.max(audit_checkpoints.c.size))).scalar()
    return int(size) if size is not None else None


def upper_nodes(conn: Connection, from_level: int) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Every stored subtree hash at ``from_level`` (>= 1) and above (a range of the primary key)."""
    n = audit_nodes.c
    for level, index, value in conn.execute(select(n.level, n.idx, n.hash).where(n.level >= from_level)):
        yield (int(level), int(index)), bytes(value)


def entry_count(conn: Connection) -> tuple[int, int]:
    """(number of entries, highest seq + 1)."""
    row = conn.execute(select(func.count(), func.max(audit_entries.c.seq))).one()
    return int(row[0]), (int(row[1]) + 1 if row[1] is not None else 0)


def entries_range(conn: Connection, start: int, end: int, batch: int = 2048) -> Iterator[StoredEntry]:
    """Entries with start <= seq < end in order, read ``batch`` at a time."""
    cursor = start
    while cursor < end:
        rows = conn.execute(
            select(audit_entries.c.seq, audit_entries.c.canonical, audit_entries.c.leaf_hash)
            .where(audit_entries.c.seq >= cursor, audit_entries.c.seq < min(end, cursor + batch))
            .order_by(audit_entries.c.seq)
        ).all()
        if not rows:
            return
        for r in rows:
            yield StoredEntry(int(r.seq), bytes(r.canonical), bytes(r.leaf_hash))
        cursor = int(rows[-1].seq) + 1


def _nodes_named(conn: Connection, name: str) -> list[str]:
    """The node ids the ledger's registration and renewal entries give ``name``. The canonical bytes are
    RFC 8785, so the field appears exactly as ``"node_name":<JSON string>`` (RFC 8785 writes strings as
    ``json.dumps`` does with ``ensure_ascii=False``); the kind narrows the scan."""
    c = audit_entries.c
    needle = b'"node_name":' + json.dumps(name, ensure_ascii=False).encode()
    rows = conn.execute(
        select(c.node_id, c.canonical).where(
            c.kind.in_([Kind.REGISTRATION.value, Kind.NODE_RENEW.value]), c.node_id.is_not(None)
        )
    ).all()
    return sorted({str(r.node_id) for r in rows if r.node_id and needle in bytes(r.canonical)})


def query_entries(conn: Connection, where: EntryFilter, after: int, limit: int) -> list[StoredEntry]:
    c = audit_entries.c
    conditions = [c.seq >= after]
    if where.node_id:
        conditions.append(c.node_id == where.node_id)
    if where.key_name:
        conditions.append(c.key_name == where.key_name)
    if where.key_prefix:
        conditions.append(c.key_name.startswith(where.key_prefix, autoescape=True))
    if where.node_name:
        conditions.append(c.node_id.in_(_nodes_named(conn, where.node_name)))
    if where.decision:
        conditions.append(c.decision == where.decision)
    if where.reason_code:
        conditions.append(c.reason_codes.contains(f" {where.reason_code} ", autoescape=True))
    if where.start_time:
        conditions.append(c.time >= where.start_time)
    if where.end_time:
        conditions.append(c.time < where.end_time)
    rows = conn.execute(
        select(c.seq, c.canonical, c.leaf_hash).where(and_(*conditions)).order_by(c.seq).limit(limit)
    ).all()
    return [StoredEntry(int(r.seq), bytes(r.canonical), bytes(r.leaf_hash)) for r in rows]


def bao_request_ids(conn: Connection, kinds: Sequence[str]) -> list[tuple[int, str, bytes]]:
    """(seq, OpenBao request id, canonical) of every entry of these kinds that carries one."""
    c = audit_entries.c
    rows = conn.execute(
        select(c.seq, c.bao_request_id, c.canonical)
        .where(c.kind.in_(list(kinds)), c.bao_request_id.is_not(None))
        .order_by(c.seq)
    )
    return [(int(r.seq), str(r.bao_request_id), bytes(r.canonical)) for r in rows]


# --- checkpoints


def insert_checkpoint(conn: Connection, cp: Checkpoint) -> None:
    conn.execute(
        insert(audit_checkpoints).values(
            size=cp.size,
            root=cp.root,
            time=cp.time,
            key_id=cp.key_id,
            signature=format_transit_signature(cp.signature),
        )
    )


def _checkpoint(row: Row[Any]) -> Checkpoint:
    return Checkpoint(
        int(row.size), bytes(row.root), str(row.time), str(row.key_id), parse_transit_signature(row.signature)
    )


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    row = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.size.desc()).limit(1)).first()
    return _checkpoint(row) if row is not None else None


def checkpoint_at(conn: Connection, size: int) -> Checkpoint | None:
    row = conn.execute(select(audit_checkpoints).where(audit_checkpoints.c.size == size)).first()
    return _checkpoint(row) if row is not None else None


def checkpoints_between(conn: Connection, low: int, high: int) -> list[Checkpoint]:
    """Checkpoints with low < size <= high, by size."""
    c = audit_checkpoints.c
    rows = conn.execute(select(audit_checkpoints).where(c.size > low, c.size <= high).order_by(c.size))
    return [_checkpoint(r) for r in rows]


def checkpoints_range(conn: Connection, low: int, high: int, batch: int = 2048) -> Iterator[Checkpoint]:
    """Checkpoints with low < size <= high, by size, read ``batch`` at a time: a ledger signs one every
    few hundred entries, so an export of all of them must not hold them in memory at once."""
    c = audit_checkpoints.c
    after = low
    while True:
        rows = conn.execute(
            select(audit_checkpoints).where(c.size > after, c.size <= high).order_by(c.size).limit(batch)
        ).all()
        for r in rows:
            yield _checkpoint(r)
        if len(rows) < batch:
            return
        after = int(rows[-1].size)
