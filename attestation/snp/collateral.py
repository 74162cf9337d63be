"""``SnpCollateral``: an immutable in-memory index of AMD certificates and CRLs (pure).

Certificates are parsed once, at build time. Lookups: VCEKs by hwID (chip id), VLEKs, and the CA
certificates (ASK, ASVK, ARK) by role and product. The only mutable state is a memo of chains that have
already verified (see ``attestation.snp.chain``), which never changes what a lookup returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import SignatureAlgorithmOID

from attestation.errors import ChainInvalid, Code, CollateralError
from attestation.snp.certs import (
    AmdCertificate,
    Role,
    load_pem_certificates,
    parse_certificate,
    tolerate_serial_zero,
)

_MAX_MEMO = 4096


@dataclass(frozen=True, eq=False)
class AmdCrl:
    der: bytes
    fingerprint: str
    issuer: tuple[tuple[str, str], ...]
    this_update: datetime
    next_update: datetime | None
    tbs: bytes
    signature: bytes
    pss_sha384: bool
    revoked: frozenset[int]


def parse_crl(data: bytes) -> AmdCrl:
    """Parse one DER CRL; ``ValueError`` if it does not parse."""
    data = bytes(data)
    with tolerate_serial_zero():
        crl = x509.load_der_x509_crl(data)
        revoked = frozenset(entry.serial_number for entry in crl)
    return AmdCrl(
        der=data,
        fingerprint=hashlib.sha256(data).hexdigest(),
        issuer=tuple((a.oid.dotted_string, str(a.value)) for rdn in crl.issuer.rdns for a in rdn),
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        tbs=crl.tbs_certlist_bytes,
        signature=crl.signature,
        pss_sha384=crl.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
        and isinstance(crl.signature_hash_algorithm, hashes.SHA384),
        revoked=revoked,
    )


@dataclass(frozen=True, eq=False)
class CertPool:
    """Parsed certificates indexed for the lookups the verifier makes."""

    certificates: tuple[AmdCertificate, ...] = ()
    by_hwid: dict[bytes, tuple[AmdCertificate, ...]] = field(default_factory=dict)
    by_subject: dict[tuple[tuple[str, str], ...], tuple[AmdCertificate, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, certs: Iterable[AmdCertificate]) -> CertPool:
        unique: dict[str, AmdCertificate] = {}
        for cert in certs:
            unique.setdefault(cert.fingerprint, cert)
        by_hwid: dict[bytes, list[AmdCertificate]] = {}
        by_subject: dict[tuple[tuple[str, str], ...], list[AmdCertificate]] = {}
        for cert in unique.values():
            by_subject.setdefault(cert.subject, []).append(cert)
            if cert.role is Role.VCEK:
                hwid = _hwid(cert)
                if hwid:
                    by_hwid.setdefault(hwid, []).append(cert)
        return cls(
            certificates=tuple(unique.values()),
            by_hwid={k: tuple(v) for k, v in by_hwid.items()},
            by_subject={k: tuple(v) for k, v in by_subject.items()},
        )

    def vceks(self, chip_id: bytes) -> tuple[AmdCertificate, ...]:
        return self.by_hwid.get(chip_id, ())

    def vleks(self) -> tuple[AmdCertificate, ...]:
        return tuple(c for c in self.certificates if c.role is Role.VLEK)

    def issuers_of(self, cert: AmdCertificate) -> tuple[AmdCertificate, ...]:
        return self.by_subject.get(cert.issuer, ())


def _hwid(cert: AmdCertificate) -> bytes | None:
    return cert.amd.hwid if cert.amd is not None else None


@dataclass(frozen=True, eq=False)
class SnpCollateral:
    """AMD certificates and CRLs for SNP verification. Build once with ``from_der``; share freely."""

    pool: CertPool
    crls: tuple[AmdCrl, ...]
    # Verified-chain memo, keyed by certificate fingerprints (see chain.py). Not part of equality.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    _parsed_endorsements: dict[bytes, AmdCertificate] = field(default_factory=dict, repr=False)

    @classmethod
    def from_der(cls, certs: Iterable[bytes], crls: Iterable[bytes] = ()) -> SnpCollateral:
        parsed: list[AmdCertificate] = []
        for i, data in enumerate(certs):
            try:
                parsed.append(parse_certificate(data))
            except ValueError as exc:
                raise CollateralError(
                    f"AMD certificate #{i + 1} does not parse: {exc}",
                    code=Code.COLLATERAL_MALFORMED,
                    hint="import the DER/PEM certificates exactly as AMD KDS serves them",
                ) from exc
        parsed_crls: list[AmdCrl] = []
        for i, data in enumerate(crls):
            try:
                parsed_crls.append(parse_crl(data))
            except ValueError as exc:
                raise CollateralError(
                    f"AMD CRL #{i + 1} does not parse: {exc}",
                    code=Code.COLLATERAL_MALFORMED,
                    hint="import the DER CRL exactly as AMD KDS serves it",
                ) from exc
        unique_crls = {c.fingerprint: c for c in parsed_crls}
        return cls(pool=CertPool.build(parsed), crls=tuple(unique_crls.values()))

    @classmethod
    def from_pem(cls, *pems: bytes, crls: Iterable[bytes] = ()) -> SnpCollateral:
        return cls.from_der([d for pem in pems for d in load_pem_certificates(pem)], crls)

    @classmethod
    def empty(cls) -> SnpCollateral:
        return cls.from_der(())

    def crls_issued_by(self, issuer: AmdCertificate) -> tuple[AmdCrl, ...]:
        return tuple(c for c in self.crls if c.issuer == issuer.subject)

    def parse_endorsements(self, endorsements: Sequence[bytes]) -> CertPool:
        """Certificates that arrived with the evidence; trusted only through the chain to the ARK."""
        if not endorsements:
            return _EMPTY_POOL
        parsed: list[AmdCertificate] = []
        for i, data in enumerate(endorsements):
            key = bytes(data)
            cert = self._parsed_endorsements.get(key)
            if cert is None:
                try:
                    cert = parse_certificate(key)
                except ValueError as exc:
                    raise ChainInvalid(
                        f"endorsement certificate #{i + 1} sent with the evidence does not parse: {exc}",
                        code=Code.SNP_CHAIN_INVALID,
                        hint="send the VCEK/VLEK, ASK/ASVK and ARK as DER certificates",
                    ) from exc
                if len(self._parsed_endorsements) >= _MAX_MEMO:
                    self._parsed_endorsements.clear()
                self._parsed_endorsements[key] = cert
            parsed.append(cert)
        return CertPool.build(parsed)


_EMPTY_POOL = CertPool()
