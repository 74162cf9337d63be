"""The node agent's error tree.

Modelled on ``attestation.errors``: every failure carries a stable ``code``, a message saying what
failed and a ``hint`` saying what to do. Node errors stay on the node (logs, CLI output); they never
carry key material, and evidence bytes are public, so quoting sizes and field values is fine.
"""

from __future__ import annotations

from enum import StrEnum

from attestation.coded import CodedError


class NodeCode(StrEnum):
    """Stable node-agent error codes. Never rename: operators script against them."""

    # Evidence providers
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    PROVIDER_UNSUPPORTED = "PROVIDER_UNSUPPORTED"
    PROVIDER_FAILED = "PROVIDER_FAILED"
    PROVIDER_BAD_OUTPUT = "PROVIDER_BAD_OUTPUT"
    REPORT_DATA_INVALID = "REPORT_DATA_INVALID"
    # Node identity
    IDENTITY_INVALID = "IDENTITY_INVALID"
    # Node agent: configuration, control-plane calls, key release, local files
    CONFIG_INVALID = "CONFIG_INVALID"
    CONTROL_PLANE_UNAVAILABLE = "CONTROL_PLANE_UNAVAILABLE"
    CONTROL_PLANE_ERROR = "CONTROL_PLANE_ERROR"
    REQUEST_REFUSED = "REQUEST_REFUSED"
    REGISTRATION_REJECTED = "REGISTRATION_REJECTED"
    NODE_NOT_ATTESTED = "NODE_NOT_ATTESTED"
    RELEASE_DENIED = "RELEASE_DENIED"
    RELEASE_RESPONSE_INVALID = "RELEASE_RESPONSE_INVALID"
    RELEASE_AAD_MISMATCH = "RELEASE_AAD_MISMATCH"
    SEALED_KEY_INVALID = "SEALED_KEY_INVALID"
    KEY_REF_MISMATCH = "KEY_REF_MISMATCH"
    KEY_OUTPUT_UNSAFE = "KEY_OUTPUT_UNSAFE"
    PLAINTEXT_OUTPUT_UNSAFE = "PLAINTEXT_OUTPUT_UNSAFE"


_DEFAULT_HINTS: dict[NodeCode, str] = {
    NodeCode.PROVIDER_UNAVAILABLE: (
        "run inside an SEV-SNP or TDX guest with configfs-tsm (kernel >= 6.7) or /dev/sev-guest, "
        "as a user allowed to use it; or choose a provider explicitly"
    ),
    NodeCode.PROVIDER_UNSUPPORTED: "use a provider for SEV-SNP or TDX (configfs-tsm, sev-guest)",
    NodeCode.PROVIDER_FAILED: "the TEE refused or failed the request; check the kernel log and retry",
    NodeCode.PROVIDER_BAD_OUTPUT: (
        "the TEE returned data that is not the evidence asked for; do not use it, check the "
        "kernel/firmware versions and retry"
    ),
    NodeCode.REPORT_DATA_INVALID: "report data must be exactly 64 bytes (see attestation.binding)",
    NodeCode.IDENTITY_INVALID: "create a fresh NodeIdentity inside the TEE and register again",
    NodeCode.CONFIG_INVALID: "fix the node agent's options (see `sovereign node --help`)",
    NodeCode.CONTROL_PLANE_UNAVAILABLE: (
        "check --server, the network path and that the pinned CA (--ca) signed the server certificate; retry"
    ),
    NodeCode.CONTROL_PLANE_ERROR: "the control plane failed or answered out of contract; see its log",
    NodeCode.REQUEST_REFUSED: "the control plane refused the request as malformed; check the agent version",
    NodeCode.REGISTRATION_REJECTED: "read the reasons; fix the image, TCB or policy, then register again",
    NodeCode.NODE_NOT_ATTESTED: "register (and wait for operator approval if pending) before asking for keys",
    NodeCode.RELEASE_DENIED: "read the server reason; an operator can check the node, key and release policy",
    NodeCode.RELEASE_RESPONSE_INVALID: "do not use this reply; report it, the control plane may be compromised",
    NodeCode.RELEASE_AAD_MISMATCH: (
        "the server's AAD does not match this request; the key was refused, report it to the operators"
    ),
    NodeCode.SEALED_KEY_INVALID: "the sealed key did not open with this node's key; re-register and retry",
    NodeCode.KEY_REF_MISMATCH: "the file was sealed under another key; pass the key it names, or none",
    NodeCode.KEY_OUTPUT_UNSAFE: "write keys only to a new file on a tmpfs (e.g. under /dev/shm or /run/user)",
    NodeCode.PLAINTEXT_OUTPUT_UNSAFE: (
        "decrypt to a tmpfs (e.g. /dev/shm), to '-' piped into the consumer, or read the sealed file in place "
        "with enclave.workload.open_sealed; --force-non-tmpfs accepts plaintext on disk"
    ),
}


class NodeError(CodedError):
    """Base of every node-agent failure. Carries a stable code and a hint."""

    code: NodeCode

    def __init__(self, message: str, *, code: NodeCode, hint: str | None = None) -> None:
        super().__init__(code, message, hint if hint is not None else _DEFAULT_HINTS.get(code, ""))
