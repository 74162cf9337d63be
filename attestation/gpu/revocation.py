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

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from attestation.errors import X509_PARSE_ERRORS, ChainInvalid, Code, CollateralError

MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class _Signer:
    """Who signed a response: nobody we accept (``ok`` False), the issuer, or a delegated responder whose
    own window must hold at ``now``."""

    ok: bool
    not_before: datetime | None = None
    not_after: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        if not self.ok:
            return False
        if self.not_before is None or self.not_after is None:
            return True
        return self.not_before <= now <= self.not_after


_NOBODY = _Signer(ok=False)
_ISSUER = _Signer(ok=True)


class GpuCollateral:
    """Recorded OCSP responses and CRLs (DER) for the GPU device and RIM chains, parsed once.

    Items that do not parse, and OCSP responses whose status is not "successful", are kept out: they
    answer nothing, and a certificate left without an answer is judged missing.
    """

    def __init__(self, ocsp_responses: Sequence[bytes] = (), crls: Sequence[bytes] = ()) -> None:
        self.responses: tuple[ocsp.OCSPResponse, ...] = tuple(_load_ocsp(ocsp_responses))
        self.crls: tuple[x509.CertificateRevocationList, ...] = tuple(_load_crls(crls))
        # Signature checks are remembered per (item, issuer certificate): verified once per collateral set.
        # Windows and statuses are judged at every call.
        self._signed: dict[tuple[str, int, bytes], _Signer] = {}
        self._statements: dict[tuple[tuple[bytes, ...], int], tuple[tuple[_Statement, ...], ...]] = {}
        # A chain's "good" verdict and the open time interval in which nothing can change it.
        self._verdicts: dict[tuple[tuple[bytes, ...], int], tuple[datetime, datetime, RevocationResult]] = {}
        self._lock = threading.Lock()

    def signer(
        self, kind: str, index: int, issuer: x509.Certificate, check: Callable[[], _Signer]
    ) -> _Signer:
        key = (kind, index, issuer.fingerprint(hashes.SHA256()))
        with self._lock:
            known = self._signed.get(key)
        if known is None:
            known = check()
            with self._lock:
                self._signed[key] = known
        return known

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


