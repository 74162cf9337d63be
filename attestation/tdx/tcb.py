"""TCB level matching and status convergence, following Intel's Quote Verification Library.

* TCB level: the first level (Intel lists them highest first) whose 16 SGX component SVNs and PCESVN are
  all <= the PCK certificate's, and whose 16 TDX component SVNs are all <= TEE_TCB_SVN. When
  TEE_TCB_SVN[1] (the TDX module major version) is non-zero, bytes 0 and 1 are skipped: the module is
  then judged by its own identity ``TDX_<major>`` from ``tdxModuleIdentities``.
* TDX module: MRSIGNERSEAM must equal the module identity's mrsigner and SEAM_ATTRIBUTES must be zero and
  equal its attributes. Its level is the first with isvsvn <= TEE_TCB_SVN[0].
* Convergence: a module or QE status of OutOfDate turns UpToDate/SWHardeningNeeded into OutOfDate and
  the Configuration* statuses into OutOfDateConfigurationNeeded; Revoked anywhere is Revoked.
* QE identity: MISCSELECT and ATTRIBUTES under their masks, MRSIGNER and ISVPRODID equal; QE level is the
  first with isvsvn <= the QE report's ISVSVN (none: not supported).
"""

from __future__ import annotations

from dataclasses import dataclass

from attestation.claims import TcbStatus
from attestation.errors import Code, CollateralError, EndorsementMismatch, TcbError
from attestation.tdx.pcs import IsvLevel, ModuleIdentity, QeIdentity, TcbInfo, TcbLevel
from attestation.tdx.quote import QeReport

_TCB_HINT = "the platform's firmware/TDX module is below every TCB level Intel lists; update it"


def _not_matched(message: str) -> TcbError:
    return TcbError(message, code=Code.TDX_TCB_NOT_MATCHED, hint=_TCB_HINT)


def converge(status: TcbStatus, other: TcbStatus) -> TcbStatus:
    """Fold a module/QE status (UpToDate, OutOfDate or Revoked) into a TCB level status."""
    if other is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    if other is TcbStatus.OUT_OF_DATE:
        if status in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE
        if status in (TcbStatus.CONFIGURATION_NEEDED, TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    return status


@dataclass(frozen=True, slots=True)
class QeResult:
    status: TcbStatus
    level: IsvLevel


def check_qe_identity(identity: QeIdentity, report: QeReport) -> QeResult:
    """Match the QE report against the TD_QE identity; return its TCB level or raise."""
    mismatches = []
    if report.miscselect & identity.miscselect_mask != identity.miscselect:
        mismatches.append(f"MISCSELECT {report.miscselect:#010x}")
    masked = bytes(a & m for a, m in zip(report.attributes, identity.attributes_mask, strict=True))
    if masked != identity.attributes:
        mismatches.append(f"ATTRIBUTES {report.attributes.hex()}")
    if report.mrsigner != identity.mrsigner:
        mismatches.append(f"MRSIGNER {report.mrsigner.hex()}")
    if report.isvprodid != identity.isvprodid:
        mismatches.append(f"ISVPRODID {report.isvprodid}")
    if mismatches:
        raise EndorsementMismatch(
            "QE report does not match Intel's TD_QE identity: " + ", ".join(mismatches),
            code=Code.TDX_QE_IDENTITY_MISMATCH,
            hint="the quote was not produced by Intel's TDX quoting enclave",
        )
    for level in identity.levels:
        if report.isvsvn >= level.isvsvn:
            return QeResult(TcbStatus(level.status), level)
    raise _not_matched(f"QE ISVSVN {report.isvsvn} is below every TD_QE TCB level")


@dataclass(frozen=True, slots=True)
class TcbResult:
    status: TcbStatus  # converged over platform level, TDX module and QE
    level: TcbLevel
    module_status: TcbStatus
    module_level: IsvLevel | None
    qe: QeResult
    advisory_ids: tuple[str, ...]
    relaunch_advised: bool


def _module_identity(info: TcbInfo, tee_tcb_svn: bytes) -> ModuleIdentity:
    major = tee_tcb_svn[1]
    if major == 0:
        return info.module
    if info.module_identities is None:
        raise CollateralError(
            f"TDX module major version {major} needs tdxModuleIdentities, which this TCB info lacks",
            code=Code.TDX_COLLATERAL_MISMATCH,
            hint="import the current TDX TCB info for this FMSPC from Intel PCS",
        )
    wanted = f"TDX_{major:02X}"
    for identity in info.module_identities:
        if identity.id == wanted:
            return identity
    raise EndorsementMismatch(
        f"TCB info has no TDX module identity {wanted}",
        code=Code.TDX_MODULE_MISMATCH,
        hint="the TDX module is not one Intel lists for this platform",
    )


def check_module(
    info: TcbInfo, tee_tcb_svn: bytes, mrsignerseam: bytes, seam_attributes: bytes
) -> ModuleIdentity:
    identity = _module_identity(info, tee_tcb_svn)
    if mrsignerseam != identity.mrsigner:
        raise EndorsementMismatch(
            f"MRSIGNERSEAM {mrsignerseam.hex()} is not the TDX module signer Intel lists",
            code=Code.TDX_MODULE_MISMATCH,
            hint="the TDX module is not signed by Intel",
        )
    # Intel's QVL requires SEAM_ATTRIBUTES to be all zero *and* equal the listed attributes (mask unused).
    if any(seam_attributes) or seam_attributes != identity.attributes:
        raise EndorsementMismatch(
            f"SEAM_ATTRIBUTES {seam_attributes.hex()} are not the zero attributes Intel lists",
            code=Code.TDX_MODULE_MISMATCH,
            hint="the TDX module runs with non-standard attributes",
        )
    return identity


def _module_level(identity: ModuleIdentity, tee_tcb_svn: bytes) -> IsvLevel | None:
    if tee_tcb_svn[1] == 0:
        return None  # TDX 1.0 style: the module is judged by the TDX components of the TCB level
    for level in identity.levels:
        if tee_tcb_svn[0] >= level.isvsvn:
            return level
    raise _not_matched(f"TDX module ISVSVN {tee_tcb_svn[0]} is below every level of {identity.id}")


def match_levels(
    info: TcbInfo, comp_svns: tuple[int, ...], pcesvn: int, tee_tcb_svn: bytes
) -> tuple[TcbLevel, TcbLevel]:
    """Return (first level the SGX part matches, first level SGX and TDX parts both match)."""
    first = 2 if tee_tcb_svn[1] > 0 else 0
    sgx_level = None
    for level in info.levels:
        if pcesvn < level.pcesvn or any(
            have < need for have, need in zip(comp_svns, level.sgx_svns, strict=True)
        ):
            continue
        sgx_level = sgx_level or level
        if all(tee_tcb_svn[i] >= level.tdx_svns[i] for i in range(first, 16)):
            return sgx_level, level
    if sgx_level is None:
        raise _not_matched(
            f"PCK TCB (SGX SVNs {list(comp_svns)}, PCESVN {pcesvn}) is below every level of the TCB info"
        )
    raise _not_matched(f"TEE_TCB_SVN {tee_tcb_svn.hex()} is below every matching TDX TCB level")


def _relaunch_advised(
    info: TcbInfo,
    *,
    tee_tcb_svn2: bytes,
    sgx_level: TcbLevel,
    tdx_status: TcbStatus,
    module_status: TcbStatus,
    qe_status: TcbStatus,
) -> bool:
    """Intel's TD-relaunch check (TDX 1.5): OutOfDate only because the TD runs on an old module, while
    TEE_TCB_SVN2 shows the platform already has the latest one. Reported as a detail, status unchanged
    (``TcbStatus`` has no TDRelaunchAdvised value, and staying OutOfDate is the conservative answer)."""
    if qe_status is not TcbStatus.UP_TO_DATE:
        return False
    if TcbStatus(sgx_level.status) in (TcbStatus.OUT_OF_DATE, TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED):
        return False  # the SGX/platform part itself is out of date; a relaunch would not help
    if tdx_status not in (TcbStatus.OUT_OF_DATE, TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED):
        return False
    if module_status is not TcbStatus.OUT_OF_DATE or not info.levels:
        return False
    latest = info.levels[0]
    if tee_tcb_svn2[2] < latest.tdx_svns[2]:
        return False
    if tee_tcb_svn2[1] == 0:
        return tee_tcb_svn2[0] >= latest.tdx_svns[0]
    wanted = f"TDX_{tee_tcb_svn2[1]:02X}"
    for identity in info.module_identities or ():
        if identity.id == wanted and identity.levels:
            return tee_tcb_svn2[0] >= identity.levels[0].isvsvn
    return False


def _merge_advisories(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a for group in groups for a in group))


