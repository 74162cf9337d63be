"""Issuing provenance statements against real OpenBao (the wheel's ``bao``): concurrent statements share
one transit sign call (``batch_input``), and every signature verifies with the provenance key's public
key at the version the statement names; the proofs' subtree hashes are remembered across statements."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from integration.conftest import Kms

from kms.openbao.vault import OpenBaoTransit
from kms.sql.store import open_store
from kms.usecases.provenance_issue import ProvenanceIssuer, SubtreeHashes

THREADS = 24


def test_concurrent_statements_share_transit_sign_calls_and_each_signature_verifies(
    kms_dev: Kms, tmp_path: Path
) -> None:
    calls: Counter[str] = Counter()
    transit = OpenBaoTransit(kms_dev.approle_settings(), observe=lambda op, _s, _ok: calls.update([op]))
    store = open_store(tmp_path / "db.sqlite")
    issuer = ProvenanceIssuer(store, transit, lambda: datetime.now(UTC))
    version, public = issuer._signing_key()
    messages = [f"statement {i}".encode() for i in range(THREADS)]
    signatures: list[bytes] = [b""] * THREADS
    gate = threading.Barrier(THREADS)

    def sign(i: int) -> None:
        gate.wait()
        signatures[i] = issuer._sign(version, messages[i])

    try:
        workers = [threading.Thread(target=sign, args=(i,)) for i in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
    finally:
        issuer.close()
        store.close()
        transit.close()
    key = Ed25519PublicKey.from_public_bytes(public[version])
    for message, signature in zip(messages, signatures, strict=True):
        key.verify(signature, message)  # raises if any signature is not that message's
    assert 1 <= calls["sign provenance"] < THREADS  # batched: fewer transit calls than statements


def test_subtree_hashes_are_remembered_and_the_oldest_dropped_past_the_limit() -> None:
    cache = SubtreeHashes(limit=2)
    reads: list[tuple[int, int]] = []

    class Db:
        def node(self, level: int, index: int) -> bytes:
            reads.append((level, index))
            return bytes([level, index])

    memo = cache.over(Db())  # type: ignore[arg-type]
    assert memo.node(1, 0) == b"\x01\x00" and memo.node(1, 0) == b"\x01\x00"
    memo.node(2, 0)
    memo.node(3, 0)  # evicts (1, 0)
    memo.node(1, 0)
    assert reads == [(1, 0), (2, 0), (3, 0), (1, 0)]
