"""The "output sealed" request of the node agent's local API (additive to ``agent_api``'s ops).

After a ``SealedWriter`` closes, the workload library reports what it sealed to the agent, which records
it with the control plane (``RecordOutput`` on the release port) as a ``model.output`` ledger entry:

    {"v": 1, "op": "output", "key_ref": "NAME@vN", "header_sha256": HEX, "sha256": HEX,
     "sealed_sha256": HEX, "size": N, "job": "..." (optional), "step": N (optional)}
    -> {"ok": true, "sequence": N}

A refusal is the usual ``{"ok": false, "code", "message", "hint"}``; ``OUTPUT_REFUSED`` when the
control plane refuses to record it. Both sides import this module; standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kms.envelope import names

OP = "output"
OUTPUT_REFUSED = "AGENT_OUTPUT_REFUSED"  # the control plane refused to record the output
MAX_JOB = 128
MAX_STEP = (1 << 63) - 1
_HEX32 = re.compile(r"[0-9a-f]{64}")
_JOB = re.compile(r"[\x20-\x7e]{0,128}")


class ReportInvalid(ValueError):
    """An output report that is not well formed (the agent answers ``AGENT_REQUEST_INVALID``)."""


@dataclass(frozen=True)
class OutputReport:
    """One sealed output: digests are lowercase hex SHA-256, ``size`` the plaintext length."""

    key_name: str
    key_version: int
    header_sha256: str
    sha256: str
    sealed_sha256: str
    size: int
    job: str = ""
    step: int | None = None

    def __post_init__(self) -> None:
        if not names.is_valid_key_name(self.key_name):
            raise ReportInvalid(f"key name is not {names.KEY_NAME_RULE}")
        if not _is_int(self.key_version) or not 1 <= self.key_version < (1 << 32):
            raise ReportInvalid("key version is an integer >= 1")
        for label in ("header_sha256", "sha256", "sealed_sha256"):
            if not isinstance(getattr(self, label), str) or not _HEX32.fullmatch(getattr(self, label)):
                raise ReportInvalid(f"{label} is 64 lowercase hex digits")
        if not _is_int(self.size) or not 0 <= self.size <= MAX_STEP:
            raise ReportInvalid("size is an integer >= 0")
        if not isinstance(self.job, str) or not _JOB.fullmatch(self.job):
            raise ReportInvalid(f"job is at most {MAX_JOB} printable ASCII characters")
        if self.step is not None and (not _is_int(self.step) or not 0 <= self.step <= MAX_STEP):
            raise ReportInvalid("step is an integer >= 0")

    def to_request(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "op": OP,
            "key_ref": names.format_key_ref(self.key_name, self.key_version),
            "header_sha256": self.header_sha256,
            "sha256": self.sha256,
            "sealed_sha256": self.sealed_sha256,
            "size": self.size,
        }
        if self.job:
            out["job"] = self.job
        if self.step is not None:
            out["step"] = self.step
        return out

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> OutputReport:
        ref = request.get("key_ref")
        parsed = names.parse_key_ref(ref.encode()) if isinstance(ref, str) else None
        if parsed is None:
            raise ReportInvalid("key_ref is NAME@vVERSION")
        return cls(
            key_name=parsed[0],
            key_version=parsed[1],
            header_sha256=request.get("header_sha256"),  # type: ignore[arg-type]  # checked above
            sha256=request.get("sha256"),  # type: ignore[arg-type]
            sealed_sha256=request.get("sealed_sha256"),  # type: ignore[arg-type]
            size=request.get("size"),  # type: ignore[arg-type]
            job=request.get("job", ""),
            step=request.get("step"),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
