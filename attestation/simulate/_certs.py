"""Certificate and CRL issuing shared by the AMD and Intel halves of the simulator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from attestation.trust import SIMULATOR_ORGANIZATION

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# AMD signs every certificate of the SNP chain with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48.
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class Window:
    """A validity window [not_before, not_after]."""

    not_before: datetime
    not_after: datetime

    @classmethod
    def around(cls, now: datetime, *, days: int) -> Window:
        return cls(now - timedelta(days=1), now + timedelta(days=days))

    @classmethod
    def expired(cls, now: datetime) -> Window:
        return cls(now - timedelta(days=400), now - timedelta(days=1))


def amd_name(common_name: str) -> x509.Name:
    """AMD's attribute order (OU, C, L, ST, O, CN), with the simulator as organisation."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATOR_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def intel_name(common_name: str) -> x509.Name:
    """Intel's attribute order (CN, O, L, ST, C), with the simulator as organisation."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATOR_ORGANIZATION),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


@dataclass(frozen=True)
class Issuer:
    """A CA: its certificate's subject and public key (for the AKI) and its private key."""

    name: x509.Name
    key: SigningKey

    def sign_cert(self, builder: x509.CertificateBuilder, *, key_ids: bool = True) -> x509.Certificate:
        builder = builder.issuer_name(self.name)
        if key_ids:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
            builder = builder.add_extension(aki, critical=False)
        if isinstance(self.key, rsa.RSAPrivateKey):
            return builder.sign(self.key, hashes.SHA384(), rsa_padding=AMD_PSS)
        return builder.sign(self.key, hashes.SHA256())

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        builder = builder.issuer_name(self.name).add_extension(aki, critical=False)
        if isinstance(self.key, rsa.RSAPrivateKey):
            return builder.sign(self.key, hashes.SHA384(), rsa_padding=AMD_PSS)
        return builder.sign(self.key, hashes.SHA256())


def issue(
    issuer: Issuer,
    *,
    subject: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    window: Window,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    serial: int | None = None,
    key_ids: bool = True,
) -> bytes:
    """Issue a certificate and return its DER. ``extensions`` are (value, critical) pairs;
    ``key_ids=False`` leaves out the subject/authority key identifiers (AMD's VCEKs carry none)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(window.not_before)
        .not_valid_after(window.not_after)
    )
    if key_ids:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return issuer.sign_cert(builder, key_ids=key_ids).public_bytes(serialization.Encoding.DER)


def ca_extensions(path_length: int | None) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
    ]


def signer_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    """Intel's PCK and TCB-signing leaves: digitalSignature + nonRepudiation, CA:FALSE."""
    return [
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
        (x509.BasicConstraints(ca=False, path_length=None), True),
    ]


def self_signed(name: x509.Name, key: SigningKey, window: Window, *, path_length: int | None) -> bytes:
    return issue(
        Issuer(name, key),
        subject=name,
        public_key=key.public_key(),
        window=window,
        extensions=ca_extensions(path_length),
    )


def crl(
    issuer: Issuer,
    *,
    revoked_serials: Iterable[int],
    this_update: datetime,
    next_update: datetime,
    number: int = 1,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in sorted(set(revoked_serials)):
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return issuer.sign_crl(builder).public_bytes(serialization.Encoding.DER)


def serial_of(cert_der: bytes) -> int:
    return x509.load_der_x509_certificate(cert_der).serial_number


def ec_key(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve)


def rsa4096() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)
