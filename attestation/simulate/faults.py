"""Fault knobs: each one makes a specific verifier check fail, so tests can prove the check exists."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Fault(StrEnum):
    # Both TEEs
    BAD_SIGNATURE = "bad-signature"  # SNP report / TDX quote signature does not verify
    FOREIGN_CHAIN = "foreign-chain"  # leaf chains to a same-named but unpinned ARK / Intel root
    EXPIRED_CERT = "expired-cert"  # VCEK/VLEK or PCK leaf expired one day before `now`
    REVOKED = "revoked"  # SNP: ASK/ASVK on the ARK's CRL; TDX: PCK leaf on the Platform CA's CRL
    EXPIRED_COLLATERAL = "expired-collateral"  # SNP: ARK CRL past nextUpdate; TDX: TCB info, QE identity
    # SEV-SNP
    TCB_MISMATCH = "tcb-mismatch"  # VCEK/VLEK TCB extensions differ from REPORTED_TCB
    CHIP_ID_MISMATCH = "chip-id-mismatch"  # VCEK hwID differs from the report's CHIP_ID
    # Intel TDX
    QE_REPORT_SIGNATURE = "qe-report-signature"  # QE report not signed by the PCK key
    QE_BINDING = "qe-binding"  # QE REPORTDATA != SHA-256(attestation key || auth data) || 0*32
    QE_IDENTITY_MISMATCH = "qe-identity-mismatch"  # QE identity names another MRSIGNER
    COLLATERAL_SIGNATURE = "collateral-signature"  # TCB info signature does not verify
    TCB_NOT_MATCHED = "tcb-not-matched"  # platform below every TCB level
    TCB_OUT_OF_DATE = "tcb-out-of-date"  # platform matches only an OutOfDate level
    TCB_REVOKED = "tcb-revoked"  # platform matches only a Revoked level


SNP_FAULTS = frozenset(
    {
        Fault.BAD_SIGNATURE,
        Fault.FOREIGN_CHAIN,
        Fault.EXPIRED_CERT,
        Fault.REVOKED,
        Fault.EXPIRED_COLLATERAL,
        Fault.TCB_MISMATCH,
        Fault.CHIP_ID_MISMATCH,
    }
)
TDX_FAULTS = frozenset(Fault) - {Fault.TCB_MISMATCH, Fault.CHIP_ID_MISMATCH}


def check_faults(faults: Iterable[Fault], allowed: frozenset[Fault], tee: str) -> frozenset[Fault]:
    chosen = frozenset(Fault(f) for f in faults)
    unsupported = chosen - allowed
    if unsupported:
        raise ValueError(f"faults not applicable to {tee}: {sorted(unsupported)}")
    return chosen
