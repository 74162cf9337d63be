"""AMD certificates (ARK, ASK, ASVK, VCEK, VLEK) parsed once into what the SNP verifier needs (pure).

``cryptography`` is the primary parser. AMD VCEK/VLEK certificates carry serial number 0, which
``cryptography`` 50 accepts with a ``CryptographyDeprecationWarning`` (suppressed here, for exactly that
message) and a later release will refuse; when it refuses, the strict DER reader in
``attestation.snp.der`` takes over. Both paths yield the same ``AmdCertificate``, and every signature is
verified over the exact TBS bytes with the issuer's key, so the fallback trusts nothing it parsed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_der_public_key
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from attestation.errors import X509_PARSE_ERRORS
from attestation.snp import der as asn1
from attestation.snp.report import product_family

# what makes cryptography give up on a certificate that the DER reader below may still take
_FALL_BACK_ON: tuple[type[Exception], ...] = X509_PARSE_ERRORS

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{AMD_OID}.1"
OID_PRODUCT_NAME = f"{AMD_OID}.2"
OID_BL_SPL = f"{AMD_OID}.3.1"
OID_TEE_SPL = f"{AMD_OID}.3.2"
OID_SNP_SPL = f"{AMD_OID}.3.3"
OID_UCODE_SPL = f"{AMD_OID}.3.8"
OID_FMC_SPL = f"{AMD_OID}.3.9"
OID_HWID = f"{AMD_OID}.4"
OID_CSP_ID = f"{AMD_OID}.5"
_CN = NameOID.COMMON_NAME.dotted_string
_BASIC_CONSTRAINTS = ExtensionOID.BASIC_CONSTRAINTS.dotted_string
_KNOWN_CRITICAL = frozenset({_BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE.dotted_string})
_SERIAL_WARNING = r"Parsed a serial number which wasn't positive"
PSS_SALT_LENGTH = 48
PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL)


class Role(StrEnum):
    ARK = "ark"
    ASK = "ask"
    ASVK = "asvk"
    VCEK = "vcek"
    VLEK = "vlek"
    OTHER = "other"


@dataclass(frozen=True)
class AmdExtensions:
    """The VCEK/VLEK extensions under 1.3.6.1.4.1.3704.1 (KDS specification #57230)."""

    struct_version: int | None = None
    product_name: str | None = None
    bl_spl: int | None = None
    tee_spl: int | None = None
    snp_spl: int | None = None
    ucode_spl: int | None = None
    fmc_spl: int | None = None
    hwid: bytes | None = None  # raw chip id bytes: the extension value is not an OCTET STRING
    csp_id: str | None = None

    def tcb(self) -> tuple[int | None, ...]:
        return (self.bl_spl, self.tee_spl, self.snp_spl, self.ucode_spl, self.fmc_spl)


@dataclass(frozen=True, eq=False)
class AmdCertificate:
    der: bytes
    fingerprint: str
    tbs: bytes
    signature: bytes
    pss_sha384: bool  # signatureAlgorithm is RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48
    serial: int
    issuer: tuple[tuple[str, str], ...]
    subject: tuple[tuple[str, str], ...]
    not_before: datetime
    not_after: datetime
    public_key: PublicKeyTypes
    extensions: dict[str, asn1.RawExtension]
    parsed_by: str  # "cryptography" or "der" (the fallback)

    @cached_property
    def subject_cn(self) -> str:
        return _cn(self.subject)

    @cached_property
    def issuer_cn(self) -> str:
        return _cn(self.issuer)

    @property
    def is_ca(self) -> bool:
        ext = self.extensions.get(_BASIC_CONSTRAINTS)
        if ext is None:
            return False
        seq = asn1.parse_single(ext.value, asn1.SEQUENCE)
        items = asn1.children(ext.value, seq)
        return (
            bool(items) and items[0].tag == asn1.BOOLEAN and asn1.decode_boolean(items[0].content(ext.value))
        )

    @property
    def unknown_critical(self) -> list[str]:
        return sorted(
            oid for oid, ext in self.extensions.items() if ext.critical and oid not in _KNOWN_CRITICAL
        )

    @cached_property
    def role(self) -> Role:
        return role_of(self.subject_cn)

    @cached_property
    def product(self) -> str | None:
        """The product named by the CA certificate CNs ('ARK-Milan', 'SEV-Milan', 'SEV-VLEK-Milan')."""
        cn = self.subject_cn if self.role in (Role.ARK, Role.ASK, Role.ASVK) else self.issuer_cn
        return product_family(cn.removeprefix("ARK-").removeprefix("SEV-").removeprefix("VLEK-"))

    @cached_property
    def amd(self) -> AmdExtensions | None:
        """The decoded AMD extensions (computed once), or None if one of them is malformed."""
        try:
            return self.amd_extensions()
        except ValueError:
            return None

    def amd_extensions(self) -> AmdExtensions:
        """Decode the AMD extensions; raises ``ValueError`` if one is malformed."""
        ext = self.extensions

        def integer(oid: str) -> int | None:
            if oid not in ext:
                return None
            value = ext[oid].value
            return asn1.decode_integer(asn1.parse_single(value, asn1.INTEGER).content(value))

        def ia5(oid: str) -> str | None:
            if oid not in ext:
                return None
            value = ext[oid].value
            return asn1.decode_string(
                asn1.IA5_STRING, asn1.parse_single(value, asn1.IA5_STRING).content(value)
            )

        hwid = ext.get(OID_HWID)
        return AmdExtensions(
            struct_version=integer(OID_STRUCT_VERSION),
            product_name=ia5(OID_PRODUCT_NAME),
            bl_spl=integer(OID_BL_SPL),
            tee_spl=integer(OID_TEE_SPL),
            snp_spl=integer(OID_SNP_SPL),
            ucode_spl=integer(OID_UCODE_SPL),
            fmc_spl=integer(OID_FMC_SPL),
            hwid=hwid.value if hwid is not None else None,
            csp_id=ia5(OID_CSP_ID),
        )

    def verify_signed_by(self, issuer: AmdCertificate) -> None:
        """Raise ``InvalidSignature``/``ValueError`` unless ``issuer``'s RSA key PSS-signed our TBS."""
        if not self.pss_sha384:
            raise ValueError(f"'{self.subject_cn}' is not signed with RSASSA-PSS SHA-384 (salt 48)")
        if self.issuer != issuer.subject:
            raise ValueError(
                f"'{self.subject_cn}' names issuer '{self.issuer_cn}', not '{issuer.subject_cn}'"
            )
        key = issuer.public_key
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"issuer '{issuer.subject_cn}' does not have an RSA key")
        key.verify(self.signature, self.tbs, PSS_SHA384, hashes.SHA384())


