"""Issuing a provenance statement (Audit ``GetProvenance``): gather, prove, sign.

For the output with a given SHA-256 of its plaintext or of its sealed file (its latest ``model.output``
grant entry, found through the digest index ``kms.sql.outputs.output_by_digest``): the latest signed
checkpoint (it must cover the output, else PROVENANCE_NOT_CHECKPOINTED: retry a moment later), the node's
entries up to that checkpoint and the ``policy.change`` entries; ``kms.provenance.lineage.derive`` picks
what the statement rests on; each of those entries gets its inclusion proof against that one checkpoint;
the node's stored claims are included when their digest is the registration entry's; the statement is
signed in OpenBao transit with the latest version of ``sovereign-provenance`` (Ed25519), the version
written inside the signed payload. Nothing is written: issuing is a read and a signature.

Cost (bench/bench_provenance.py): concurrent statements share one transit ``sign`` call (``batch_input``,
through ``kms.batching.Batcher``), as releases share one unwrap; and the Merkle subtree hashes the proofs
read are remembered across statements (a stored subtree hash covers a complete, aligned range of an
append-only ledger, so it never changes).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kms.audit.checkpoint import parse_transit_signature
from kms.audit.entry import Entry, format_time
from kms.audit.errors import KeyInvalid
from kms.audit.merkle import inclusion_proof
from kms.batching import Batcher
from kms.clock import Clock
from kms.domain.transit import AUDIT_KEY_NAME, Transit
from kms.errors import Code, KmsError
from kms.provenance.lineage import LineageInvalid, derive
from kms.provenance.statement import KEY_NAME, ProvenEntry, build_statement, seal_statement
from kms.sql.audit_ledger import latest_checkpoint
from kms.sql.audit_reader import DbHashStore
from kms.sql.nodes import SqlNodes
from kms.sql.outputs import output_by_digest
from kms.sql.provenance import lineage_entries
from kms.sql.store import Store

KEY_TTL = 10.0  # seconds the provenance key's latest version is remembered
HASH_CACHE = 1 << 16  # subtree hashes remembered across statements (~ 6 MB)
SIGN_WINDOW = 0.002  # seconds a transit sign waits for company
SIGN_BATCH = 64


@dataclass(frozen=True)
class Issued:
    envelope: bytes
    output_sequence: int


def _not_found(sha256: str) -> KmsError:
    return KmsError(f"no recorded output has SHA-256 {sha256}", code=Code.PROVENANCE_OUTPUT_NOT_FOUND)


def _signer_failed(message: str) -> KmsError:
    return KmsError(message, code=Code.PROVENANCE_SIGNER_FAILED)


class SubtreeHashes:
    """Stored subtree hashes, remembered (least recently used out) across statements. Safe to share: a
    stored hash covers a complete, aligned leaf range of the append-only ledger and never changes."""

    def __init__(self, limit: int = HASH_CACHE) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def over(self, inner: DbHashStore) -> _Memo:
        return _Memo(self, inner)

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self._lock:
            value = self._seen.get(key)
            if value is not None:
                self._seen.move_to_end(key)
            return value

    def put(self, key: tuple[int, int], value: bytes) -> None:
        with self._lock:
            self._seen[key] = value
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)


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


def _one_signature(result: object, version: int) -> bytes | KmsError:
    if not isinstance(result, dict) or result.get("error"):
        why = result.get("error") if isinstance(result, dict) else "no result"
        return _signer_failed(f"signing with {KEY_NAME} failed: {str(why)[:200]}")
    try:
        signature = parse_transit_signature(str(result.get("signature", "")))
    except KeyInvalid as err:
        return _signer_failed(f"signing with {KEY_NAME} failed: {err.message}")
    if signature.version != version:
        return _signer_failed(f"OpenBao signed with v{signature.version}, the statement names v{version}")
    return signature.value


class ProvenanceIssuer:
    def __init__(self, store: Store, transit: Transit, clock: Clock) -> None:
        self._store = store
        self._nodes = SqlNodes(store)
        self._transit = transit
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: tuple[float, int, dict[int, bytes]] | None = None
        self._hashes = SubtreeHashes()
        self._signer: Batcher[tuple[int, bytes], bytes] | None = None

    def close(self) -> None:
        with self._lock:
            signer, self._signer = self._signer, None
        if signer is not None:
            signer.close()

    # -- keys ---------------------------------------------------------------------------------------

    def _read_key(self, name: str) -> tuple[int, dict[int, bytes]]:
        call = getattr(self._transit, "call", None)
        if call is None:
            raise _signer_failed("the transit client cannot read keys")
        mount = self._transit.settings.mount  # type: ignore[attr-defined]
        try:
            resp: Any = call(
                "read provenance key", lambda c: c.secrets.transit.read_key(name, mount_point=mount)
            )
        except KmsError as err:
            raise _signer_failed(f"cannot read the transit key {name}: {err.message}") from None
        data = (resp or {}).get("data") or {}
        keys = data.get("keys")
        if data.get("type") != "ed25519" or not isinstance(keys, dict):
            raise _signer_failed(f"the transit key {name} is not an ed25519 key")
        out = {int(v): base64.b64decode(k["public_key"]) for v, k in keys.items() if isinstance(k, dict)}
        return int(data.get("latest_version") or 0), out

    def _signing_key(self) -> tuple[int, dict[int, bytes]]:
        """The latest version of the provenance key and its public keys, re-read every ``KEY_TTL`` seconds
        (a rotation is picked up within that; a transit sign with a stale version still verifies)."""
        now = time.monotonic()
        with self._lock:
            if self._latest is None or now - self._latest[0] > KEY_TTL:
                self._latest = (now, *self._read_key(KEY_NAME))
            return self._latest[1], self._latest[2]

    def signing_keys(self) -> dict[str, dict[int, bytes]]:
        """Every public version of the audit and provenance keys (raw Ed25519)."""
        return {name: self._read_key(name)[1] for name in (AUDIT_KEY_NAME, KEY_NAME)}

    def _sign(self, version: int, message: bytes) -> bytes:
        """One signature, in a transit call shared with whatever statements are being signed now."""
        with self._lock:
            if self._signer is None:
                self._signer = Batcher(
                    self._sign_batch, name="provenance-sign", window=SIGN_WINDOW, max_batch=SIGN_BATCH
                )
            signer = self._signer
        return signer.submit((version, message))

    def _sign_batch(self, items: Sequence[tuple[int, bytes]]) -> list[bytes | KmsError]:
        """Sign every item; one transit call per key version among them (one, but for a rotation)."""
        out: list[bytes | KmsError] = [_signer_failed("not signed")] * len(items)
        for version in sorted({v for v, _ in items}):
            at = [i for i, (v, _) in enumerate(items) if v == version]
            try:
                signed = self._sign_version(version, [items[i][1] for i in at])
            except KmsError as err:
                signed = [err] * len(at)
            for i, result in zip(at, signed, strict=True):
                out[i] = result
        return out

    def _sign_version(self, version: int, messages: list[bytes]) -> list[bytes | KmsError]:
        mount = self._transit.settings.mount  # type: ignore[attr-defined]
        call = self._transit.call  # type: ignore[attr-defined]
        batch = [{"input": base64.b64encode(m).decode()} for m in messages]
        try:
            resp: Any = call(
                "sign provenance",
                lambda c: c.secrets.transit.sign_data(
                    KEY_NAME, key_version=version, batch_input=batch, mount_point=mount
                ),
            )
        except KmsError as err:
            raise _signer_failed(f"signing with {KEY_NAME} failed: {err.message}") from None
        results = ((resp or {}).get("data") or {}).get("batch_results")
        if not isinstance(results, list) or len(results) != len(messages):
            raise _signer_failed(f"OpenBao answered {len(messages)} signing requests with something else")
        return [_one_signature(r, version) for r in results]

    # -- issuing ------------------------------------------------------------------------------------

    def issue(self, output_sha256: bytes) -> Issued:
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
            node_id = found.fields.get("node_id")
            canonical = lineage_entries(conn, {str(node_id)}, below=checkpoint.size)
            entries = [Entry.decode(c) for c in canonical.values()]
            try:
                lineage = derive(entries, found.seq)
            except LineageInvalid as err:
                raise KmsError(
                    f"the ledger cannot support a statement: {err}", code=Code.AUDIT_LEDGER_CORRUPT
                ) from None
            hashes = self._hashes.over(DbHashStore(conn))  # the proofs share their upper levels
            proven = [
                ProvenEntry(seq, canonical[seq], tuple(inclusion_proof(hashes, seq, checkpoint.size)))
                for seq in lineage.sequences()
            ]
        node = self._nodes.get(str(node_id))
        version, public = self._signing_key()
        statement = build_statement(
            lineage,
            claims=node.claims if node is not None else None,
            gpus=[],
            output_sha256=str(found.fields["output_sha256"]),
            key_version=version,
            issued_at=format_time(self._clock()),
            checkpoint=checkpoint,
            entries=proven,
        )
        envelope = seal_statement(statement, lambda m: self._sign(version, m), version, public[version])
        return Issued(envelope, found.seq)