def _crl_signer(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> _Signer:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return _NOBODY
    try:
        return _ISSUER if crl.is_signature_valid(key) else _NOBODY
    except (TypeError, ValueError):
        return _NOBODY


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


def _ocsp_signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> _Signer:
    algorithm = resp.signature_hash_algorithm
    if _verify_signature(issuer.public_key(), resp.signature, resp.tbs_response_bytes, algorithm):
        return _ISSUER
    for responder in resp.certificates:  # a delegated responder, issued by the issuer for OCSP signing
        try:
            responder.verify_directly_issued_by(issuer)
            eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            continue
        if _verify_signature(responder.public_key(), resp.signature, resp.tbs_response_bytes, algorithm):
            return _Signer(True, responder.not_valid_before_utc, responder.not_valid_after_utc)
    return _NOBODY


def ocsp_signed_by(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> bool:
    """Whether ``issuer`` (or a responder it delegated to, valid at ``now``) signed ``response``."""
    return _ocsp_signer(response, issuer).valid_at(now)


@dataclass(frozen=True)
class _Statement:
    """One authentic answer about one certificate; judged against ``now`` at every call."""

    revoked_at: datetime | None  # set: revoked from then on; None: good
    this_update: datetime
    next_update: datetime | None
    signer: _Signer
    source: str


def _ocsp_statements(
    cert: x509.Certificate, issuer: x509.Certificate, collateral: GpuCollateral
) -> list[_Statement]:
    out = []
    for n, resp in enumerate(collateral.responses):
        for single in resp.responses:
            if single.serial_number != cert.serial_number:
                continue
            if single.issuer_key_hash != _key_hash(issuer, single.hash_algorithm):
                continue
            signer = collateral.signer("ocsp", n, issuer, partial(_ocsp_signer, resp, issuer))
            if not signer.ok:
                continue
            status = single.certificate_status
            if status == ocsp.OCSPCertStatus.UNKNOWN:
                continue  # "unknown" answers nothing
            revoked_at = None
            if status == ocsp.OCSPCertStatus.REVOKED:
                revoked_at = single.revocation_time_utc or single.this_update_utc
            out.append(_Statement(revoked_at, single.this_update_utc, single.next_update_utc, signer, "OCSP"))
    return out


def _crl_statements(
    cert: x509.Certificate, issuer: x509.Certificate, collateral: GpuCollateral
) -> list[_Statement]:
    out = []
    for n, crl in enumerate(collateral.crls):
        if crl.issuer != issuer.subject:
            continue
        signer = collateral.signer("crl", n, issuer, partial(_crl_signer, crl, issuer))
        if not signer.ok:
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        revoked_at = entry.revocation_date_utc if entry is not None else None
        out.append(_Statement(revoked_at, crl.last_update_utc, crl.next_update_utc, signer, "CRL"))
    return out


def _chain_statements(
    certs: Sequence[x509.Certificate], ders: tuple[bytes, ...], first: int, collateral: GpuCollateral
) -> tuple[tuple[_Statement, ...], ...]:
    """Authentic statements for ``certs[first:-1]``, worked out once per chain and collateral set."""
    key = (ders, first)
    with collateral._lock:
        known = collateral._statements.get(key)
    if known is None:
        known = tuple(
            tuple(
                _ocsp_statements(certs[i], certs[i + 1], collateral)
                + _crl_statements(certs[i], certs[i + 1], collateral)
            )
            for i in range(first, len(certs) - 1)
        )
        with collateral._lock:
            if len(collateral._statements) >= MAX_REMEMBERED:
                collateral._statements.clear()
            collateral._statements[key] = known
    return known


def check_revocation(
    certs: Sequence[x509.Certificate],
    ders: tuple[bytes, ...],
    collateral: GpuCollateral,
    *,
    now: datetime,
    what: str,
    first: int = 0,
) -> RevocationResult:
    """Status of ``certs[first:-1]`` (``ders`` are the same certificates' DER, the cache key); the pinned
    root is trusted by pin, not by status."""
    chain_statements = _chain_statements(certs, ders, first, collateral)
    key = (ders, first)
    with collateral._lock:
        known = collateral._verdicts.get(key)
    if known is not None and known[0] < now < known[1]:
        return known[2]
    result = _judge(certs, chain_statements, collateral, now=now, what=what, first=first)
    # A "good" verdict holds until the next moment any statement or responder window starts or ends:
    # strictly between two such moments every comparison below has the same outcome.
    moments = [
        t
        for statements in chain_statements
        for st in statements
        for t in (st.this_update, st.next_update, st.revoked_at, st.signer.not_before, st.signer.not_after)
        if t is not None
    ]
    before = [t for t in moments if t < now]
    after = [t for t in moments if t > now]
    if len(before) + len(after) == len(moments):  # ``now`` is not itself one of the moments
        low = max(before) if before else datetime.min.replace(tzinfo=now.tzinfo)
        high = min(after) if after else datetime.max.replace(tzinfo=now.tzinfo)
        with collateral._lock:
            if len(collateral._verdicts) >= MAX_REMEMBERED:
                collateral._verdicts.clear()
            collateral._verdicts[key] = (low, high, result)
    return result


def _judge(
    certs: Sequence[x509.Certificate],
    chain_statements: tuple[tuple[_Statement, ...], ...],
    collateral: GpuCollateral,
    *,
    now: datetime,
    what: str,
    first: int,
) -> RevocationResult:
    earliest: datetime | None = None
    checked = 0
    for i, statements in enumerate(chain_statements, start=first):
        cert = certs[i]
        good_until: datetime | None = None
        stale = False
        for st in statements:
            if not st.signer.valid_at(now):
                continue
            if st.revoked_at is not None:
                if st.revoked_at > now:
                    continue  # a revocation dated later says nothing good about now
                raise ChainInvalid(
                    f"{what} certificate {i} ({cert.subject.rfc4514_string()}) is revoked "
                    f"({st.source}, since {st.revoked_at:%Y-%m-%d})",
                    code=Code.GPU_REVOKED,
                )
            if st.next_update is not None and st.this_update <= now <= st.next_update:
                good_until = st.next_update if good_until is None else max(good_until, st.next_update)
            else:
                stale = True
        if good_until is None:
            name = cert.subject.rfc4514_string()
            if stale:
                raise CollateralError(
                    f"{what} certificate {i} ({name}): every OCSP response / CRL is outside its window "
                    f"at {now:%Y-%m-%dT%H:%M:%SZ}",
                    code=Code.GPU_COLLATERAL_EXPIRED,
                )
            raise CollateralError(
                f"{what} certificate {i} ({name}): no OCSP response or CRL from its issuer",
                code=Code.GPU_COLLATERAL_MISSING,
            )
        checked += 1
        earliest = good_until if earliest is None else min(earliest, good_until)
    return RevocationResult(checked=checked, valid_until=earliest)
