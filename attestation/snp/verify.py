"""SEV-SNP report verification: report -> VCEK/VLEK -> ASK/ASVK -> pinned ARK -> ``Claims`` (pure).

Steps, each raising a typed error with its own code: parse; signing key from key info; product (CPUID in
v3+, else the caller's ``product``, else the leaf's productName); leaf chosen by chip id and REPORTED_TCB
(never CURRENT_TCB); leaf extensions must match the report; chain and validity at ``now``; finally the
report's ECDSA P-384 signature with the leaf key. Policy (debug, VMPL, minimum TCB) is not judged here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.claims import Claims, SnpTcb, TcbStatus, Tee
from attestation.errors import (
    AttestationError,
    ChainInvalid,
    Code,
    EndorsementMismatch,
    SignatureInvalid,
)
from attestation.snp.certs import AmdCertificate, AmdExtensions, Role
from attestation.snp.chain import ChainResult, verify_chain
from attestation.snp.collateral import CertPool, SnpCollateral
from attestation.snp.report import (
    PRODUCTS,
    SIGNING_KEY_NONE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    SnpReport,
    decode_tcb,
    parse_report,
    product_family,
    tcb_dict,
)
from attestation.trust import TrustStore

_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())


@dataclass(frozen=True)
class Leaf:
    """A VCEK/VLEK candidate with its decoded AMD extensions and the product it implies."""

    cert: AmdCertificate
    ext: AmdExtensions
    product: str | None


def _mismatch(message: str, code: Code, hint: str = "") -> EndorsementMismatch:
    return EndorsementMismatch(message, code=code, hint=hint or None)


def signing_role(report: SnpReport) -> Role:
    """Which key signed the report, from key info bits 4:2."""
    if report.signing_key == SIGNING_KEY_VCEK:
        return Role.VCEK
    if report.signing_key == SIGNING_KEY_VLEK:
        return Role.VLEK
    reason = (
        "no key (7): the report is unsigned" if report.signing_key == SIGNING_KEY_NONE else "a reserved value"
    )
    raise _mismatch(
        f"report key info names {reason} (SIGNING_KEY={report.signing_key}); only VCEK (0) and VLEK (1) verify",
        Code.SNP_SIGNING_KEY_MISMATCH,
        "request the report with the VCEK or a loaded VLEK",
    )


def resolve_report_product(report: SnpReport, product: str | None) -> SnpReport:
    """v3+: the CPUID product, which must be known and agree with ``product`` if given."""
    if product is not None and product not in PRODUCTS:
        raise _mismatch(
            f"unknown product {product!r}; expected one of {', '.join(PRODUCTS)}", Code.SNP_PRODUCT_MISMATCH
        )
    if report.version < 3:
        return report
    cpuid = report.cpuid_product
    if cpuid is None:
        raise _mismatch(
            f"CPUID family 0x{report.cpuid_fam_id:02x} model 0x{report.cpuid_mod_id:02x} is not a known SEV-SNP product",
            Code.SNP_PRODUCT_MISMATCH,
        )
    if product is not None and product != cpuid:
        raise _mismatch(f"report CPUID says {cpuid}, but {product} was expected", Code.SNP_PRODUCT_MISMATCH)
    return report


def _leaf(cert: AmdCertificate) -> Leaf | None:
    ext = cert.amd
    if ext is None:
        return None
    return Leaf(cert, ext, product_family(ext.product_name or ""))


def _tcb_key(tcb: SnpTcb) -> tuple[int | None, ...]:
    return (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc)


def _fmt_tcb(tcb: SnpTcb) -> str:
    return ", ".join(f"{k}={v}" for k, v in tcb.to_dict().items())


def select_leaves(report: SnpReport, role: Role, pools: Sequence[CertPool]) -> list[Leaf]:
    """VCEKs by chip id then REPORTED_TCB, or VLEKs by product and REPORTED_TCB; collateral first."""
    if role is Role.VCEK:
        keys = [report.platform_chip_id] if report.product else [report.chip_id, report.chip_id[:8]]
        found = [c for pool in pools for key in keys for c in pool.vceks(key)]
        if not found:
            masked = (
                " (MASK_CHIP_KEY is set, so the report carries no chip id)" if report.mask_chip_key else ""
            )
            # A VCEK that came *with* the evidence but names another chip is a mismatch, not a gap.
            presented = [c for c in pools[-1].certificates if c.role is Role.VCEK] if len(pools) > 1 else []
            if presented and not masked:
                amd = presented[0].amd  # None when its AMD extensions are malformed
                chip = (amd.hwid or b"").hex()[:32] if amd is not None else "(unreadable HWID)"
                raise _mismatch(
                    f"the VCEK presented with the evidence is for chip {chip}..., "
                    f"not the report's CHIP_ID {report.chip_id.hex()[:32]}...",
                    Code.SNP_CHIP_ID_MISMATCH,
                    "the endorsement belongs to another machine; capture evidence and certificates together",
                )
            raise _mismatch(
                f"no VCEK for chip id {report.chip_id.hex()[:32]}...{masked}", Code.SNP_ENDORSEMENT_NOT_FOUND
            )
    else:
        found = [c for pool in pools for c in pool.vleks()]
    leaves = [leaf for leaf in map(_leaf, found) if leaf is not None]
    if role is Role.VLEK and report.product is not None:
        leaves = [leaf for leaf in leaves if leaf.product == report.product]
    matching = [
        leaf
        for leaf in leaves
        if leaf.ext.tcb() == _tcb_key(decode_tcb(report.reported_tcb_raw, report.product or leaf.product))
    ]
    if not matching:
        reported = decode_tcb(report.reported_tcb_raw, report.product)
        have = "; ".join(
            f"[bl={x.ext.bl_spl}, tee={x.ext.tee_spl}, snp={x.ext.snp_spl}, ucode={x.ext.ucode_spl}]"
            for x in leaves
        )
        # Endorsements for this chip exist, but for other TCBs: say so distinctly from "nothing found".
        raise _mismatch(
            f"{len(leaves)} {role.value.upper()}(s) considered, none for REPORTED_TCB ({_fmt_tcb(reported)})"
            + (f"; available: {have}" if have else ""),
            Code.SNP_TCB_MISMATCH if leaves else Code.SNP_ENDORSEMENT_NOT_FOUND,
            f"import the {role.value.upper()} for REPORTED_TCB ({_fmt_tcb(reported)}) from AMD's KDS",
        )
    return matching


def check_leaf_matches_report(leaf: Leaf, report: SnpReport, role: Role) -> tuple[SnpReport, str]:
    """The leaf's extensions must agree with the report; returns the report with its product fixed."""
    if leaf.product is None:
        raise _mismatch(
            f"{role.value.upper()} productName {leaf.ext.product_name!r} is not a supported product",
            Code.SNP_PRODUCT_MISMATCH,
        )
    if report.product is not None and report.product != leaf.product:
        raise _mismatch(
            f"report is from a {report.product}, but the {role.value.upper()} is for "
            f"{leaf.ext.product_name!r}",
            Code.SNP_PRODUCT_MISMATCH,
        )
    if report.product is None:
        report = replace(report, product=leaf.product)
    tcb = report.reported_tcb
    if leaf.ext.tcb() != _tcb_key(tcb):
        raise _mismatch(
            f"{role.value.upper()} TCB extensions {leaf.ext.tcb()} differ from REPORTED_TCB ({_fmt_tcb(tcb)})",
            Code.SNP_TCB_MISMATCH,
        )
    if role is Role.VCEK and leaf.ext.hwid != report.platform_chip_id:
        raise _mismatch("VCEK hwID differs from the report's CHIP_ID", Code.SNP_CHIP_ID_MISMATCH)
    if leaf.cert.role is not role:
        raise _mismatch(
            f"report is signed by the {role.value.upper()}, but the certificate is '{leaf.cert.subject_cn}'",
            Code.SNP_SIGNING_KEY_MISMATCH,
        )
    return report, leaf.product


