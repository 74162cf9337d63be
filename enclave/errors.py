"""The node agent's error tree.

Modelled on ``attestation.errors``: every failure carries a stable ``code``, a message saying what
failed and a ``hint`` saying what to do. Node errors stay on the node (logs, CLI output); they never
carry key material, and evidence bytes are public, so quoting sizes and field values is fine.
"""

from __future__ import annotations

from enum import StrEnum


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
}


class NodeError(Exception):
    """Base of every node-agent failure. Carries a stable code and a hint."""

    def __init__(self, message: str, *, code: NodeCode, hint: str | None = None) -> None:
        self.code: NodeCode = code
        self.message = message
        self.hint = hint if hint is not None else _DEFAULT_HINTS.get(code, "")
        super().__init__(f"{code}: {message}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.value!r}, message={self.message!r})"

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message, "hint": self.hint}
