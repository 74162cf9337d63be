"""The provenance verifier's codes: one per way a statement can fail, so a refusal says what was wrong."""

from __future__ import annotations

from enum import StrEnum


class ProvenanceCode(StrEnum):
    """Stable codes. Never rename: auditors' scripts match on them."""

    PROVENANCE_MALFORMED = "PROVENANCE_MALFORMED"  # not a DSSE envelope of an in-toto Statement v1 of ours
    PROVENANCE_KEYS_INVALID = "PROVENANCE_KEYS_INVALID"  # the public keys directory is unusable
    PROVENANCE_SIGNATURE_INVALID = (
        "PROVENANCE_SIGNATURE_INVALID"  # DSSE signature (e.g. re-signed by another key)
    )
    PROVENANCE_SUBJECT_MISMATCH = (
        "PROVENANCE_SUBJECT_MISMATCH"  # subject digests differ from the output entry
    )
    PROVENANCE_PREDICATE_MISMATCH = (
        "PROVENANCE_PREDICATE_MISMATCH"  # predicate differs from the ledger entries
    )
    PROVENANCE_PROOF_INVALID = "PROVENANCE_PROOF_INVALID"  # an inclusion proof does not prove its entry
    PROVENANCE_CHECKPOINT_SIGNATURE_INVALID = "PROVENANCE_CHECKPOINT_SIGNATURE_INVALID"
    PROVENANCE_CHECKPOINT_ROLLBACK = "PROVENANCE_CHECKPOINT_ROLLBACK"  # older than what it must cover
    PROVENANCE_CONSISTENCY_INVALID = (
        "PROVENANCE_CONSISTENCY_INVALID"  # not a prefix of the trusted checkpoint
    )
    PROVENANCE_GRANT_AFTER_REVOCATION = "PROVENANCE_GRANT_AFTER_REVOCATION"
    PROVENANCE_FILE_MISMATCH = "PROVENANCE_FILE_MISMATCH"  # the given file is not the statement's subject
    PROVENANCE_VERIFIER_FAILED = "PROVENANCE_VERIFIER_FAILED"  # a worker process of a batch failed


_HINTS: dict[ProvenanceCode, str] = {
    ProvenanceCode.PROVENANCE_MALFORMED: "fetch the statement again: sovereign provenance get --output SHA256",
    ProvenanceCode.PROVENANCE_KEYS_INVALID: (
        "export the public keys with: sovereign provenance keys --out DIR (audit.json, provenance.json)"
    ),
    ProvenanceCode.PROVENANCE_SIGNATURE_INVALID: (
        "the envelope is not signed by the sovereign-provenance key in --public-keys: it was altered or "
        "re-signed by someone else"
    ),
    ProvenanceCode.PROVENANCE_SUBJECT_MISMATCH: "the subject was changed: this statement is not about that output",
    ProvenanceCode.PROVENANCE_PREDICATE_MISMATCH: "the predicate was edited: it no longer says what the ledger says",
    ProvenanceCode.PROVENANCE_PROOF_INVALID: "an inclusion proof was swapped or edited: fetch the statement again",
    ProvenanceCode.PROVENANCE_CHECKPOINT_SIGNATURE_INVALID: (
        "the checkpoint is not signed by the audit key in --public-keys"
    ),
    ProvenanceCode.PROVENANCE_CHECKPOINT_ROLLBACK: (
        "the statement's checkpoint was replaced by an older one that cannot cover its entries"
    ),
    ProvenanceCode.PROVENANCE_CONSISTENCY_INVALID: (
        "the statement's ledger is not a prefix of the trusted checkpoint's: the ledger was forked or rewritten"
    ),
    ProvenanceCode.PROVENANCE_GRANT_AFTER_REVOCATION: (
        "the ledger shows the node revoked before this grant or output: do not trust the output"
    ),
    ProvenanceCode.PROVENANCE_FILE_MISMATCH: "the file's SHA-256 is neither the plaintext's nor the sealed file's",
    ProvenanceCode.PROVENANCE_VERIFIER_FAILED: (
        "nothing was verified: run again, or with --workers 1 to verify in one process"
    ),
}


class ProvenanceError(Exception):
    """A statement that fails verification; ``code``, ``message`` (what failed), ``hint`` (what to do)."""

    def __init__(self, code: ProvenanceCode, message: str, hint: str | None = None) -> None:
        self.code = code
        self.message = message
        self.hint = hint if hint is not None else _HINTS[code]
        super().__init__(f"{code.value}: {message}")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message, "hint": self.hint}