def evaluate(
    info: TcbInfo,
    *,
    comp_svns: tuple[int, ...],
    pcesvn: int,
    tee_tcb_svn: bytes,
    tee_tcb_svn2: bytes | None,
    mrsignerseam: bytes,
    seam_attributes: bytes,
    qe: QeResult,
) -> TcbResult:
    """The converged TCB status of a TD, or ``TcbError`` (not matched / revoked)."""
    identity = check_module(info, tee_tcb_svn, mrsignerseam, seam_attributes)
    sgx_level, level = match_levels(info, comp_svns, pcesvn, tee_tcb_svn)
    module_level = _module_level(identity, tee_tcb_svn)
    module_status = TcbStatus.UP_TO_DATE if module_level is None else TcbStatus(module_level.status)
    tdx_status = converge(TcbStatus(level.status), module_status)
    relaunch = tee_tcb_svn2 is not None and _relaunch_advised(
        info,
        tee_tcb_svn2=tee_tcb_svn2,
        sgx_level=sgx_level,
        tdx_status=tdx_status,
        module_status=module_status,
        qe_status=qe.status,
    )
    status = converge(tdx_status, qe.status)
    advisories = _merge_advisories(
        level.advisory_ids, module_level.advisory_ids if module_level else (), qe.level.advisory_ids
    )
    if status is TcbStatus.REVOKED:
        raise TcbError(
            f"TCB is revoked (platform level {level.status}, TDX module {module_status}, QE {qe.status}); "
            f"advisories: {', '.join(advisories) or 'none'}",
            code=Code.TDX_TCB_REVOKED,
            hint="this platform's TCB was revoked by Intel; it cannot be trusted until updated",
        )
    return TcbResult(
        status=status,
        level=level,
        module_status=module_status,
        module_level=module_level,
        qe=qe,
        advisory_ids=advisories,
        relaunch_advised=relaunch,
    )
