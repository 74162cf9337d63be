"""The AMD endorsement chain: VCEK -> ASK -> ARK, or VLEK -> ASVK -> ARK (pure).

Every signature is RSASSA-PSS with SHA-384 over the exact TBS bytes; the ARK is self-signed and pinned by
the trust store. CRLs issued by a chain CA, if the collateral holds any, must be signed by it, current, and
not list the next certificate down. A chain that verified once is remembered (per collateral) together
with the validity window of every certificate and CRL in it, so later calls only re-check ``now`` against
those windows and re-check the pin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from attestation.errors import AttestationError, ChainInvalid, Code
from attestation.snp.certs import PSS_SHA384, AmdCertificate, Role
from attestation.snp.collateral import CertPool, SnpCollateral
from attestation.trust import TrustStore

_MAX_MEMO = 4096
_CHAIN_HINT = (
    "import the AMD cert_chain (ASK/ASVK and ARK) for this product: sovereign collateral import FILE"
)


@dataclass(frozen=True)
class Window:
    """One certificate's or CRL's validity, re-checked against ``now`` on every call."""

    what: str
    not_before: datetime
    not_after: datetime

    def check(self, now: datetime) -> None:
        if not self.not_before <= now <= self.not_after:
            raise ChainInvalid(
                f"{self.what} is valid from {self.not_before.isoformat()} to {self.not_after.isoformat()}, "
                f"not at {now.isoformat()}",
                code=Code.SNP_CERT_EXPIRED,
            )


def _invalid(message: str) -> ChainInvalid:
    return ChainInvalid(message, code=Code.SNP_CHAIN_INVALID, hint=_CHAIN_HINT)


def _check_signed(cert: AmdCertificate, issuer: AmdCertificate) -> None:
    try:
        cert.verify_signed_by(issuer)
    except (InvalidSignature, ValueError) as exc:
        detail = str(exc) or "RSASSA-PSS SHA-384 signature does not verify"
        raise _invalid(f"'{cert.subject_cn}' is not signed by '{issuer.subject_cn}': {detail}") from exc


def _check_ca(cert: AmdCertificate) -> None:
    try:
        is_ca = cert.is_ca
    except ValueError:
        is_ca = False
    if not is_ca:
        raise _invalid(f"'{cert.subject_cn}' is not a CA certificate (basicConstraints cA is not TRUE)")


def _check_critical(cert: AmdCertificate) -> None:
    if cert.unknown_critical:
        raise _invalid(f"'{cert.subject_cn}' has unknown critical extensions {cert.unknown_critical}")


def _crl_windows(collateral: SnpCollateral, issuer: AmdCertificate, subject: AmdCertificate) -> list[Window]:
    """Check ``subject`` against every CRL ``issuer`` issued (a revocation in an older CRL still counts);
    only the newest CRL must be current, so a superseded CRL left in the store does not fail the chain."""
    windows: list[Window] = []
    key = issuer.public_key
    for crl in collateral.crls_issued_by(issuer):
        what = f"CRL issued by '{issuer.subject_cn}' (sha256 {crl.fingerprint[:16]}...)"
        if not crl.pss_sha384 or not isinstance(key, rsa.RSAPublicKey):
            raise _invalid(f"{what} is not signed with RSASSA-PSS SHA-384")
        try:
            key.verify(crl.signature, crl.tbs, PSS_SHA384, hashes.SHA384())
        except InvalidSignature as exc:
            raise _invalid(f"{what} is not signed by '{issuer.subject_cn}'") from exc
        if crl.next_update is None:
            raise _invalid(f"{what} has no nextUpdate, so it cannot be current")
        if subject.serial in crl.revoked:
            raise ChainInvalid(
                f"'{subject.subject_cn}' (serial 0x{subject.serial:x}) is revoked by {what}",
                code=Code.SNP_CERT_REVOKED,
                hint="AMD revoked this certificate; the platform must not be trusted",
            )
        windows.append(Window(what, crl.this_update, crl.next_update))
    return [max(windows, key=lambda w: w.not_before)] if windows else []


def _verify_uncached(
    collateral: SnpCollateral, leaf: AmdCertificate, middle: AmdCertificate, ark: AmdCertificate
) -> tuple[Window, ...]:
    _check_signed(leaf, middle)
    _check_signed(middle, ark)
    _check_signed(ark, ark)
    for ca in (middle, ark):
        _check_ca(ca)
    for cert in (leaf, middle, ark):
        _check_critical(cert)
    windows = [
        Window(f"certificate '{c.subject_cn}'", c.not_before, c.not_after) for c in (leaf, middle, ark)
    ]
    windows += _crl_windows(collateral, ark, middle)
    windows += _crl_windows(collateral, middle, leaf)
    return tuple(windows)


def _verify_path(
    collateral: SnpCollateral,
    path: tuple[AmdCertificate, AmdCertificate, AmdCertificate],
    *,
    trust: TrustStore,
    product: str,
    now: datetime,
) -> None:
    leaf, middle, ark = path
    key = (leaf.fingerprint, middle.fingerprint, ark.fingerprint)
    windows: tuple[Window, ...] | None = collateral.memo.get(key)
    if windows is None:
        windows = _verify_uncached(collateral, leaf, middle, ark)
        if len(collateral.memo) >= _MAX_MEMO:
            collateral.memo.clear()
        collateral.memo[key] = windows
    _check_known(trust, product, ark, windows, now=now)
    collateral.memo[leaf.fingerprint] = (ark, windows)  # the leaf's last fully good path


def _check_known(
    trust: TrustStore, product: str, ark: AmdCertificate, windows: tuple[Window, ...], *, now: datetime
) -> None:
    trust.check_amd_root(product, ark.der)
    for window in windows:
        window.check(now)


def verify_chain(
    leaf: AmdCertificate,
    *,
    product: str,
    trust: TrustStore,
    collateral: SnpCollateral,
    endorsements: CertPool,
    now: datetime,
) -> None:
    """Raise unless ``leaf`` chains through the product's ASK/ASVK to its pinned ARK, valid at ``now``.

    Candidates come from the collateral first, then from the endorsements; the first path that verifies
    wins, otherwise the first path's error is raised.
    """
    middle_cn = f"SEV-VLEK-{product}" if leaf.role is Role.VLEK else f"SEV-{product}"
    ark_cn = f"ARK-{product}"
    if leaf.issuer_cn != middle_cn:
        raise _invalid(
            f"'{leaf.subject_cn}' is issued by '{leaf.issuer_cn}'; a {product} chain needs '{middle_cn}'"
        )
    known = collateral.memo.get(leaf.fingerprint)
    if known is not None:  # fast path: the path that verified last time for this leaf
        try:
            _check_known(trust, product, *known, now=now)
            return
        except AttestationError:
            pass  # search again below, which reports the precise error
    middles = [c for pool in (collateral.pool, endorsements) for c in pool.issuers_of(leaf)]
    if not middles:
        raise _invalid(f"no '{middle_cn}' certificate in the collateral or the evidence's endorsements")
    first_error: AttestationError | None = None
    for middle in middles:
        if middle.issuer_cn != ark_cn:
            first_error = first_error or _invalid(
                f"'{middle_cn}' is issued by '{middle.issuer_cn}', not '{ark_cn}'"
            )
            continue
        arks = [
            c
            for pool in (collateral.pool, endorsements)
            for c in pool.issuers_of(middle)
            if c.issuer == c.subject
        ]
        if not arks:
            first_error = first_error or _invalid(
                f"no self-signed '{ark_cn}' in the collateral or the evidence's endorsements"
            )
            continue
        for ark in arks:
            try:
                _verify_path(collateral, (leaf, middle, ark), trust=trust, product=product, now=now)
                return
            except AttestationError as exc:
                first_error = first_error or exc
    raise first_error or _invalid(f"no chain from '{leaf.subject_cn}' to '{ark_cn}'")
