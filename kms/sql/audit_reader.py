"""Reading the stored ledger: filtered listing, checkpoints, proofs, export, and the check on start.

``recover`` runs before the server serves: it checks that the entries are gap-free and as many as the
head says, that the head's compact range is the stored subtree hashes, that the stored tree reproduces
the latest signed checkpoint's root, and it re-hashes every entry after that checkpoint from its bytes.
If subtree hashes are missing or wrong it rebuilds them from the entries' bytes and checks again; what
still disagrees with a signed checkpoint is ``AUDIT_LEDGER_CORRUPT`` (fail closed: do not serve).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.engine import Connection

from kms.audit.checkpoint import Checkpoint
from kms.audit.entry import Entry
from kms.audit.errors import AuditError, ProofInvalid
from kms.audit.merkle import (
    CompactRange,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    range_hash,
)
from kms.errors import Code
from kms.sql.audit_append import ledger_corrupt
from kms.sql.audit_hashes import SubtreeCache, stored_hashes, warm
from kms.sql.audit_ledger import (
    EntryFilter,
    Head,
    StoredEntry,
    checkpoint_at,
    checkpoints_range,
    entries_range,
    entry_count,
    insert_nodes,
    latest_checkpoint,
    latest_checkpoint_size,
    node_hash_at,
    query_entries,
    read_head,
    write_head,
)
from kms.sql.audit_schema import audit_nodes
from kms.sql.store import Store

MAX_PAGE = 1000
DEFAULT_PAGE = 100
# Rows an export reads per statement: what it holds at once, whatever the ledger's size (psycopg buffers
# a statement's whole result client-side). Entries ~1.5 KiB each as rows and objects; checkpoints ~0.8 KiB,
# one per few hundred entries, so a page of them spans a quarter of a million entries or more.
EXPORT_BATCH = 2048
CHECKPOINT_BATCH = 256


class DbHashStore:
    """``merkle.HashStore`` over the stored leaf and subtree hashes (one lookup per hash)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def node(self, level: int, index: int) -> bytes:
        value = node_hash_at(self._conn, level, index)
        if value is None:
            raise ProofInvalid(f"no stored subtree hash at level {level} index {index}")
        return value


@dataclass(frozen=True)
class Recovery:
    size: int
    root: bytes
    checkpoint_size: int  # the latest signed checkpoint the stored tree was checked against
    rehashed: int  # entries after it whose bytes were hashed again
    rebuilt: bool  # subtree hashes were recomputed from the entries


def not_found(message: str) -> AuditError:
    return AuditError(message, code=Code.AUDIT_NOT_FOUND)


def frontier_at(store: DbHashStore, size: int) -> tuple[bytes, ...]:
    """The compact range of the first ``size`` leaves, from stored subtree hashes."""
    out, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append(store.node(level, start >> level))
            start += 1 << level
    return tuple(out)


def recover(store: Store) -> Recovery:
    with store.transaction() as conn:
        try:
            return _check(conn, rebuilt=False)
        except ProofInvalid:  # the tree hashes or the head disagree with the entries: rebuild them
            pass
        _rebuild(conn)
        try:
            return _check(conn, rebuilt=True)
        except ProofInvalid as err:
            raise ledger_corrupt(f"after rebuilding the tree: {err.message}") from None


def _check(conn: Connection, *, rebuilt: bool) -> Recovery:
    head = read_head(conn, for_update=True)
    count, top = entry_count(conn)
    if count != top:
        raise ledger_corrupt(f"the ledger has a gap: {count} entries but the highest seq is {top - 1}")
    if head.size != count:
        raise ProofInvalid(f"the tree head says {head.size} entries, the table holds {count}")
    hashes = DbHashStore(conn)
    if frontier_at(hashes, head.size) != head.frontier:
        raise ProofInvalid("the stored head does not match the stored subtree hashes")
    cp = latest_checkpoint(conn)
    start = 0
    if cp is not None:
        if cp.size > head.size:
            raise ledger_corrupt(f"checkpoint of size {cp.size} is beyond the ledger's {head.size} entries")
        root = range_hash(hashes, 0, cp.size) if cp.size else CompactRange().root()
        if root != cp.root:
            raise ProofInvalid(f"the stored tree does not reproduce the signed root of size {cp.size}")
        start = cp.size
    tree = CompactRange(start, frontier_at(hashes, start))
    for stored in entries_range(conn, start, head.size):
        _rehash(stored)
        tree.append(stored.leaf_hash)
    if tree.hashes != head.frontier:
        raise ProofInvalid("the entries after the last checkpoint do not hash to the stored head")
    return Recovery(head.size, tree.root(), start, head.size - start, rebuilt)


