"""TDX quote verification: signatures, PCK chain, Intel collateral and TCB status -> ``Claims``.

Order of checks (Intel QVL order for the evidence part): PCK chain, QE report signature by the PCK leaf,
QE report-data binding of the attestation key and QE auth data, the quote signature by the attestation
key; then (``verify_quote`` only) CRLs, TCB info, QE identity, TDX module identity and TCB level.

Caching: the certification data (QE report, its PCK signature, PCK chain) is the same for every quote a
platform's QE signs, so its signature checks are memoised by its exact bytes (successes only; what
depends on ``now``, the trust store or the collateral is re-checked on every call). Per quote, only the
quote signature is verified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.claims import Claims, TcbStatus, Tee
from attestation.errors import Code, CollateralError, SignatureInvalid
from attestation.tdx import tcb
from attestation.tdx.collateral import TdxCollateral, check_root, raw_signature_to_der
from attestation.tdx.pck import PckChain, load_pck_chain
from attestation.tdx.quote import QE_REPORT_SIZE, SIG_SIZE, QeReport, TdxQuote, parse_quote
from attestation.trust import TrustStore

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_ZERO32 = bytes(32)


@dataclass(frozen=True, slots=True)
class Platform:
    """Verified certification data: the PCK chain's signatures and the QE report's PCK signature."""

    chain: PckChain
    qe_report: QeReport


@lru_cache(maxsize=256)
def _pck_chain(pem: bytes) -> PckChain:
    return load_pck_chain(pem)


@lru_cache(maxsize=1024)
def _platform(certification_data: bytes) -> Platform:
    qe_report = certification_data[:QE_REPORT_SIZE]
    signature = certification_data[QE_REPORT_SIZE : QE_REPORT_SIZE + SIG_SIZE]
    auth_len = int.from_bytes(certification_data[448:450], "little")
    chain = _pck_chain(certification_data[456 + auth_len :])
    try:
        chain.leaf_key.verify(raw_signature_to_der(signature), qe_report, _ECDSA_SHA256)
    except InvalidSignature:
        raise SignatureInvalid(
            "QE report signature does not verify with the PCK leaf key",
            code=Code.TDX_QE_REPORT_SIGNATURE_INVALID,
            hint="the quote's QE report or PCK chain was altered; capture the quote again",
        ) from None
    return Platform(chain, QeReport.parse(qe_report))


@lru_cache(maxsize=4096)
def _attestation_key(xy: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)


def _utc(now: datetime) -> datetime:
    """``now`` as an aware UTC time (a naive value is taken to be UTC)."""
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


def _verify_evidence(quote: TdxQuote, trust: TrustStore, now: datetime) -> Platform:
    platform = _platform(quote.certification_data)
    check_root(trust, platform.chain.root_der, platform.chain.root_sha256)
    platform.chain.check_time(now)
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    report_data = platform.qe_report.report_data
    if report_data[:32] != expected or report_data[32:] != _ZERO32:
        raise SignatureInvalid(
            "QE report data is not SHA-256(attestation key || QE auth data) || 32 zero bytes",
            code=Code.TDX_QE_BINDING_INVALID,
            hint="the attestation key or QE auth data was altered; capture the quote again",
        )
    try:
        key = _attestation_key(quote.attestation_key)
        key.verify(raw_signature_to_der(quote.signature), quote.signed_region, _ECDSA_SHA256)
    except (ValueError, InvalidSignature):
        raise SignatureInvalid(
            "quote signature does not verify with the attestation key",
            code=Code.TDX_SIGNATURE_INVALID,
            hint="the quote header or TD report was altered; capture the quote again",
        ) from None
    return platform


def _claims(
    quote: TdxQuote,
    platform: Platform,
    trust: TrustStore,
    *,
    status: TcbStatus,
    tcb_extra: dict[str, Any],
    details_extra: dict[str, Any],
    revocation_checked: bool,
    collateral_roots: tuple[bytes, ...] = (),
) -> Claims:
    sgx = platform.chain.sgx
    tee_tcb_svn = quote.tee_tcb_svn
    details: dict[str, Any] = {
        "mrseam": quote.mrseam.hex(),
        "mrsignerseam": quote.mrsignerseam.hex(),
        "seam_attributes": quote.seam_attributes.hex(),
        "xfam": quote.xfam.hex(),
        "mrowner": quote.mrowner.hex(),
        "mrownerconfig": quote.mrownerconfig.hex(),
        "tee_tcb_svn": tee_tcb_svn.hex(),
        "td_attributes": quote.td_attributes_decoded(),
        "body_type": quote.body_type,
        "qe_vendor_id": quote.qe_vendor_id.hex(),
        "pce_id": sgx.pce_id.hex(),
        "fmspc": sgx.fmspc.hex(),
    }
    svn2, service_td = quote.tee_tcb_svn2, quote.mrservicetd
    if svn2 is not None and service_td is not None:
        details["tee_tcb_svn2"] = svn2.hex()
        details["mrservicetd"] = service_td.hex()
    details.update(details_extra)
    return Claims(
        tee=Tee.TDX,
        product="TDX",
        version=quote.version,
        measurement=quote.mrtd,
        report_data=quote.report_data,
        host_data=quote.mrconfigid,
        debug=quote.debug,
        policy=quote.td_attributes,
        tcb={
            "tee_tcb_svn": tee_tcb_svn.hex(),
            "pcesvn": sgx.pcesvn,
            "sgx_components": list(sgx.comp_svns),
            **tcb_extra,
        },
        tcb_status=status,
        platform_id=sgx.fmspc,
        rtmrs=quote.rtmrs,
        details=details,
        simulated=any(trust.is_simulated_root(r) for r in (platform.chain.root_der, *collateral_roots)),
        revocation_checked=revocation_checked,
    )


def verify_quote_signatures(quote: bytes, *, trust: TrustStore, now: datetime) -> Claims:
    """Signatures, binding and PCK chain (pinned, valid at ``now``) only: ``tcb_status`` is UNKNOWN."""
    now = _utc(now)
    parsed = parse_quote(quote)
    platform = _verify_evidence(parsed, trust, now)
    return _claims(
        parsed,
        platform,
        trust,
        status=TcbStatus.UNKNOWN,
        tcb_extra={"tcb_date": None, "tcb_evaluation_data_number": None},
        details_extra={"advisory_ids": [], "qe_tcb_status": None, "collateral_expires": None},
        revocation_checked=False,
    )


def verify_quote(quote: bytes, *, trust: TrustStore, collateral: TdxCollateral, now: datetime) -> Claims:
    """Full verification against Intel collateral; fails closed with a typed ``AttestationError``."""
    now = _utc(now)
    parsed = parse_quote(quote)
    platform = _verify_evidence(parsed, trust, now)
    sgx = platform.chain.sgx
    info, info_signer = collateral.tcb_info(sgx.fmspc, trust, now)
    identity, identity_signer = collateral.qe_identity(trust, now)
    crls = collateral.check_revocation(platform.chain, now, (info_signer, identity_signer))
    tcb_info = info.doc
    if tcb_info.pce_id != sgx.pce_id:
        raise CollateralError(
            f"TCB info PCE-ID {tcb_info.pce_id.hex()} is not the PCK certificate's {sgx.pce_id.hex()}",
            code=Code.TDX_COLLATERAL_MISMATCH,
            hint="import the TCB info Intel PCS serves for this platform's FMSPC",
        )
    qe = tcb.check_qe_identity(identity.doc, platform.qe_report)
    result = tcb.evaluate(
        tcb_info,
        comp_svns=sgx.comp_svns,
        pcesvn=sgx.pcesvn,
        tee_tcb_svn=parsed.tee_tcb_svn,
        tee_tcb_svn2=parsed.tee_tcb_svn2,
        mrsignerseam=parsed.mrsignerseam,
        seam_attributes=parsed.seam_attributes,
        qe=qe,
    )
    expires = min(info.next_update, identity.next_update, *(c.next_update for c in crls))
    return _claims(
        parsed,
        platform,
        trust,
        status=result.status,
        tcb_extra={"tcb_date": result.level.tcb_date, "tcb_evaluation_data_number": info.number},
        details_extra={
            "advisory_ids": list(result.advisory_ids),
            "qe_tcb_status": qe.status.value,
            "tdx_module_tcb_status": result.module_status.value,
            "tcb_level_status": result.level.status,
            "td_relaunch_advised": result.relaunch_advised,
            "collateral_expires": expires.isoformat(),
        },
        revocation_checked=True,  # check_revocation above required current PCK and root CA CRLs
        collateral_roots=(info_signer.root_der, identity_signer.root_der),
    )
