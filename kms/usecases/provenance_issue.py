"""Issuing provenance statements (Audit ``GetProvenance``): gather, prove, sign, in batches, and store them.

A statement about an output can be issued once a signed checkpoint covers the output's ``model.output``
entry. The issuer's thread (``start``) watches the latest checkpoint; when a new one is signed it issues,
as one batch, a statement for every output that checkpoint covers and that has none yet, and stores them
(``kms.sql.provenance``). ``issue`` (``GetProvenance``) serves the stored statement. It issues one on
demand, and stores it, only when none is stored (the output was checkpointed a moment ago, or no thread
runs) or when the node was revoked after the stored statement's checkpoint: a statement lists the node's
revocations up to its checkpoint, so then a new one is proved against the latest checkpoint.

One batch, for the latest checkpoint and the outputs it covers:

- the entries of every node among the outputs and the ``policy.change`` entries, in one query (decoded
  once; decoded entries are remembered across batches, an entry never changes);
- ``kms.provenance.lineage.derive`` per output; a node's stored claims read only when the claims its
  registration entry names are not remembered yet (by digest, with their encoding);
- each entry's inclusion proof computed once per batch (the Merkle subtree hashes remembered across
  batches), and each entry's RFC 8785 encoding made once and spliced into every statement including it;
- one transit ``sign_batch`` per ``SIGN_BATCH`` statements, through the ``Transit`` port, with the
  latest version of ``sovereign-provenance`` (Ed25519; the version is written inside the signed payload);
  every signature is checked with the public key before it is kept;
- one transaction that stores the statements.

Cost (bench/bench_provenance.py, docs/provenance.md): every batch's wall-clock and thread CPU seconds,
from reading the checkpoint to the stored statements, are counted with the number of statements it issued
(``IssueStats``, and the ``sovereign_provenance_*`` metrics), so the cost of one statement is its batch's
cost divided by the batch's statements.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.audit.checkpoint import Checkpoint
from kms.audit.entry import Entry, format_time
from kms.audit.merkle import inclusion_proof
from kms.clock import Clock
from kms.domain.transit import AUDIT_KEY_NAME, SigningKeys, Transit
from kms.errors import Code, KmsError, OpenBaoError
from kms.provenance.lineage import Lineage, LineageInvalid, derive
from kms.provenance.statement import (
    KEY_NAME,
    ProvenEntry,
    build_statement,
    claims_digest,
    encode_claims,
    encode_statement,
    encode_text,
    pae,
    signed_envelope,
)
from kms.sql.audit_ledger import latest_checkpoint
from kms.sql.audit_reader import DbHashStore
from kms.sql.nodes import SqlNodes
from kms.sql.outputs import output_by_digest
from kms.sql.provenance import (
    StoredStatement,
    lineage_entries,
    outputs_without_statement,
    revoked_between,
    store_statements,
    stored_statement,
)
from kms.sql.store import Store

log = logging.getLogger("sovereign.provenance")

KEY_TTL = 10.0  # seconds the provenance key's latest version is remembered
HASH_CACHE = 1 << 16  # subtree hashes remembered across batches (~ 6 MB)
ENTRY_CACHE = 1 << 15  # decoded entries and their encoded text remembered across batches
CLAIMS_CACHE = 4096  # verified claims (by digest) and their encoding remembered across batches
INTERVAL = 0.25  # seconds between looks at the latest checkpoint
BATCH = 512  # outputs in one batch at most (a longer backlog is issued in several)
SIGN_BATCH = 128  # statements in one transit sign request

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Issued:
    envelope: bytes
    output_sequence: int


@dataclass(frozen=True)
class IssueStats:
    """Statements issued by this issuer, the batches they came in, and the time spent issuing them."""

    statements: int = 0
    batches: int = 0
    seconds: float = 0.0  # wall clock, reading the checkpoint to storing the statements
    cpu_seconds: float = 0.0  # CPU time of the issuing thread over the same span


IssueObserver = Callable[[int, float, float], None]
"""(statements, wall seconds, CPU seconds) of each batch, for metrics."""


def _not_found(sha256: str) -> KmsError:
    return KmsError(f"no recorded output has SHA-256 {sha256}", code=Code.PROVENANCE_OUTPUT_NOT_FOUND)


def _signer_failed(message: str) -> KmsError:
    return KmsError(message, code=Code.PROVENANCE_SIGNER_FAILED)


class _Lru(Generic[K, V]):
    """A bounded map, least recently used out; safe to share between threads."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._seen: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._seen.get(key)
            if value is not None:
                self._seen.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._seen[key] = value
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)