def role_of(cn: str) -> Role:
    if cn == "SEV-VCEK":
        return Role.VCEK
    if cn == "SEV-VLEK":
        return Role.VLEK
    if cn.startswith("ARK-"):
        return Role.ARK
    if cn.startswith("SEV-VLEK-"):
        return Role.ASVK
    if cn.startswith("SEV-"):
        return Role.ASK
    return Role.OTHER


def _cn(name: tuple[tuple[str, str], ...]) -> str:
    values = [v for oid, v in name if oid == _CN]
    return values[0] if len(values) == 1 else ""


@contextmanager
def tolerate_serial_zero() -> Iterator[None]:
    """Silence cryptography's warning about non-positive serial numbers (AMD VCEK/VLEK), only that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SERIAL_WARNING, category=CryptographyDeprecationWarning)
        yield


def load_pem_certificates(pem: bytes) -> list[bytes]:
    """The DER bytes of every CERTIFICATE block in ``pem``, in order (no parsing beyond base64)."""
    out: list[bytes] = []
    for match in _PEM_CERT.finditer(pem):
        try:
            out.append(base64.b64decode(b"".join(match.group(1).split()), validate=True))
        except ValueError as exc:
            raise ValueError(f"PEM certificate block {len(out) + 1} is not valid base64") from exc
    return out


def parse_certificate(data: bytes, *, force_fallback: bool = False) -> AmdCertificate:
    """Parse one DER certificate; ``ValueError`` if neither parser accepts it."""
    data = bytes(data)
    if not force_fallback:
        try:
            with tolerate_serial_zero():
                return _from_cryptography(data, x509.load_der_x509_certificate(data))
        except _FALL_BACK_ON:
            pass  # e.g. a cryptography release that refuses serial number 0: use the DER reader
    return _from_der(data)


def _from_cryptography(data: bytes, cert: x509.Certificate) -> AmdCertificate:
    def attrs(name: x509.Name) -> tuple[tuple[str, str], ...]:
        return tuple(
            (a.oid.dotted_string, a.value if isinstance(a.value, str) else a.value.hex())
            for rdn in name.rdns
            for a in rdn
        )

    pss = cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS and isinstance(
        cert.signature_hash_algorithm, hashes.SHA384
    )
    return AmdCertificate(
        der=data,
        fingerprint=hashlib.sha256(data).hexdigest(),
        tbs=cert.tbs_certificate_bytes,
        signature=cert.signature,
        pss_sha384=pss,  # MGF1 hash and salt length are enforced by verifying with PSS_SHA384
        serial=cert.serial_number,
        issuer=attrs(cert.issuer),
        subject=attrs(cert.subject),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        public_key=cert.public_key(),
        extensions={
            e.oid.dotted_string: asn1.RawExtension(e.critical, e.value.public_bytes())
            for e in cert.extensions
        },
        parsed_by="cryptography",
    )


def _from_der(data: bytes) -> AmdCertificate:
    raw = asn1.parse_certificate(data)
    if raw.tbs_signature_algorithm != raw.signature_algorithm:
        raise ValueError("TBS signature algorithm differs from the outer signature algorithm")
    try:
        pss = asn1.parse_pss_sha384(raw.signature_algorithm) == PSS_SALT_LENGTH
    except ValueError:
        pss = False
    try:
        key = load_der_public_key(raw.spki)
    except UnsupportedAlgorithm as exc:
        raise ValueError("unsupported public key algorithm") from exc
    return AmdCertificate(
        der=data,
        fingerprint=hashlib.sha256(data).hexdigest(),
        tbs=raw.tbs,
        signature=raw.signature,
        pss_sha384=pss,
        serial=raw.serial,
        issuer=raw.issuer,
        subject=raw.subject,
        not_before=raw.not_before,
        not_after=raw.not_after,
        public_key=key,
        extensions=raw.extensions,
        parsed_by="der",
    )


__all__ = [
    "AmdCertificate",
    "AmdExtensions",
    "Role",
    "load_pem_certificates",
    "parse_certificate",
    "role_of",
]
