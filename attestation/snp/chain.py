"""The AMD endorsement chain: VCEK -> ASK -> ARK, or VLEK -> ASVK -> ARK (pure).

Every signature is RSASSA-PSS with SHA-384 over the exact TBS bytes; the ARK is self-signed and pinned by
the trust store. Revocation fails closed: a CRL issued by the ARK (AMD KDS ``/vcek/v1/<product>/crl``,
``/vlek/v1/<product>/crl``) that is current at ``now`` is required unless the caller opts out, and then
the result says revocation was not checked. Every CRL a chain CA issued must be signed by it and not
list the next certificate down, current or not. AMD's VCEK- and VLEK-chain CRLs carry the same issuer
and no distribution-point extension, so nothing in their bytes says which chain one covers: any current
ARK CRL counts, and the intermediate is checked against every ARK CRL held.

A chain that verified once is remembered (per collateral) together with the validity window of every
certificate and CRL in it, so later calls only re-check ``now`` against those windows and re-check the pin.
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
_CRL_HINT = (
    "import AMD's current CRL for this product (KDS /vcek/v1/<product>/crl, or /vlek/... for VLEKs): "
    "sovereign collateral import FILE; for archived evidence verify at a time inside a CRL's window, "
    "or opt out explicitly (evidence verify --no-revocation-check)"
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


@dataclass(frozen=True)
class VerifiedPath:
    """What a verified leaf -> intermediate -> ARK path needs re-checked on every call."""

    ark: AmdCertificate
    windows: tuple[Window, ...]  # every certificate (and CRLs below the ARK): all must hold at ``now``
    ark_crls: tuple[Window, ...]  # the ARK's CRLs: one must hold at ``now`` for revocation to count

    def current_crls(self, now: datetime) -> list[Window]:
        return [w for w in self.ark_crls if w.not_before <= now <= w.not_after]


@dataclass(frozen=True)
class ChainResult:
    """The pinned ARK the chain ended in, and whether a current ARK CRL covered the intermediate (and
    until when the latest of them is current)."""

    ark_der: bytes
    revocation_checked: bool
    crl_next_update: datetime | None = None


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
    """Check ``subject`` against every CRL ``issuer`` issued (a revocation in an older or stale CRL still
    counts) and return each CRL's window."""
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
    return windows


def _verify_uncached(
    collateral: SnpCollateral, leaf: AmdCertificate, middle: AmdCertificate, ark: AmdCertificate
) -> VerifiedPath:
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
    ark_crls = _crl_windows(collateral, ark, middle)
    # AMD publishes no CRL below the ARK; one the collateral holds anyway must be current (its newest).
    below = _crl_windows(collateral, middle, leaf)
    if below:
        windows.append(max(below, key=lambda w: w.not_before))
    return VerifiedPath(ark, tuple(windows), tuple(ark_crls))


def _verify_path(
    collateral: SnpCollateral,
    path: tuple[AmdCertificate, AmdCertificate, AmdCertificate],
    *,
    trust: TrustStore,
    product: str,
    now: datetime,
    require_revocation: bool,
) -> ChainResult:
    leaf, middle, ark = path
    key = (leaf.fingerprint, middle.fingerprint, ark.fingerprint)
    verified: VerifiedPath | None = collateral.memo.get(key)
    if verified is None:
        verified = _verify_uncached(collateral, leaf, middle, ark)
        if len(collateral.memo) >= _MAX_MEMO:
            collateral.memo.clear()
        collateral.memo[key] = verified
    result = _check_known(trust, product, verified, now=now, require_revocation=require_revocation)
    collateral.memo[leaf.fingerprint] = verified  # the leaf's last fully good path
    return result


def _check_known(
    trust: TrustStore, product: str, path: VerifiedPath, *, now: datetime, require_revocation: bool
) -> ChainResult:
    trust.check_amd_root(product, path.ark.der)
    for window in path.windows:
        window.check(now)
    current = path.current_crls(now)
    if require_revocation and not current:
        _refuse_unchecked_revocation(path, product, now)
    until = max((w.not_after for w in current), default=None)
    return ChainResult(path.ark.der, revocation_checked=bool(current), crl_next_update=until)


def _refuse_unchecked_revocation(path: VerifiedPath, product: str, now: datetime) -> None:
    if not path.ark_crls:
        raise ChainInvalid(
            f"no CRL issued by 'ARK-{product}' in the collateral, so revocation of the intermediate "
            "cannot be checked",
            code=Code.SNP_CRL_MISSING,
            hint=_CRL_HINT,
        )
    newest = max(path.ark_crls, key=lambda w: w.not_before)
    raise ChainInvalid(
        f"no CRL issued by 'ARK-{product}' is current at {now.isoformat()}; the newest, {newest.what}, "
        f"is valid from {newest.not_before.isoformat()} to {newest.not_after.isoformat()}",
        code=Code.SNP_CRL_EXPIRED,
        hint=_CRL_HINT,
    )


def verify_chain(
    leaf: AmdCertificate,
    *,
    product: str,
    trust: TrustStore,
    collateral: SnpCollateral,
    endorsements: CertPool,
    now: datetime,
    require_revocation: bool = True,
) -> ChainResult:
    """Raise unless ``leaf`` chains through the product's ASK/ASVK to its pinned ARK, valid at ``now``,
    with a current ARK CRL not listing the intermediate (``require_revocation=False``: a missing or
    stale CRL is reported in the result instead of refused; a listed revocation is always refused).

    Candidates come from the collateral first, then from the endorsements; the first path that verifies
    wins, otherwise the first path's error is raised.
    """
    middle_cn = f"SEV-VLEK-{product}" if leaf.role is Role.VLEK else f"SEV-{product}"
    ark_cn = f"ARK-{product}"
    if leaf.issuer_cn != middle_cn:
        raise _invalid(
            f"'{leaf.subject_cn}' is issued by '{leaf.issuer_cn}'; a {product} chain needs '{middle_cn}'"
        )
    known: VerifiedPath | None = collateral.memo.get(leaf.fingerprint)
    if known is not None:  # fast path: the path that verified last time for this leaf
        try:
            return _check_known(trust, product, known, now=now, require_revocation=require_revocation)
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
                return _verify_path(
                    collateral,
                    (leaf, middle, ark),
                    trust=trust,
                    product=product,
                    now=now,
                    require_revocation=require_revocation,
                )
            except AttestationError as exc:
                first_error = first_error or exc
    raise first_error or _invalid(f"no chain from '{leaf.subject_cn}' to '{ark_cn}'")