class SubtreeHashes(_Lru[tuple[int, int], bytes]):
    """Stored subtree hashes, remembered across batches. Safe to share: a stored hash covers a complete,
    aligned leaf range of the append-only ledger and never changes."""

    def __init__(self, limit: int = HASH_CACHE) -> None:
        super().__init__(limit)

    def over(self, inner: DbHashStore) -> _Memo:
        return _Memo(self, inner)


class _Memo:
    """A ``merkle.HashStore`` over the database that asks the shared cache first."""

    def __init__(self, cache: SubtreeHashes, inner: DbHashStore) -> None:
        self._cache = cache
        self._inner = inner

    def node(self, level: int, index: int) -> bytes:
        key = (level, index)
        value = self._cache.get(key)
        if value is None:
            value = self._inner.node(level, index)
            self._cache.put(key, value)
        return value


@dataclass(frozen=True)
class _Decoded:
    entry: Entry
    canonical: bytes
    text: bytes  # RFC 8785 encoding of the canonical bytes as a JSON string


@dataclass(frozen=True)
class _Claims:
    claims: dict[str, Any]  # a node's verified claims
    encoded: bytes  # their RFC 8785 encoding


@dataclass(frozen=True)
class _Unsigned:
    output_seq: int
    payload: bytes


@dataclass
class _Batch:
    """What the statements of one batch share."""

    checkpoint: Checkpoint
    version: int
    issued_at: str
    hashes: _Memo
    proven: dict[int, ProvenEntry] = field(default_factory=dict)  # by sequence, proof included


