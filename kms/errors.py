"""The control-plane error tree.

Every failure carries a stable ``code`` (the same string appears in deny reasons, audit entries and gRPC
``ErrorInfo.reason``), a message saying what failed and a ``hint`` saying what to do. Messages never
contain key material, tokens or secret ids.
"""

from __future__ import annotations

from enum import StrEnum

from attestation.coded import CodedError, Reason


class Code(StrEnum):
    """Stable error codes. Never rename: they are part of the wire and audit contract."""

    # OpenBao (transit, auth)
    KMS_UNAVAILABLE = "KMS_UNAVAILABLE"
    KMS_SEALED = "KMS_SEALED"
    KMS_PERMISSION_DENIED = "KMS_PERMISSION_DENIED"
    KMS_TOKEN_EXPIRED = "KMS_TOKEN_EXPIRED"  # noqa: S105 (an error code)
    KMS_AUTH_FAILED = "KMS_AUTH_FAILED"
    KMS_NOT_BOOTSTRAPPED = "KMS_NOT_BOOTSTRAPPED"
    KMS_DECRYPT_FAILED = "KMS_DECRYPT_FAILED"
    KMS_BAD_RESPONSE = "KMS_BAD_RESPONSE"
    KMS_SIGNATURE_INVALID = "KMS_SIGNATURE_INVALID"
    KMS_CONFIG_INVALID = "KMS_CONFIG_INVALID"
    KMS_SERVER_START_FAILED = "KMS_SERVER_START_FAILED"
    KMS_ERROR = "KMS_ERROR"
    # Key catalogue
    KEY_NAME_INVALID = "KEY_NAME_INVALID"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    KEY_VERSION_NOT_FOUND = "KEY_VERSION_NOT_FOUND"
    KEY_EXISTS = "KEY_EXISTS"
    KEY_DISABLED = "KEY_DISABLED"
    KEY_DESTROYED = "KEY_DESTROYED"
    KEY_WRONG_KIND = "KEY_WRONG_KIND"
    # Storage
    STORAGE_ERROR = "STORAGE_ERROR"
    STORAGE_CONFLICT = "STORAGE_CONFLICT"
    STORAGE_SCHEMA_TOO_NEW = "STORAGE_SCHEMA_TOO_NEW"
    # Audit ledger (hints in kms/audit/errors.py)
    AUDIT_ENTRY_INVALID = "AUDIT_ENTRY_INVALID"
    AUDIT_SECRET_IN_ENTRY = "AUDIT_SECRET_IN_ENTRY"  # noqa: S105 (an error code)
    AUDIT_KEY_INVALID = "AUDIT_KEY_INVALID"
    AUDIT_PROOF_INVALID = "AUDIT_PROOF_INVALID"
    AUDIT_MALFORMED_EXPORT = "AUDIT_MALFORMED_EXPORT"
    AUDIT_NON_CANONICAL = "AUDIT_NON_CANONICAL"
    AUDIT_SEQUENCE_GAP = "AUDIT_SEQUENCE_GAP"
    AUDIT_SEQUENCE_DUPLICATE = "AUDIT_SEQUENCE_DUPLICATE"
    AUDIT_SEQUENCE_INSERTED = "AUDIT_SEQUENCE_INSERTED"
    AUDIT_SEQUENCE_REORDERED = "AUDIT_SEQUENCE_REORDERED"
    AUDIT_ROOT_MISMATCH = "AUDIT_ROOT_MISMATCH"
    AUDIT_CHECKPOINT_SIGNATURE_INVALID = "AUDIT_CHECKPOINT_SIGNATURE_INVALID"
    AUDIT_CHECKPOINT_ROLLBACK = "AUDIT_CHECKPOINT_ROLLBACK"
    AUDIT_CONSISTENCY_INVALID = "AUDIT_CONSISTENCY_INVALID"
    AUDIT_TRUNCATED = "AUDIT_TRUNCATED"
    AUDIT_EXPORT_STALE = "AUDIT_EXPORT_STALE"
    AUDIT_FRESHNESS_UNCHECKED = "AUDIT_FRESHNESS_UNCHECKED"
    AUDIT_UNSIGNED_TAIL = "AUDIT_UNSIGNED_TAIL"
    AUDIT_LEDGER_CORRUPT = "AUDIT_LEDGER_CORRUPT"
    AUDIT_NOT_FOUND = "AUDIT_NOT_FOUND"
    AUDIT_SIGNER_FAILED = "AUDIT_SIGNER_FAILED"
    AUDIT_RECONCILE_INPUT_INVALID = "AUDIT_RECONCILE_INPUT_INVALID"
    AUDIT_RECONCILE_NOT_BAO_LOG = "AUDIT_RECONCILE_NOT_BAO_LOG"
    # Control plane: requests, nonces, nodes, release, admin, configuration
    REQUEST_INVALID = "REQUEST_INVALID"
    REQUEST_NOT_CANONICAL = "REQUEST_NOT_CANONICAL"
    REQUEST_SIGNATURE_INVALID = "REQUEST_SIGNATURE_INVALID"
    REQUEST_REPLAYED = "REQUEST_REPLAYED"
    REQUEST_CLOCK_SKEW = "REQUEST_CLOCK_SKEW"
    NONCE_UNKNOWN = "NONCE_UNKNOWN"
    NONCE_EXPIRED = "NONCE_EXPIRED"
    NONCE_REPLAYED = "NONCE_REPLAYED"
    NONCE_NAME_MISMATCH = "NONCE_NAME_MISMATCH"
    NODE_NOT_FOUND = "NODE_NOT_FOUND"
    NODE_KEYS_CHANGED = "NODE_KEYS_CHANGED"
    NODE_KEYS_IN_USE = "NODE_KEYS_IN_USE"
    NODE_NOT_RENEWABLE = "NODE_NOT_RENEWABLE"
    NODE_TRANSITION_INVALID = "NODE_TRANSITION_INVALID"
    NODE_GROUPS_DENIED = "NODE_GROUPS_DENIED"
    NODE_SUSPENDED_BY_OPERATOR = "NODE_SUSPENDED_BY_OPERATOR"
    NODE_REVOKED_BY_OPERATOR = "NODE_REVOKED_BY_OPERATOR"
    NODE_SUSPENDED_BY_POLICY = "NODE_SUSPENDED_BY_POLICY"
    NODE_GROUPS_NOT_ELIGIBLE = "NODE_GROUPS_NOT_ELIGIBLE"
    NODE_EVIDENCE_FAILS_POLICY = "NODE_EVIDENCE_FAILS_POLICY"
    NODE_KEM_KEY_INVALID = "NODE_KEM_KEY_INVALID"
    EVIDENCE_TEE_MISMATCH = "EVIDENCE_TEE_MISMATCH"
    RELEASE_VERSION_NOT_WRITABLE = "RELEASE_VERSION_NOT_WRITABLE"
    RELEASE_NODE_CHANGED = "RELEASE_NODE_CHANGED"
    RELEASE_POLICY_CHANGED = "RELEASE_POLICY_CHANGED"
    # Node client certificates (mutual TLS on the KeyRelease endpoint)
    NODE_TLS_KEY_INVALID = "NODE_TLS_KEY_INVALID"
    RELEASE_CLIENT_CERT_MISSING = "RELEASE_CLIENT_CERT_MISSING"
    RELEASE_CLIENT_CERT_MISMATCH = "RELEASE_CLIENT_CERT_MISMATCH"
    # Model outputs and their provenance statements (kms/outputs.py, kms/provenance_issue.py)
    OUTPUT_NO_WRITE_GRANT = "OUTPUT_NO_WRITE_GRANT"
    PROVENANCE_OUTPUT_NOT_FOUND = "PROVENANCE_OUTPUT_NOT_FOUND"
    PROVENANCE_NOT_CHECKPOINTED = "PROVENANCE_NOT_CHECKPOINTED"
    PROVENANCE_SIGNER_FAILED = "PROVENANCE_SIGNER_FAILED"
    POLICY_VERSION_CONFLICT = "POLICY_VERSION_CONFLICT"
    SERVER_CONFIG_INVALID = "SERVER_CONFIG_INVALID"
    SERVER_OVERLOADED = "SERVER_OVERLOADED"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


