"""A small ledger built in memory with local Ed25519 keys (the audit key and the provenance key), and a
statement over it, for the pure provenance core's tests and the benchmark. Entries are made with the
ledger's own model (``kms.audit.entry``) and hashed into a ``MemoryHashStore``; nothing is mocked in the
verifier's path."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kms.audit.checkpoint import AuditKeys, Checkpoint, LocalSigner, sign_checkpoint
from kms.audit.entry import Decision, Entry, Kind, format_time
from kms.audit.merkle import MemoryHashStore, inclusion_proof, leaf_hash, range_hash
from kms.provenance.lineage import derive
from kms.provenance.statement import ProvenEntry, build_statement, claims_digest, seal_statement
from kms.provenance.verify import PublicKeys

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NODE = "n-0123456789abcdef01234567"
CLAIMS: dict[str, Any] = {
    "tee": "snp",
    "measurement": "ab" * 48,
    "debug": False,
    "tcb": {"bootloader": 4, "snp": 22},
    "tcb_status": "UpToDate",
    "platform_id": "cd" * 64,
    "simulated": True,
}
OUTPUT = hashlib.sha256(b"the model weights").hexdigest()
SEALED = hashlib.sha256(b"the sealed file").hexdigest()


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class Ledger:
    audit_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    provenance_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    entries: list[Entry] = field(default_factory=list)
    store: MemoryHashStore = field(default_factory=MemoryHashStore)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    issued: list[bytes] = field(default_factory=list)  # every statement made, genuine or not

    def add(self, kind: Kind, decision: Decision = Decision.GRANT, /, **fields: Any) -> int:
        seq = len(self.entries)
        when = T0 + timedelta(minutes=seq)
        entry = Entry.create(seq, when, kind, actor=f"node:{NODE}", decision=decision, fields=fields)
        self.entries.append(entry)
        self.store.append(leaf_hash(entry.encode()))
        return seq

    def checkpoint(self) -> Checkpoint:
        size = len(self.entries)
        signer = LocalSigner(self.audit_key, key_id="sovereign-audit", version=1)
        cp = sign_checkpoint(
            signer, size, range_hash(self.store, 0, size), format_time(T0 + timedelta(hours=1, seconds=size))
        )
        self.checkpoints.append(cp)
        return cp

    def keys(self) -> PublicKeys:
        return PublicKeys(
            AuditKeys({1: self.audit_key.public_key()}), AuditKeys({1: self.provenance_key.public_key()})
        )

    def key_files(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, key in (("audit", self.audit_key), ("provenance", self.provenance_key)):
            body = {"type": "ed25519", "keys": {"1": base64.b64encode(raw(key)).decode()}}
            (directory / f"{name}.json").write_text(json.dumps(body))
        return directory

    def statement(
        self,
        output_seq: int,
        checkpoint: Checkpoint | None = None,
        signer: Ed25519PrivateKey | None = None,
        claims: dict[str, Any] | None = None,
    ) -> bytes:
        cp = checkpoint or self.checkpoint()
        visible = [e for e in self.entries if e.seq < cp.size]
        lineage = derive(visible, output_seq)
        proven = [
            ProvenEntry(s, self.entries[s].encode(), tuple(inclusion_proof(self.store, s, cp.size)))
            for s in lineage.sequences()
        ]
        statement = build_statement(
            lineage,
            claims=CLAIMS if claims is None else claims,
            output_sha256=self.entries[output_seq].fields["output_sha256"],  # type: ignore[arg-type]
            key_version=1,
            issued_at=format_time(T0 + timedelta(hours=2)),
            checkpoint=cp,
            entries=proven,
        )
        key = signer or self.provenance_key
        envelope = seal_statement(statement, key.sign, 1, raw(key))
        self.issued.append(envelope)
        return envelope


def training_ledger(datasets: int = 2, *, revoke_before_output: bool = False) -> tuple[Ledger, int]:
    """server.start, a registration, a policy change, ``datasets`` read grants, a write grant, an output
    (and, if asked, a revocation between the write grant and the output)."""
    led = Ledger()
    led.add(Kind.SERVER_START, Decision.NONE, address="127.0.0.1:8443")
    led.add(
        Kind.REGISTRATION, node_id=NODE, node_name="trainer-1", tee="snp", state="attested", groups=["trainers"],
        policy_version=2, claims_digest=claims_digest(CLAIMS), measurement=CLAIMS["measurement"],
        tcb_status="UpToDate",
    )  # fmt: skip
    led.add(Kind.POLICY_CHANGE, Decision.NONE, policy_version=2, new_policy_digest="ef" * 32, subject="alice")
    for i in range(datasets):
        led.add(Kind.RELEASE_GRANT, node_id=NODE, key_name=f"dataset/d{i}", key_version=1, purpose="read",
                policy_version=2, request_id=f"{i:032x}")  # fmt: skip
    led.add(Kind.RELEASE_GRANT, node_id=NODE, key_name="model/main", key_version=3, purpose="write",
            policy_version=2, request_id="f" * 32)  # fmt: skip
    if revoke_before_output:
        led.add(Kind.NODE_REVOKE, Decision.NONE, node_id=NODE, old_state="attested", new_state="revoked")
    out = led.add(
        Kind.MODEL_OUTPUT, node_id=NODE, key_name="model/main", key_version=3, request_id="e" * 32,
        header_sha256="11" * 32, output_sha256=OUTPUT, output_size=1234, sealed_sha256=SEALED,
        job_name="train", step=10,
    )  # fmt: skip
    return led, out