def _rehash(stored: StoredEntry) -> None:
    try:
        entry = Entry.decode(stored.canonical)
    except AuditError:
        raise ledger_corrupt(f"entry {stored.seq} is not a canonical entry") from None
    if entry.seq != stored.seq or leaf_hash(stored.canonical) != stored.leaf_hash:
        raise ledger_corrupt(f"entry {stored.seq} does not match its stored sequence number or leaf hash")


def _rebuild(conn: Connection) -> None:
    """Recompute every subtree hash and the head from the entries' bytes."""
    count, _ = entry_count(conn)
    conn.execute(delete(audit_nodes))
    tree = CompactRange()
    batch: list[dict[str, object]] = []
    for stored in entries_range(conn, 0, count):
        _rehash(stored)
        batch.extend({"level": lv, "idx": ix, "hash": h} for lv, ix, h in tree.append(stored.leaf_hash) if lv)
        if len(batch) >= 4096:
            insert_nodes(conn, batch)
            batch = []
    insert_nodes(conn, batch)
    write_head(conn, Head(tree.size, tree.hashes))


class LedgerReader:
    """Read-only views of the stored ledger for the Audit RPCs. Made after ``recover`` (its subtree-hash
    cache would not see a rebuild); ``warm`` loads the tree's upper levels, as the server does at start."""

    def __init__(self, store: Store, cache: SubtreeCache | None = None) -> None:
        self._store = store
        self._cache = cache if cache is not None else SubtreeCache()
        self._signed = 0  # the largest checkpoint size seen

    def warm(self) -> int:
        """Load the upper levels of the tree into the subtree-hash cache; returns how many hashes."""
        with self._store.reader() as conn:
            return warm(conn, self._cache, read_head(conn).size)

    def head(self) -> tuple[int, bytes]:
        with self._store.reader() as conn:
            head = read_head(conn)
        return head.size, CompactRange(head.size, head.frontier).root()

    def list_entries(
        self, where: EntryFilter, page_size: int, page_token: str
    ) -> tuple[list[StoredEntry], str]:
        """A page in sequence order; the token is the next sequence number to look at (decimal)."""
        if page_token and (len(page_token) > 15 or not page_token.isdigit()):
            raise AuditError("page_token is not a token this server issued", code=Code.REQUEST_INVALID)
        size = DEFAULT_PAGE if page_size == 0 else min(page_size, MAX_PAGE)
        with self._store.reader() as conn:
            rows = query_entries(conn, where, int(page_token or 0), size)
        return rows, str(rows[-1].seq + 1) if len(rows) == size else ""

    def checkpoint(self, size: int = 0) -> Checkpoint:
        with self._store.reader() as conn:
            cp = latest_checkpoint(conn) if size == 0 else checkpoint_at(conn, size)
        if cp is None:
            raise not_found("no checkpoint yet" if size == 0 else f"no checkpoint of tree size {size}")
        return cp

    def _within_latest(self, conn: Connection, size: int) -> None:
        if size <= self._signed:  # checkpoints are never removed: a size once covered stays covered
            return
        latest = latest_checkpoint_size(conn)
        self._signed = max(self._signed, latest or 0)
        if latest is None:
            raise not_found("no checkpoint yet")
        if size > latest:
            raise AuditError(
                f"tree size {size} is beyond the latest checkpoint ({latest})",
                code=Code.AUDIT_NOT_FOUND,
            )

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """PATH(index, size): one snapshot, the hashes it needs read at once (upper levels cached)."""
        with self._store.reader() as conn:
            self._within_latest(conn, size)
            wanted = inclusion_nodes(index, size)
            return inclusion_proof(stored_hashes(conn, self._cache, wanted), index, size)

    def consistency(self, first: int, second: int) -> list[bytes]:
        with self._store.reader() as conn:
            self._within_latest(conn, second)
            if first <= 0:
                raise ProofInvalid("first_size must be > 0")
            wanted = consistency_nodes(first, second)
            return consistency_proof(stored_hashes(conn, self._cache, wanted), first, second)

    def export(self, start: int, end: int) -> Iterator[StoredEntry | Checkpoint]:
        """Entries [start, end) with every checkpoint in (start, end] after the entry completing it;
        ``end`` = 0: the latest checkpoint. One read snapshot for the whole stream."""
        with self._store.reader() as conn:
            final = latest_checkpoint(conn) if end == 0 else checkpoint_at(conn, end)
            if final is None:
                raise not_found("no checkpoint yet" if end == 0 else f"no checkpoint of tree size {end}")
            if start > final.size:
                raise AuditError(f"start {start} is beyond the end {final.size}", code=Code.REQUEST_INVALID)
            pending = checkpoints_range(conn, start, final.size, CHECKPOINT_BATCH)
            nxt = next(pending, None)
            for stored in entries_range(conn, start, final.size, EXPORT_BATCH):
                yield stored
                while nxt is not None and nxt.size == stored.seq + 1:
                    yield nxt
                    nxt = next(pending, None)
