"""Normalized claims: what verified evidence says about a node, independent of the TEE.

A ``Claims`` value only ever comes out of a successful verification. Policies appraise it; the
registry stores ``to_dict()``; nothing in here is secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Tee(StrEnum):
    SNP = "snp"
    TDX = "tdx"


class TcbStatus(StrEnum):
    """Intel's TCB level statuses; SNP evidence whose TCB matches its VCEK is ``UP_TO_DATE`` only
    as far as the signature goes (minimum SNP TCB is a policy decision), so SNP uses ``NOT_APPLICABLE``."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"
    NOT_APPLICABLE = "NotApplicable"
    UNKNOWN = "Unknown"  # TDX evidence verified without TCB info (signatures and chain only)


@dataclass(frozen=True)
class SnpTcb:
    """An SNP TCB_VERSION, decoded per product (Turin orders the bytes differently and adds FMC)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin only
    raw: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
            "raw": self.raw.hex(),
        }
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True)
class Claims:
    """Verified, TEE-independent view of a node.

    ``measurement`` is SNP MEASUREMENT or TDX MRTD. ``host_data`` is SNP HOST_DATA or TDX MRCONFIGID.
    ``policy`` is the SNP guest policy or the TDX TD_ATTRIBUTES. ``platform_id`` is the SNP chip id
    (empty for VLEK-signed reports) or the TDX PCK's FMSPC. ``details`` holds the TEE-specific fields
    (all JSON-compatible) that policies may inspect: for SNP ``vmpl``, ``smt_allowed``,
    ``migration_agent_allowed``, ``signing_key``, ``current_tcb``...; for TDX ``mrseam``, ``xfam``,
    ``tee_tcb_svn``, ``advisory_ids``... ``simulated`` says the chain ended in a root other than AMD's or
    Intel's real ones (whatever the trust profile calls itself).
    """

    tee: Tee
    product: str
    version: int
    measurement: bytes
    report_data: bytes
    host_data: bytes
    debug: bool
    policy: int
    tcb: dict[str, Any]
    tcb_status: TcbStatus
    platform_id: bytes
    rtmrs: tuple[bytes, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    simulated: bool = False
    # True only when a CRL current at the verification time covered the chain (SNP: the ARK's CRL; TDX:
    # the PCK and root CA CRLs). False when the verifier was told not to require one (archived evidence)
    # or did not look (TDX signatures only); policies deny it by default.
    revocation_checked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tee": self.tee.value,
            "product": self.product,
            "version": self.version,
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "host_data": self.host_data.hex(),
            "debug": self.debug,
            "policy": hex(self.policy),
            "tcb": self.tcb,
            "tcb_status": self.tcb_status.value,
            "platform_id": self.platform_id.hex(),
            "rtmrs": [r.hex() for r in self.rtmrs],
            "details": self.details,
            "simulated": self.simulated,
            "revocation_checked": self.revocation_checked,
        }