class ProvenanceIssuer:
    def __init__(
        self,
        store: Store,
        transit: Transit,
        clock: Clock,
        *,
        interval: float = INTERVAL,
        batch: int = BATCH,
        observe: IssueObserver | None = None,
    ) -> None:
        self._store = store
        self._nodes = SqlNodes(store)
        self._transit = transit
        self._clock = clock
        self._interval = interval
        self._batch = batch
        self._observe = observe
        self._lock = threading.Lock()
        self._issuing = threading.Lock()  # one batch at a time: the thread's or an on-demand one
        self._latest: tuple[float, SigningKeys] | None = None
        self._hashes = SubtreeHashes()
        self._decoded: _Lru[int, _Decoded] = _Lru(ENTRY_CACHE)
        self._claims_seen: _Lru[str, _Claims] = _Lru(CLAIMS_CACHE)
        self._stats = IssueStats()
        self._next = 0  # the thread has looked at every output entry below this sequence
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Issue statements in the background whenever a new checkpoint covers outputs without one."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="provenance-issuer", daemon=True)
                self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                while not self._stop.is_set() and self._next_batch() is not None:
                    pass
            except KmsError as err:  # OpenBao or the database unavailable: try again on the next look
                log.warning("issuing provenance statements failed (%s): %s", err.code, err.message)
            except Exception as exc:  # the thread must outlive any one failure
                log.error("issuing provenance statements failed: %s", type(exc).__name__)

    def issue_pending(self) -> int:
        """Issue and store a statement for every output the latest checkpoint covers that has none yet
        (in batches of at most ``batch``); returns how many were stored."""
        stored = 0
        while (issued := self._next_batch()) is not None:
            stored += issued
        return stored

    def _next_batch(self) -> int | None:
        """One batch of outputs without a statement; how many were stored, None if there were none."""
        with self._store.reader() as conn:
            checkpoint = latest_checkpoint(conn)
            if checkpoint is None:
                return None
            pending = outputs_without_statement(conn, self._next, checkpoint.size, self._batch)
        if not pending:
            self._next = max(self._next, checkpoint.size)
            return None
        outputs = [Entry.decode(c) for c in pending]
        stored = 0
        for seq, result in self._issue_batch(outputs).items():
            if isinstance(result, KmsError):  # issued on demand (GetProvenance) later, if ever possible
                log.warning("no statement for output entry %d (%s): %s", seq, result.code, result.message)
            else:
                stored += 1
        self._next = max(self._next, outputs[-1].seq + 1)
        return stored

    def stats(self) -> IssueStats:
        with self._lock:
            return self._stats

    # -- keys ---------------------------------------------------------------------------------------

    def _read_key(self, name: str) -> SigningKeys:
        try:
            return self._transit.signing_keys(name)
        except OpenBaoError as err:
            raise _signer_failed(f"cannot read the transit key {name}: {err.message}") from None

    def _signing_key(self) -> SigningKeys:
        """The provenance key's latest version and public keys, re-read every ``KEY_TTL`` seconds (a
        rotation is picked up within that; a transit sign with a stale version still verifies)."""
        now = time.monotonic()
        with self._lock:
            if self._latest is not None and now - self._latest[0] <= KEY_TTL:
                return self._latest[1]
        keys = self._read_key(KEY_NAME)
        with self._lock:
            self._latest = (now, keys)
        return keys

    def signing_keys(self) -> dict[str, dict[int, bytes]]:
        """Every public version of the audit and provenance keys (raw Ed25519)."""
        return {name: dict(self._read_key(name).public) for name in (AUDIT_KEY_NAME, KEY_NAME)}

    # -- issuing ------------------------------------------------------------------------------------

    def issue(self, output_sha256: bytes) -> Issued:
        """The statement of the output with this SHA-256 (plaintext or sealed file): the stored one, or
        one issued now (see the module docstring)."""
        if len(output_sha256) != 32:
            raise KmsError("output_sha256 must be 32 bytes", code=Code.REQUEST_INVALID)
        wanted = output_sha256.hex()
        with self._store.reader() as conn:
            checkpoint = latest_checkpoint(conn)
            if checkpoint is None:
                raise KmsError("no signed checkpoint yet", code=Code.PROVENANCE_NOT_CHECKPOINTED)
            hit = output_by_digest(conn, wanted)  # the digest index (model_outputs), not a scan
            if hit is None:
                raise _not_found(wanted)
            found = Entry.decode(hit[1])
            if checkpoint.size <= found.seq:
                raise KmsError(
                    f"the latest checkpoint (size {checkpoint.size}) does not cover output entry {found.seq} yet",
                    code=Code.PROVENANCE_NOT_CHECKPOINTED,
                )
            kept = stored_statement(conn, found.seq)
            if kept is not None and not revoked_between(
                conn, str(found.fields.get("node_id")), kept.checkpoint_size, checkpoint.size
            ):
                return Issued(kept.envelope, found.seq)
        result = self._issue_batch([found])[found.seq]
        if isinstance(result, KmsError):
            raise result
        return Issued(result, found.seq)

    def _issue_batch(self, outputs: Sequence[Entry]) -> dict[int, bytes | KmsError]:
        """Issue and store statements for ``outputs`` against the latest checkpoint; per output, its
        envelope or why it has none. Raises when nothing can be issued (no key, signer down)."""
        with self._issuing:
            started, cpu_started = time.perf_counter(), time.thread_time()
            results = self._issue_locked(outputs)
            issued = sum(1 for r in results.values() if isinstance(r, bytes))
            seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
            with self._lock:
                s = self._stats
                self._stats = IssueStats(
                    s.statements + issued, s.batches + 1, s.seconds + seconds, s.cpu_seconds + cpu
                )
            if self._observe is not None:
                self._observe(issued, seconds, cpu)
            return results

    def _issue_locked(self, outputs: Sequence[Entry]) -> dict[int, bytes | KmsError]:
        keys = self._signing_key()
        version = keys.latest_version
        results: dict[int, bytes | KmsError] = {}
        unsigned: list[_Unsigned] = []
        issued_at = self._clock()
        with self._store.reader() as conn:
            checkpoint = latest_checkpoint(conn)
            if checkpoint is None or checkpoint.size <= max(o.seq for o in outputs):
                raise KmsError(
                    "no signed checkpoint covers the outputs yet", code=Code.PROVENANCE_NOT_CHECKPOINTED
                )
            node_ids = {str(o.fields.get("node_id")) for o in outputs}
            by_node, shared = self._entries(lineage_entries(conn, node_ids, below=checkpoint.size).items())
            derived: list[tuple[Entry, Lineage, list[_Decoded]]] = []
            for out in outputs:
                entries = by_node.get(str(out.fields.get("node_id")), []) + shared
                try:
                    derived.append((out, derive([d.entry for d in entries], out.seq), entries))
                except LineageInvalid as err:
                    results[out.seq] = KmsError(
                        f"the ledger cannot support a statement: {err}", code=Code.AUDIT_LEDGER_CORRUPT
                    )
            claims = self._claims({(lin.node["id"], lin.cpu["claims_digest"]) for _, lin, _ in derived})
            batch = _Batch(checkpoint, version, format_time(issued_at), self._hashes.over(DbHashStore(conn)))
            for out, lineage, entries in derived:
                known = claims.get(lineage.cpu["claims_digest"])
                unsigned.append(self._unsigned(batch, out, lineage, entries, known))
        public = Ed25519PublicKey.from_public_bytes(keys.public[version])
        kept: list[StoredStatement] = []
        for start in range(0, len(unsigned), SIGN_BATCH):
            chunk = unsigned[start : start + SIGN_BATCH]
            signed_pae = [pae(u.payload) for u in chunk]
            try:
                signatures = self._transit.sign_batch(KEY_NAME, version, signed_pae)
            except OpenBaoError as err:
                raise _signer_failed(f"signing with {KEY_NAME} failed: {err.message}") from None
            for u, message, signature in zip(chunk, signed_pae, signatures, strict=True):
                if isinstance(signature, OpenBaoError):
                    results[u.output_seq] = _signer_failed(
                        f"signing with {KEY_NAME} failed: {signature.message}"
                    )
                    continue
                try:
                    public.verify(signature, message)
                except InvalidSignature:
                    results[u.output_seq] = _signer_failed(
                        f"OpenBao's signature does not verify with {KEY_NAME} v{version}"
                    )
                    continue
                envelope = signed_envelope(u.payload, version, signature)
                kept.append(StoredStatement(u.output_seq, checkpoint.size, version, envelope, issued_at))
                results[u.output_seq] = envelope
        if kept:
            with self._store.transaction() as conn:
                store_statements(conn, kept)
        return results

    def _entries(self, rows: Iterable[tuple[int, bytes]]) -> tuple[dict[str, list[_Decoded]], list[_Decoded]]:
        """The rows decoded (each once, ever), by node id; the entries of no node (policy changes) apart."""
        by_node: dict[str, list[_Decoded]] = {}
        shared: list[_Decoded] = []
        for seq, canonical in rows:
            decoded = self._decoded.get(seq)
            if decoded is None:
                decoded = _Decoded(Entry.decode(canonical), canonical, encode_text(canonical))
                self._decoded.put(seq, decoded)
            node_id = decoded.entry.fields.get("node_id")
            if isinstance(node_id, str):
                by_node.setdefault(node_id, []).append(decoded)
            else:
                shared.append(decoded)
        return by_node, shared

    def _claims(self, wanted: set[tuple[str, str]]) -> dict[str, _Claims]:
        """The verified claims each (node id, claims digest) names, by digest: remembered, or read from the
        node's record when it still holds the claims with that digest (a later renewal replaces them:
        then the statement names the digest only)."""
        out: dict[str, _Claims] = {}
        for node_id, digest in wanted:
            known = self._claims_seen.get(digest)
            if known is None:
                node = self._nodes.get(node_id)
                if node is None or claims_digest(node.claims) != digest:
                    continue
                known = _Claims(dict(node.claims), encode_claims(node.claims))
                self._claims_seen.put(digest, known)
            out[digest] = known
        return out

    def _unsigned(
        self, batch: _Batch, out: Entry, lineage: Lineage, entries: list[_Decoded], claims: _Claims | None
    ) -> _Unsigned:
        checkpoint, proven = batch.checkpoint, batch.proven
        by_seq = {d.entry.seq: d for d in entries}
        used: list[ProvenEntry] = []
        for seq in lineage.sequences():
            entry = proven.get(seq)
            if entry is None:
                d = by_seq[seq]
                entry = ProvenEntry(
                    seq, d.canonical, tuple(inclusion_proof(batch.hashes, seq, checkpoint.size)), d.text
                )
                proven[seq] = entry
            used.append(entry)
        statement = build_statement(
            lineage,
            claims=claims.claims if claims is not None else None,
            output_sha256=str(out.fields["output_sha256"]),
            key_version=batch.version,
            issued_at=batch.issued_at,
            checkpoint=checkpoint,
            entries=used,
        )
        payload = encode_statement(statement, used, claims.encoded if claims is not None else None)
        return _Unsigned(out.seq, payload)