def leaf_key(cert: AmdCertificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ChainInvalid(f"'{cert.subject_cn}' key is not ECDSA P-384", code=Code.SNP_CHAIN_INVALID)
    return key


def verify_report_signature(report: SnpReport, key: ec.EllipticCurvePublicKey) -> None:
    """ECDSA P-384/SHA-384 over bytes 0x000..0x29F; R and S are little-endian in the report."""
    try:
        key.verify(encode_dss_signature(report.r, report.s), report.signed_bytes, _ECDSA_SHA384)
    except InvalidSignature as exc:
        raise SignatureInvalid(
            "report signature does not verify with the endorsement key",
            code=Code.SNP_SIGNATURE_INVALID,
            hint="the report was altered or is not signed by this chip's key",
        ) from exc


def _claims(
    report: SnpReport, product: str, leaf: Leaf, role: Role, *, trust: TrustStore, chain: ChainResult
) -> Claims:
    details: dict[str, Any] = report.details()
    details["signing_key"] = role.value
    details["leaf_product_name"] = leaf.ext.product_name
    if leaf.ext.csp_id is not None:
        details["vlek_csp_id"] = leaf.ext.csp_id
    if chain.crl_next_update is not None:  # re-appraisal denies once the CRL is stale, as for TDX
        details["collateral_expires"] = chain.crl_next_update.isoformat()
    return Claims(
        tee=Tee.SNP,
        product=product,
        version=report.version,
        measurement=report.measurement,
        report_data=report.report_data,
        host_data=report.host_data,
        debug=report.debug_allowed,
        policy=report.policy,
        tcb=tcb_dict(report.reported_tcb_raw, product),
        tcb_status=TcbStatus.NOT_APPLICABLE,
        platform_id=report.platform_chip_id if role is Role.VCEK else b"",
        details=details,
        simulated=trust.is_simulated_root(chain.ark_der),
        revocation_checked=chain.revocation_checked,
    )


def verify_report(
    report: bytes,
    *,
    trust: TrustStore,
    collateral: SnpCollateral,
    now: datetime,
    product: str | None = None,
    endorsements: Sequence[bytes] = (),
    require_revocation: bool = True,
) -> Claims:
    """Verify an SEV-SNP report against pinned AMD roots; return its claims or raise ``AttestationError``.

    ``endorsements`` are DER certificates that came with the evidence (an extended report's certificate
    table); they are trusted only by chaining to the pinned ARK. A current ARK CRL is required
    (``SNP_CRL_MISSING`` / ``SNP_CRL_EXPIRED``) unless ``require_revocation=False``, the explicit opt-out
    for archived evidence, whose claims then say ``revocation_checked=False`` when no CRL was current.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    parsed = resolve_report_product(parse_report(report, product), product)
    role = signing_role(parsed)
    extra = collateral.parse_endorsements(endorsements)
    first_error: AttestationError | None = None
    for leaf in select_leaves(parsed, role, (collateral.pool, extra)):
        try:
            fixed, leaf_product = check_leaf_matches_report(leaf, parsed, role)
            key = leaf_key(leaf.cert)
            chain = verify_chain(
                leaf.cert,
                product=leaf_product,
                trust=trust,
                collateral=collateral,
                endorsements=extra,
                now=now,
                require_revocation=require_revocation,
            )
            verify_report_signature(fixed, key)
        except AttestationError as exc:
            first_error = first_error or exc
            continue
        return _claims(fixed, leaf_product, leaf, role, trust=trust, chain=chain)
    raise first_error or _mismatch("no usable endorsement key", Code.SNP_ENDORSEMENT_NOT_FOUND)
