"""The audit ledger's errors: a branch of the control-plane error tree (codes live in ``kms.errors.Code``).

Verification errors carry where the problem is: ``line`` (1-based line of the export) and ``index``
(0-based leaf index, or checkpoint number for checkpoint problems), so a report points at the first bad
spot. Messages quote only public ledger data (sequence numbers, hashes, sizes), never entry content.
"""

from __future__ import annotations

from kms.errors import Code, KmsError

_HINTS: dict[Code, str] = {
    Code.AUDIT_ENTRY_INVALID: "audit entries use the fields and kinds listed in kms/audit/entry.py",
    Code.AUDIT_SECRET_IN_ENTRY: (
        "audit entries carry only public data: pass digests or identifiers, never key material or tokens"
    ),
    Code.AUDIT_KEY_INVALID: (
        "pass the audit key as raw 32 bytes, a PEM public key, or the JSON of "
        "bao read -format=json transit/keys/NAME"
    ),
    Code.AUDIT_PROOF_INVALID: "the proof does not match the given root and size; fetch it again from the server",
    Code.AUDIT_MALFORMED_EXPORT: "the file is not a sovereign audit export; export it again",
    Code.AUDIT_NON_CANONICAL: "the entry bytes were re-encoded or edited; entries must stay byte-exact",
    Code.AUDIT_SEQUENCE_GAP: "entries are missing from the export: it was edited or exported incompletely",
    Code.AUDIT_SEQUENCE_DUPLICATE: "an entry appears twice: the export was edited",
    Code.AUDIT_SEQUENCE_INSERTED: "an entry that is not part of the ledger was added: the export was edited",
    Code.AUDIT_SEQUENCE_REORDERED: "entries are out of order: the export was edited",
    Code.AUDIT_ROOT_MISMATCH: (
        "the entries do not hash to the signed root: an entry before this checkpoint was changed"
    ),
    Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID: (
        "the checkpoint is not signed by the given audit key: check --public-key, else it was forged"
    ),
    Code.AUDIT_CHECKPOINT_ROLLBACK: "an older checkpoint was put in place of a newer one: the export was edited",
    Code.AUDIT_CONSISTENCY_INVALID: "the consistency proof does not link the two checkpoints; export again",
    Code.AUDIT_TRUNCATED: "the export ends before its final checkpoint's size: the file was cut; export again",
    Code.AUDIT_EXPORT_STALE: (
        "the export ends before the trusted checkpoint or minimum size: it is older than the ledger or was "
        "cut back to an older signed checkpoint; export again from the server and verify that"
    ),
    Code.AUDIT_FRESHNESS_UNCHECKED: (
        "nothing shows this export is the latest ledger: pass --checkpoint FILE (a checkpoint from the "
        "server or a witness), --min-size N or --server-head; or --accept-unchecked-head to accept its own head"
    ),
    Code.AUDIT_UNSIGNED_TAIL: "entries after the last checkpoint are not covered by a signature; export again",
    Code.AUDIT_LEDGER_CORRUPT: (
        "the stored ledger does not match its own tree or signed checkpoints: restore the database from a "
        "backup and compare with the last export; do not serve from it"
    ),
    Code.AUDIT_NOT_FOUND: (
        "ask for a tree size that has a signed checkpoint: 'sovereign audit checkpoint -o FILE' saves the "
        "latest and prints its size"
    ),
    Code.AUDIT_SIGNER_FAILED: (
        "the control plane could not sign a checkpoint with the OpenBao transit audit key: check OpenBao "
        "and the sovereign-control-plane policy (transit/sign/sovereign-audit)"
    ),
    Code.AUDIT_RECONCILE_INPUT_INVALID: "pass OpenBao's file audit device log (JSON lines) and a ledger export",
    Code.AUDIT_RECONCILE_NOT_BAO_LOG: (
        "pass the file written by OpenBao's file audit device (bao audit enable file file_path=...): "
        "one JSON object per line with type request or response, time and request"
    ),
}


class AuditError(KmsError):
    """Base of every audit ledger failure."""

    default_code = Code.AUDIT_ENTRY_INVALID

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        hint: str | None = None,
        line: int | None = None,
        index: int | None = None,
    ) -> None:
        resolved = code if code is not None else self.default_code
        super().__init__(message, code=resolved, hint=hint if hint is not None else _HINTS.get(resolved))
        self.line = line
        self.index = index

    def to_dict(self) -> dict[str, str]:
        out = super().to_dict()
        if self.line is not None:
            out["line"] = str(self.line)
        if self.index is not None:
            out["index"] = str(self.index)
        return out


class EntryInvalid(AuditError):
    """An entry does not fit the entry model (unknown kind or field, bad type, secret-looking data)."""

    default_code = Code.AUDIT_ENTRY_INVALID


class SecretInEntry(EntryInvalid):
    """Something that looks like secret material was about to be written to the ledger."""

    default_code = Code.AUDIT_SECRET_IN_ENTRY


class KeyInvalid(AuditError):
    """An audit public key or signature could not be decoded."""

    default_code = Code.AUDIT_KEY_INVALID


class ProofInvalid(AuditError):
    """An inclusion or consistency proof does not verify, or cannot be built for the given sizes."""

    default_code = Code.AUDIT_PROOF_INVALID


class ExportInvalid(AuditError):
    """An export failed offline verification; ``code`` says which check, ``line``/``index`` where."""

    default_code = Code.AUDIT_MALFORMED_EXPORT
