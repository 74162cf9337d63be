"""The workload library's own error tree: where keys come from and what file was given.

A sealed file that fails to open or authenticate raises ``kms.envelope.StreamError`` instead (its code
names the failure, ``chunk`` the chunk that shows it); ``ERRORS`` catches both. Like every core here:
a stable code, a message saying what failed, a hint saying what to do, never key material or plaintext.
"""

from __future__ import annotations

from enum import StrEnum

from attestation.coded import CodedError
from kms.envelope import EnvelopeError


class WorkloadCode(StrEnum):
    """Stable codes. Never rename: training scripts and operators match on them."""

    WORKLOAD_NO_KEY_SOURCE = "WORKLOAD_NO_KEY_SOURCE"
    WORKLOAD_AGENT_UNAVAILABLE = "WORKLOAD_AGENT_UNAVAILABLE"
    WORKLOAD_KEY_UNAVAILABLE = "WORKLOAD_KEY_UNAVAILABLE"
    WORKLOAD_NOT_A_FILE = "WORKLOAD_NOT_A_FILE"
    WORKLOAD_INPUT_INVALID = "WORKLOAD_INPUT_INVALID"
    WORKLOAD_OUTPUT_NOT_RECORDED = "WORKLOAD_OUTPUT_NOT_RECORDED"


_DEFAULT_HINTS: dict[WorkloadCode, str] = {
    WorkloadCode.WORKLOAD_NO_KEY_SOURCE: (
        "run the workload under the node agent (it sets SOVEREIGN_AGENT_SOCKET), or pass keys=..."
    ),
    WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE: (
        "check that the node agent is running and SOVEREIGN_AGENT_SOCKET names its socket"
    ),
    WorkloadCode.WORKLOAD_KEY_UNAVAILABLE: (
        "this node may not hold that key for that purpose; check the key name and the release policy"
    ),
    WorkloadCode.WORKLOAD_NOT_A_FILE: "give the path of a regular file",
    WorkloadCode.WORKLOAD_INPUT_INVALID: "fix the arguments (see docs/workload.md)",
    WorkloadCode.WORKLOAD_OUTPUT_NOT_RECORDED: (
        "the sealed file is in place but the control plane did not record it, so no provenance statement "
        "can name it: check the node's state and its write grant, then write the output again"
    ),
}


class WorkloadError(CodedError):
    """Base of every workload-library failure that is not about the sealed bytes themselves."""

    code: WorkloadCode

    def __init__(self, message: str, *, code: WorkloadCode, hint: str | None = None) -> None:
        super().__init__(code, message, hint if hint is not None else _DEFAULT_HINTS[code])


ERRORS: tuple[type[Exception], ...] = (WorkloadError, EnvelopeError)