_DEFAULT_HINTS: dict[Code, str] = {
    Code.KMS_UNAVAILABLE: "check that OpenBao is running and reachable (SOVEREIGN_BAO_ADDR)",
    Code.KMS_SEALED: "unseal OpenBao: bao operator unseal",
    Code.KMS_PERMISSION_DENIED: (
        "the token's policy does not allow this; the control plane needs the sovereign-control-plane "
        "policy (sovereign kms bootstrap), operator actions need an operator token"
    ),
    Code.KMS_TOKEN_EXPIRED: "the OpenBao token expired or was revoked; log in again or use AppRole",
    Code.KMS_AUTH_FAILED: "check SOVEREIGN_BAO_ROLE_ID and the secret id file (sovereign kms bootstrap)",
    Code.KMS_NOT_BOOTSTRAPPED: "run: sovereign kms bootstrap --addr ADDR --token-file FILE",
    Code.KMS_DECRYPT_FAILED: "the wrapped key is corrupt or was not wrapped by this OpenBao's KEK",
    Code.KMS_CONFIG_INVALID: (
        "set SOVEREIGN_BAO_ADDR and either SOVEREIGN_BAO_TOKEN or SOVEREIGN_BAO_ROLE_ID with "
        "SOVEREIGN_BAO_SECRET_ID_FILE"
    ),
    Code.KMS_SERVER_START_FAILED: "read the server log tail in the message; is the port or data dir in use?",
    Code.KEY_NAME_INVALID: "key names are 1-4 '/'-separated segments of [a-z0-9][a-z0-9._-]*, at most 128 characters",
    Code.KEY_NOT_FOUND: "list keys with: sovereign key list",
    Code.OUTPUT_NO_WRITE_GRANT: (
        "seal outputs only with a write key this node was granted (create_sealed under the node agent)"
    ),
    Code.PROVENANCE_OUTPUT_NOT_FOUND: "no recorded output has that SHA-256: check the digest of the plaintext",
    Code.PROVENANCE_NOT_CHECKPOINTED: "no signed checkpoint covers the output yet: retry in a second",
    Code.PROVENANCE_SIGNER_FAILED: (
        "the control plane could not sign with the OpenBao transit key sovereign-provenance: check OpenBao, "
        "the bootstrap (sovereign kms bootstrap) and the control plane's policy"
    ),
    Code.KEY_VERSION_NOT_FOUND: "list versions with: sovereign key list --json",
    Code.KEY_EXISTS: "key names are never reused, even after destroy; pick another name",
    Code.KEY_DISABLED: "enable it with: sovereign key enable NAME",
    Code.KEY_DESTROYED: "destroyed keys cannot be used or re-enabled; their wrapped material is gone",
    Code.KEY_WRONG_KIND: "kinds are 'dataset' (read) and 'model' (read/write)",
    Code.STORAGE_ERROR: "check the database path (--db / SOVEREIGN_DB), its permissions and free space",
    Code.STORAGE_CONFLICT: "another writer changed the same row; retry the operation",
    Code.STORAGE_SCHEMA_TOO_NEW: "this database was migrated by a newer sovereign; upgrade this install",
    Code.NODE_GROUPS_NOT_ELIGIBLE: (
        "approve only groups the node's stored claims match under the active policy (GetNode, GetPolicy); "
        "to widen them, change the policy (PutPolicy)"
    ),
    Code.NODE_EVIDENCE_FAILS_POLICY: (
        "the node's latest verified evidence does not pass the active policy: it must Renew with "
        "evidence that passes before it can be approved"
    ),
    Code.NODE_KEM_KEY_INVALID: (
        "generate a fresh HPKE key pair for an accepted suite in the TEE and register again"
    ),
}


def reason_for(code: Code, message: str, hint: str | None = None) -> Reason:
    """A reason with this core's default hint for ``code`` unless one is given."""
    return Reason(code.value, message, _DEFAULT_HINTS.get(code, "") if hint is None else hint)


class KmsError(CodedError):
    """Base of every control-plane failure. Carries a stable code and a hint."""

    default_code: Code = Code.KMS_ERROR

    code: Code

    def __init__(self, message: str, *, code: Code | None = None, hint: str | None = None) -> None:
        code = code if code is not None else self.default_code
        super().__init__(code, message, hint if hint is not None else _DEFAULT_HINTS.get(code, ""))


class OpenBaoError(KmsError):
    """OpenBao is unreachable, sealed, refused the request or answered unexpectedly."""

    default_code = Code.KMS_ERROR


class CatalogueError(KmsError):
    """A key catalogue operation was refused (unknown key, wrong state, bad name)."""

    default_code = Code.KEY_NOT_FOUND


class StorageError(KmsError):
    """The database failed or holds something this version cannot read."""

    default_code = Code.STORAGE_ERROR
