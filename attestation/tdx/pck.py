"""The PCK certificate chain carried in a quote, and the Intel SGX extension of the PCK leaf.

The SGX extension (OID 1.2.840.113741.1.13.1) is defined in Intel's *SGX PCK Certificate and CRL Profile*:
a SEQUENCE of (OID, value) pairs: .1 PPID, .2 TCB (16 component SVNs .2.1-.2.16, PCESVN .2.17,
CPUSVN .2.18), .3 PCE-ID, .4 FMSPC, .5 SGX type, .6 platform instance id, .7 configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import X509_PARSE_ERRORS, ChainInvalid, Code
from attestation.trust import fingerprint

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX_ARC = bytes.fromhex("2a864886f84d010d01")  # DER content of 1.2.840.113741.1.13.1

_CHAIN_HINT = "the quote's PCK certificate chain is not a valid Intel PCK chain; re-provision the platform"


def chain_error(
    message: str, code: Code = Code.TDX_PCK_CHAIN_INVALID, hint: str | None = None
) -> ChainInvalid:
    return ChainInvalid(message, code=code, hint=hint if hint is not None else _CHAIN_HINT)


# --- minimal DER reader (only what the SGX extension needs) ---------------------------------------------


def _tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``offset``; return (tag, content, next offset)."""
    if offset + 2 > len(data):
        raise chain_error("SGX extension: truncated DER element")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 3 or offset + n > len(data):
            raise chain_error("SGX extension: unsupported DER length")
        length = int.from_bytes(data[offset : offset + n], "big")
        offset += n
    end = offset + length
    if end > len(data):
        raise chain_error("SGX extension: DER element overruns its container")
    return tag, data[offset:end], end


