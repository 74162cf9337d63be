"""Intel PCS collateral in its served format: TDX TCB info (v3) and TD_QE identity (v2), signed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from attestation.simulate._certs import Issuer
from attestation.simulate.tdx_quote import raw_p256_signature

UP_TO_DATE = "UpToDate"
OUT_OF_DATE = "OutOfDate"
REVOKED = "Revoked"
# The TDX module is Intel-signed: MRSIGNERSEAM all zero, SEAM_ATTRIBUTES zero.
TDX_MODULE_MRSIGNER = bytes(48)
QE_MISCSELECT = 0
QE_MISCSELECT_MASK = 0xFFFFFFFF
QE_ATTRIBUTES = bytes.fromhex("1100000000000000" + "00" * 8)
QE_ATTRIBUTES_MASK = bytes.fromhex("FBFFFFFFFFFFFFFF" + "00" * 8)
QE_ISVPRODID = 2  # Intel's TD quoting enclave


def pcs_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TdxTcbLevel:
    """One ``tcbLevels`` entry: 16 SGX SVNs, PCESVN and 16 TDX SVNs with the status Intel assigns."""

    sgx_svns: tuple[int, ...]
    pcesvn: int
    tdx_svns: tuple[int, ...]
    date: datetime
    status: str = UP_TO_DATE
    advisory_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.sgx_svns) != 16 or len(self.tdx_svns) != 16:
            raise ValueError("a TCB level has 16 SGX and 16 TDX component SVNs")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tcb": {
                "sgxtcbcomponents": [{"svn": v} for v in self.sgx_svns],
                "pcesvn": self.pcesvn,
                "tdxtcbcomponents": [{"svn": v} for v in self.tdx_svns],
            },
            "tcbDate": pcs_time(self.date),
            "tcbStatus": self.status,
        }
        if self.advisory_ids:
            out["advisoryIDs"] = list(self.advisory_ids)
        return out


@dataclass(frozen=True)
class ModuleIdentity:
    """A ``tdxModuleIdentities`` entry: module major version (TEE_TCB_SVN[1]) and its SVN levels."""

    version: int
    levels: tuple[tuple[int, str], ...]  # (isvsvn, status), highest first
    date: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": f"TDX_{self.version:02X}",
            "mrsigner": TDX_MODULE_MRSIGNER.hex().upper(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
            "tcbLevels": [
                {"tcb": {"isvsvn": svn}, "tcbDate": pcs_time(self.date), "tcbStatus": status}
                for svn, status in self.levels
            ],
        }


@dataclass(frozen=True)
class Validity:
    issue_date: datetime
    next_update: datetime
    evaluation_number: int = 17


def tcb_info_body(
    *,
    fmspc: bytes,
    pce_id: bytes,
    levels: Sequence[TdxTcbLevel],
    modules: Sequence[ModuleIdentity],
    validity: Validity,
) -> dict[str, Any]:
    return {
        "id": "TDX",
        "version": 3,
        "issueDate": pcs_time(validity.issue_date),
        "nextUpdate": pcs_time(validity.next_update),
        "fmspc": fmspc.hex(),
        "pceId": pce_id.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": validity.evaluation_number,
        "tdxModule": {
            "mrsigner": TDX_MODULE_MRSIGNER.hex().upper(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        },
        "tdxModuleIdentities": [m.to_json() for m in modules],
        "tcbLevels": [lvl.to_json() for lvl in levels],
    }


@dataclass(frozen=True)
class QeIdentityLevel:
    isvsvn: int
    date: datetime
    status: str = UP_TO_DATE
    advisory_ids: tuple[str, ...] = field(default=())


def qe_identity_body(
    *, mrsigner: bytes, levels: Sequence[QeIdentityLevel], validity: Validity
) -> dict[str, Any]:
    tcb_levels: list[dict[str, Any]] = []
    for lvl in levels:
        entry: dict[str, Any] = {
            "tcb": {"isvsvn": lvl.isvsvn},
            "tcbDate": pcs_time(lvl.date),
            "tcbStatus": lvl.status,
        }
        if lvl.advisory_ids:
            entry["advisoryIDs"] = list(lvl.advisory_ids)
        tcb_levels.append(entry)
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": pcs_time(validity.issue_date),
        "nextUpdate": pcs_time(validity.next_update),
        "tcbEvaluationDataNumber": validity.evaluation_number,
        "miscselect": f"{QE_MISCSELECT:08X}",
        "miscselectMask": f"{QE_MISCSELECT_MASK:08X}",
        "attributes": QE_ATTRIBUTES.hex().upper(),
        "attributesMask": QE_ATTRIBUTES_MASK.hex().upper(),
        "mrsigner": mrsigner.hex().upper(),
        "isvprodid": QE_ISVPRODID,
        "tcbLevels": tcb_levels,
    }


def signed_document(key: str, body: dict[str, Any], signer: Issuer, *, corrupt: bool = False) -> bytes:
    """``{"<key>": <body>, "signature": "<hex r||s>"}``; the signature covers the body's exact bytes."""
    inner = json.dumps(body, separators=(",", ":")).encode()
    if not isinstance(signer.key, ec.EllipticCurvePrivateKey):
        raise TypeError("PCS collateral is signed with the P-256 TCB Signing key")
    signature = bytearray(raw_p256_signature(signer.key, inner))
    if corrupt:
        signature[10] ^= 0x01
    return b'{"' + key.encode() + b'":' + inner + b',"signature":"' + signature.hex().encode() + b'"}'
