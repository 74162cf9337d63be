"""Offline revocation for NVIDIA chains: recorded OCSP responses and CRLs, each in its window (pure).

NVIDIA's verifiers ask OCSP on line for every certificate of the device and RIM chains. Here the answers
are collateral recorded on the connected side and passed in as bytes. A certificate's status counts only
from a response about *that* certificate (serial and issuer key hash) signed by its issuer (or by a
responder the issuer delegated to with the OCSP-signing purpose), or from a CRL signed by its issuer:

* an authentic "revoked" statement at or before ``now`` -> ``GPU_REVOKED`` (windows do not matter);
* an authentic "good" answer whose [thisUpdate, nextUpdate] holds ``now`` -> good;
* only authentic answers outside their window -> ``GPU_COLLATERAL_EXPIRED``;
* nothing authentic (or only "unknown") -> ``GPU_COLLATERAL_MISSING``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from attestation.errors import X509_PARSE_ERRORS, ChainInvalid, Code, CollateralError


class GpuCollateral:
    """Recorded OCSP responses and CRLs (DER) for the GPU device and RIM chains, parsed once.

    Items that do not parse, and OCSP responses whose status is not "successful", are kept out: they
    answer nothing, and a certificate left without an answer is judged missing.
    """

    def __init__(self, ocsp_responses: Sequence[bytes] = (), crls: Sequence[bytes] = ()) -> None:
        self.responses: tuple[ocsp.OCSPResponse, ...] = tuple(_load_ocsp(ocsp_responses))
        self.crls: tuple[x509.CertificateRevocationList, ...] = tuple(_load_crls(crls))

    def __repr__(self) -> str:
        return f"GpuCollateral(ocsp={len(self.responses)}, crls={len(self.crls)})"


def _load_ocsp(items: Sequence[bytes]) -> list[ocsp.OCSPResponse]:
    out = []
    for raw in items:
        try:
            resp = ocsp.load_der_ocsp_response(bytes(raw))
            if resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
                out.append(resp)
        except X509_PARSE_ERRORS:
            continue
    return out


def _load_crls(items: Sequence[bytes]) -> list[x509.CertificateRevocationList]:
    out = []
    for raw in items:
        try:
            out.append(x509.load_der_x509_crl(bytes(raw)))
        except X509_PARSE_ERRORS:
            continue
    return out


@dataclass(frozen=True)
class RevocationResult:
    checked: int  # certificates whose status was established
    valid_until: datetime | None  # earliest nextUpdate among the answers used


def _verify_signature(
    key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    if algorithm is None:
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """RFC 6960 issuerKeyHash: the hash of the issuer's subjectPublicKey BIT STRING contents."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    elif isinstance(key, rsa.RSAPublicKey):
        raw = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        return b""
    digest = hashes.Hash(algorithm)
    digest.update(raw)
    return digest.finalize()


def _ocsp_signed_by_issuer(resp: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> bool:
    algorithm = resp.signature_hash_algorithm
    if _verify_signature(issuer.public_key(), resp.signature, resp.tbs_response_bytes, algorithm):
        return True
    for responder in resp.certificates:  # a delegated responder, issued by the issuer for OCSP signing
        try:
            responder.verify_directly_issued_by(issuer)
            eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            continue
        if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
            continue
        if _verify_signature(responder.public_key(), resp.signature, resp.tbs_response_bytes, algorithm):
            return True
    return False


class _Verdicts:
    def __init__(self) -> None:
        self.good_until: datetime | None = None
        self.stale = False
        self.revoked_reason = ""


def _from_ocsp(
    cert: x509.Certificate, issuer: x509.Certificate, collateral: GpuCollateral, now: datetime, v: _Verdicts
) -> None:
    for resp in collateral.responses:
        for single in resp.responses:
            if single.serial_number != cert.serial_number:
                continue
            if single.issuer_key_hash != _key_hash(issuer, single.hash_algorithm):
                continue
            if not _ocsp_signed_by_issuer(resp, issuer, now):
                continue
            status = single.certificate_status
            if status == ocsp.OCSPCertStatus.REVOKED:
                when = single.revocation_time_utc
                if when is None or when <= now:
                    v.revoked_reason = f"OCSP: revoked at {when:%Y-%m-%d}" if when else "OCSP: revoked"
                continue
            if status != ocsp.OCSPCertStatus.GOOD:
                continue
            nxt = single.next_update_utc
            if nxt is not None and single.this_update_utc <= now <= nxt:
                v.good_until = nxt if v.good_until is None else max(v.good_until, nxt)
            else:
                v.stale = True


def _from_crls(
    cert: x509.Certificate, issuer: x509.Certificate, collateral: GpuCollateral, now: datetime, v: _Verdicts
) -> None:
    for crl in collateral.crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                continue
        except (TypeError, ValueError):
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None and entry.revocation_date_utc <= now:
            v.revoked_reason = (
                f"CRL of {issuer.subject.rfc4514_string()}: revoked {entry.revocation_date_utc:%Y-%m-%d}"
            )
            continue
        nxt = crl.next_update_utc
        if nxt is not None and crl.last_update_utc <= now <= nxt:
            v.good_until = nxt if v.good_until is None else max(v.good_until, nxt)
        else:
            v.stale = True


def check_revocation(
    certs: Sequence[x509.Certificate],
    collateral: GpuCollateral,
    *,
    now: datetime,
    what: str,
    first: int = 0,
) -> RevocationResult:
    """Status of ``certs[first:-1]`` (the pinned root is trusted by pin, not by status)."""
    earliest: datetime | None = None
    checked = 0
    for i in range(first, len(certs) - 1):
        cert, issuer = certs[i], certs[i + 1]
        verdicts = _Verdicts()
        _from_ocsp(cert, issuer, collateral, now, verdicts)
        _from_crls(cert, issuer, collateral, now, verdicts)
        name = cert.subject.rfc4514_string()
        if verdicts.revoked_reason:
            raise ChainInvalid(
                f"{what} certificate {i} ({name}) is revoked ({verdicts.revoked_reason})",
                code=Code.GPU_REVOKED,
            )
        if verdicts.good_until is None:
            if verdicts.stale:
                raise CollateralError(
                    f"{what} certificate {i} ({name}): every OCSP response / CRL is outside its window at {now:%Y-%m-%dT%H:%M:%SZ}",
                    code=Code.GPU_COLLATERAL_EXPIRED,
                )
            raise CollateralError(
                f"{what} certificate {i} ({name}): no OCSP response or CRL from its issuer",
                code=Code.GPU_COLLATERAL_MISSING,
            )
        checked += 1
        earliest = verdicts.good_until if earliest is None else min(earliest, verdicts.good_until)
    return RevocationResult(checked=checked, valid_until=earliest)