def _children(content: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(content):
        tag, value, offset = _tlv(content, offset)
        out.append((tag, value))
    return out


def _pairs(seq_content: bytes) -> dict[bytes, tuple[int, bytes]]:
    """Decode SEQUENCE OF SEQUENCE { OID, value } into {oid-suffix-bytes: (tag, content)}."""
    out: dict[bytes, tuple[int, bytes]] = {}
    for tag, item in _children(seq_content):
        parts = _children(item) if tag == 0x30 else []
        if len(parts) != 2 or parts[0][0] != 0x06 or not parts[0][1].startswith(_SGX_ARC):
            raise chain_error("SGX extension: element is not an (SGX OID, value) pair")
        suffix = parts[0][1][len(_SGX_ARC) :]
        if suffix in out:
            raise chain_error(f"SGX extension: duplicate element {suffix.hex()}")
        out[suffix] = parts[1]
    return out


def _octets(pairs: dict[bytes, tuple[int, bytes]], suffix: bytes, size: int, name: str) -> bytes:
    tag, value = _required(pairs, suffix, name)
    if tag != 0x04 or len(value) != size:
        raise chain_error(f"SGX extension: {name} must be a {size}-byte OCTET STRING")
    return value


def _small_int(pairs: dict[bytes, tuple[int, bytes]], suffix: bytes, name: str, tags: tuple[int, ...]) -> int:
    tag, value = _required(pairs, suffix, name)
    if tag not in tags or not 1 <= len(value) <= 3 or value[0] & 0x80:
        raise chain_error(f"SGX extension: {name} must be a small non-negative INTEGER")
    return int.from_bytes(value, "big")


def _required(pairs: dict[bytes, tuple[int, bytes]], suffix: bytes, name: str) -> tuple[int, bytes]:
    if suffix not in pairs:
        raise chain_error(f"SGX extension: {name} is missing")
    return pairs[suffix]


@dataclass(frozen=True, slots=True)
class SgxExtensions:
    ppid: bytes
    comp_svns: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None


def parse_sgx_extensions(ext_der: bytes) -> SgxExtensions:
    tag, content, end = _tlv(ext_der, 0)
    if tag != 0x30 or end != len(ext_der):
        raise chain_error("SGX extension is not a single DER SEQUENCE")
    top = _pairs(content)
    tcb_tag, tcb_content = _required(top, b"\x02", "TCB")
    if tcb_tag != 0x30:
        raise chain_error("SGX extension: TCB must be a SEQUENCE")
    tcb = _pairs(tcb_content)
    comps = tuple(_small_int(tcb, bytes([2, i]), f"SGX TCB component {i}", (0x02,)) for i in range(1, 17))
    if any(c > 255 for c in comps):
        raise chain_error("SGX extension: TCB component SVNs must be 0..255")
    pcesvn = _small_int(tcb, bytes([2, 17]), "PCESVN", (0x02,))
    if pcesvn > 0xFFFF:
        raise chain_error("SGX extension: PCESVN must fit in 16 bits")
    instance = None
    if b"\x06" in top:
        instance = _octets(top, b"\x06", 16, "platform instance id")
    return SgxExtensions(
        ppid=_octets(top, b"\x01", 16, "PPID"),
        comp_svns=comps,
        pcesvn=pcesvn,
        cpusvn=_octets(tcb, bytes([2, 18]), 16, "CPUSVN"),
        pce_id=_octets(top, b"\x03", 2, "PCE-ID"),
        fmspc=_octets(top, b"\x04", 6, "FMSPC"),
        sgx_type=_small_int(top, b"\x05", "SGX type", (0x0A, 0x02)),
        platform_instance_id=instance,
    )


# --- the chain ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PckChain:
    """A PCK chain whose signatures verified (leaf <- intermediate CA <- self-signed root).

    Time, pinning and revocation are *not* decided here; they depend on ``now``, the trust store and the
    collateral, and are checked per verification against the values kept here.
    """

    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate
    root_der: bytes
    root_sha256: str
    serials: tuple[int, int, int]  # leaf, intermediate, root
    intermediate_spki: bytes  # identifies the PCK CA key (CRL signature memo)
    leaf_issuer_der: bytes  # the PCK CRL must be issued under this name
    root_subject_der: bytes  # the root CA CRL must be issued under this name
    leaf_key: ec.EllipticCurvePublicKey
    sgx: SgxExtensions
    not_before: datetime  # intersection of the three validity windows
    not_after: datetime

    def check_time(self, now: datetime) -> None:
        if self.not_before <= now <= self.not_after:
            return
        for name, cert in (("PCK leaf", self.leaf), ("PCK CA", self.intermediate), ("root CA", self.root)):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise chain_error(
                    f"{name} certificate is valid {cert.not_valid_before_utc.isoformat()} .. "
                    f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
                    code=Code.TDX_CERT_EXPIRED,
                    hint="check the time the verifier runs at (--at), or re-provision the platform's PCK",
                )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verify_issued(child: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """Raise unless ``issuer`` (a CA) signed ``child`` under its name."""
    if not _is_ca(issuer):
        raise chain_error(f"{what}: its issuer is not a CA certificate")
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise chain_error(f"{what}: certificate is not signed by the next certificate in the chain") from None


def load_pck_chain(pem: bytes) -> PckChain:
    """Parse and verify the signatures of the quote's PEM chain (leaf, PCK CA, root)."""
    if pem.endswith(b"\x00"):
        pem = pem[:-1]
    try:
        return _load_pck_chain(pem)
    except X509_PARSE_ERRORS:  # cryptography parses some certificate fields lazily
        raise chain_error("PCK chain: a certificate field does not parse") from None


def _load_pck_chain(pem: bytes) -> PckChain:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except X509_PARSE_ERRORS:
        raise chain_error("PCK chain in the quote is not a PEM certificate list") from None
    if len(certs) != 3:
        raise chain_error(f"PCK chain has {len(certs)} certificates, expected 3 (leaf, PCK CA, root)")
    leaf, intermediate, root = certs
    verify_issued(root, root, "root CA")
    verify_issued(intermediate, root, "PCK CA")
    verify_issued(leaf, intermediate, "PCK leaf")
    if _is_ca(leaf):
        raise chain_error("PCK leaf is a CA certificate")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise chain_error("PCK leaf key is not ECDSA P-256")
    try:
        ext = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    except x509.ExtensionNotFound:
        raise chain_error("PCK leaf has no Intel SGX extension (1.2.840.113741.1.13.1)") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise chain_error("PCK leaf SGX extension has an unexpected type")
    root_der = root.public_bytes(serialization.Encoding.DER)
    certs_windows = [(c.not_valid_before_utc, c.not_valid_after_utc) for c in certs]
    return PckChain(
        leaf=leaf,
        intermediate=intermediate,
        root=root,
        root_der=root_der,
        root_sha256=fingerprint(root_der),
        serials=(leaf.serial_number, intermediate.serial_number, root.serial_number),
        intermediate_spki=intermediate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        leaf_issuer_der=leaf.issuer.public_bytes(),
        root_subject_der=root.subject.public_bytes(),
        leaf_key=key,
        sgx=parse_sgx_extensions(ext.value),
        not_before=max(w[0] for w in certs_windows),
        not_after=min(w[1] for w in certs_windows),
    )
