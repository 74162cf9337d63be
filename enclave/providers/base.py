"""What every evidence provider returns, and the checks every provider applies to its output.

A provider asks the TEE for evidence over 64 bytes of report data (from ``attestation.binding``).
Before handing evidence on, the node checks it is the shape the provider promised and that it
really carries the report data asked for: a report for someone else's report data (a concurrent
writer, a confused driver) would waste the server's single-use nonce and must never be sent.
Full parsing and verification is the server's job (``attestation``), not repeated here.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError

REPORT_DATA_SIZE = 64
SNP_REPORT_SIZE = 0x4A0  # ATTESTATION_REPORT, versions 2, 3 and 5
SNP_REPORT_DATA_OFFSET = 0x50
MAX_EVIDENCE_BYTES = 64 << 10
_TDX_HEADER_SIZE = 48
_TDX_V5_BODY_DESCRIPTOR_SIZE = 6  # u16 body type, u32 body size
_TDX_BODY_REPORT_DATA_OFFSET = 520  # TEE_TCB_SVN .. RTMR3 precede REPORTDATA in both body layouts
_TDX_TEE_TYPE = 0x81


@dataclass(frozen=True)
class Evidence:
    """Evidence as sent to ``Attestation.Register``.

    ``blob`` is a raw SEV-SNP ATTESTATION_REPORT or a TDX quote. ``endorsements`` are DER
    certificates the host supplied with an SNP extended report (VCEK or VLEK first, then ASK,
    then ARK); the server may use them but trusts only its pinned roots. ``provider`` names the
    provider that produced the evidence (diagnostics only, never trusted).
    """

    tee: Tee
    blob: bytes
    endorsements: tuple[bytes, ...] = ()
    provider: str = ""

    def __repr__(self) -> str:
        return (
            f"Evidence(tee={self.tee.value!r}, blob=<{len(self.blob)} bytes>, "
            f"endorsements=<{len(self.endorsements)} certs>, provider={self.provider!r})"
        )


@runtime_checkable
class EvidenceProvider(Protocol):
    """A source of hardware evidence. ``get_evidence`` raises ``NodeError``, never returns junk."""

    @property
    def name(self) -> str: ...

    @property
    def tee(self) -> Tee: ...

    def get_evidence(self, report_data: bytes) -> Evidence: ...


def check_report_data(report_data: bytes) -> bytes:
    """Return ``report_data`` as bytes if it is exactly 64 bytes, else raise REPORT_DATA_INVALID."""
    if not isinstance(report_data, bytes | bytearray | memoryview):
        raise NodeError(
            f"report data must be bytes, not {type(report_data).__name__}",
            code=NodeCode.REPORT_DATA_INVALID,
        )
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise NodeError(
            f"report data is {len(data)} bytes, expected {REPORT_DATA_SIZE}",
            code=NodeCode.REPORT_DATA_INVALID,
        )
    return data


def _bad_output(message: str) -> NodeError:
    return NodeError(message, code=NodeCode.PROVIDER_BAD_OUTPUT)


def embedded_report_data(tee: Tee, blob: bytes) -> bytes:
    """The REPORT_DATA field of an SNP report or a TDX v4/v5 quote; PROVIDER_BAD_OUTPUT if the
    blob is not that shape."""
    if not blob:
        raise _bad_output(f"the {tee.value} provider returned no evidence")
    if len(blob) > MAX_EVIDENCE_BYTES:
        raise _bad_output(f"evidence of {len(blob)} bytes exceeds {MAX_EVIDENCE_BYTES} bytes")
    if tee is Tee.SNP:
        if len(blob) != SNP_REPORT_SIZE:
            raise _bad_output(f"SNP report is {len(blob)} bytes, expected {SNP_REPORT_SIZE}")
        return blob[SNP_REPORT_DATA_OFFSET : SNP_REPORT_DATA_OFFSET + REPORT_DATA_SIZE]
    if len(blob) < _TDX_HEADER_SIZE:
        raise _bad_output(f"TDX quote of {len(blob)} bytes is shorter than its header")
    version, tee_type = struct.unpack_from("<H2xI", blob)
    if tee_type != _TDX_TEE_TYPE or version not in (4, 5):
        raise _bad_output(f"not a TDX quote (version {version}, TEE type {tee_type:#x})")
    body = _TDX_HEADER_SIZE + (_TDX_V5_BODY_DESCRIPTOR_SIZE if version == 5 else 0)
    start = body + _TDX_BODY_REPORT_DATA_OFFSET
    if len(blob) < start + REPORT_DATA_SIZE:
        raise _bad_output(f"TDX v{version} quote of {len(blob)} bytes is truncated")
    return blob[start : start + REPORT_DATA_SIZE]


def check_evidence(evidence: Evidence, *, tee: Tee, report_data: bytes) -> Evidence:
    """Raise PROVIDER_BAD_OUTPUT unless ``evidence`` is ``tee`` evidence over ``report_data``."""
    if evidence.tee is not tee:
        raise _bad_output(f"expected {tee.value} evidence, the provider returned {evidence.tee.value}")
    embedded = embedded_report_data(tee, evidence.blob)
    if not hmac.compare_digest(embedded, report_data):
        raise _bad_output(
            "the evidence does not carry the report data that was asked for "
            "(another process may be using the same TEE interface)"
        )
    return evidence
