"""One entry point over both TEEs: recognise the evidence format and verify it."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime

from attestation import snp, tdx
from attestation.claims import Claims, Tee
from attestation.collateral import Collateral
from attestation.errors import Code, MalformedEvidence
from attestation.trust import TrustStore

MAX_EVIDENCE_BYTES = 64 << 10
SNP_REPORT_SIZE = 0x4A0
_TDX_TEE_TYPE = 0x81


def detect_tee(evidence: bytes) -> Tee:
    """SNP reports start with version 2/3/5 (u32); TDX quotes with version 4/5 (u16), key type 2, TEE 0x81."""
    if len(evidence) > MAX_EVIDENCE_BYTES:
        raise MalformedEvidence(
            f"evidence of {len(evidence)} bytes exceeds the {MAX_EVIDENCE_BYTES}-byte limit",
            code=Code.EVIDENCE_MALFORMED,
        )
    if len(evidence) >= 8:
        version, key_type, tee_type = struct.unpack_from("<HHI", evidence)
        if version in (4, 5) and key_type == 2 and tee_type == _TDX_TEE_TYPE:
            return Tee.TDX
        (snp_version,) = struct.unpack_from("<I", evidence)
        if snp_version in (2, 3, 5) and len(evidence) == SNP_REPORT_SIZE:
            return Tee.SNP
    raise MalformedEvidence(
        f"{len(evidence)} bytes are neither an SEV-SNP report nor a TDX quote",
        code=Code.EVIDENCE_UNKNOWN_FORMAT,
    )


def verify_evidence(
    evidence: bytes,
    *,
    trust: TrustStore,
    collateral: Collateral,
    now: datetime,
    endorsements: Sequence[bytes] = (),
    require_tcb: bool = True,
    require_revocation: bool = True,
) -> Claims:
    """Verify SNP or TDX evidence. ``require_tcb=False`` skips Intel TCB info (status Unknown) and with it
    the TDX CRLs. ``require_revocation=False`` lets SNP evidence verify without a current AMD CRL (archived
    evidence); either way the claims say ``revocation_checked=False`` and the default policy denies them."""
    tee = detect_tee(evidence)
    if tee is Tee.SNP:
        return snp.verify_report(
            evidence,
            trust=trust,
            collateral=collateral.snp,
            now=now,
            endorsements=endorsements,
            require_revocation=require_revocation,
        )
    if require_tcb:
        return tdx.verify_quote(evidence, trust=trust, collateral=collateral.tdx, now=now)
    return tdx.verify_quote_signatures(evidence, trust=trust, now=now)
