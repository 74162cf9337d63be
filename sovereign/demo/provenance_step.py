"""The demo's last step: the auditor proves what the training step's checkpoint was trained on.

Holding only the sealed checkpoint file, the auditor hashes it, fetches its provenance statement and the
public keys over the Audit RPC, and verifies the statement offline (``kms.provenance.verify``, what
``sovereign provenance verify`` runs): datasets -> node and its hardware -> output. A copy with a
dataset removed from the lineage is refused with ``PROVENANCE_PREDICATE_MISMATCH``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
import rfc8785

from kms.provenance.errors import ProvenanceError
from kms.provenance.verify import lineage_text, load_public_keys, verify_statement
from sovereign.cli.provenance import AUDIT_FILE, PROVENANCE_FILE, write_public_keys
from sovereign.client import AuditClient, OperatorError


class Recording(Protocol):
    def add(self, step: str, actor: str, expected: str, outcome: str, detail: str = "") -> None: ...


AUDITOR = "auditor carol"


def _fetch(client: AuditClient, sha256: bytes, timeout: float = 15.0) -> tuple[bytes, int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.provenance(sha256)
        except OperatorError as err:  # a checkpoint covers new entries within a second
            if err.code != "PROVENANCE_NOT_CHECKPOINTED" or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def hide_a_dataset(envelope: bytes) -> bytes:
    """The tampered copy: one dataset dropped from the predicate, the signature left as it was."""
    doc = json.loads(envelope)
    statement = json.loads(base64.b64decode(doc["payload"]))
    statement["predicate"]["datasets"] = statement["predicate"]["datasets"][1:]
    doc["payload"] = base64.b64encode(rfc8785.dumps(statement)).decode()
    return json.dumps(doc).encode()


def provenance_steps(
    rec: Recording, *, channel: grpc.Channel, checkpoint: Path, workdir: Path, progress: Callable[[str], Any]
) -> None:
    if not checkpoint.exists():
        rec.add("fetch the checkpoint's provenance statement", AUDITOR, "ok", "NO_CHECKPOINT")
        return
    sealed_sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    statement, keydir = workdir / "ckpt.provenance.json", workdir / "provenance-keys"
    client = AuditClient(channel)
    try:
        envelope, sequence = _fetch(client, bytes.fromhex(sealed_sha256))
        write_public_keys(client, keydir)
    except OperatorError as err:
        rec.add("fetch the checkpoint's provenance statement", AUDITOR, "ok", err.code, err.message[:60])
        return
    statement.write_bytes(envelope)
    rec.add(
        "fetch the checkpoint's provenance statement (Audit RPC)",
        AUDITOR,
        "ok",
        "ok",
        f"model.output #{sequence}",
    )
    keys = load_public_keys((keydir / AUDIT_FILE).read_bytes(), (keydir / PROVENANCE_FILE).read_bytes())
    try:
        verified = verify_statement(envelope, keys, file_sha256=sealed_sha256)
        p = verified.predicate
        detail = (
            f"{', '.join(d['key'] for d in p['datasets'])} -> {p['node']['name']} ({p['cpu']['tee']}) -> "
            f"{verified.subject_sha256[0][:16]}..."
        )
        rec.add("verify the statement offline (public keys only)", AUDITOR, "ok", "ok", detail)
        progress(f"    sovereign provenance verify {statement} --public-keys {keydir} --file {checkpoint}")
        for line in lineage_text(verified):
            progress(f"      {line}")
    except ProvenanceError as err:
        rec.add(
            "verify the statement offline (public keys only)", AUDITOR, "ok", err.code.value, err.message[:60]
        )
    tampered = workdir / "ckpt.provenance.tampered.json"
    tampered.write_bytes(hide_a_dataset(envelope))
    try:
        verify_statement(tampered.read_bytes(), keys, file_sha256=sealed_sha256)
        outcome = "ok"
    except ProvenanceError as err:
        outcome = err.code.value
    rec.add(
        "verify a tampered copy (a dataset hidden)",
        AUDITOR,
        "PROVENANCE_PREDICATE_MISMATCH",
        outcome,
        tampered.name,
    )
