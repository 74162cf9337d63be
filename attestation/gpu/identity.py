"""What the GPU's leaf certificate says about the device: architecture, FWID, UEID (pure).

The leaf (``GH100 A01 GSP FMC LF`` on Hopper) is made by the GPU's firmware at boot and binds the report
key to the firmware that made it:

* Hopper: NVIDIA's FWID extension, under OID 2.23.133.5.4.1 but in NVIDIA's own shape
  ``SEQUENCE { INTEGER 1, SubjectPublicKeyInfo, SEQUENCE { hashAlg OID, digest OCTET STRING } }``.
* Blackwell: the TCG DICE TcbInfo extension (same OID), ``fwids [6] IMPLICIT SEQUENCE OF
  SEQUENCE { hashAlg, digest }``; the first SHA-384 FWID is the one the report carries.

The device identity (UEID) is the TCG DICE Ueid extension (2.23.133.5.4.4) where the chain has one,
otherwise the NVIDIA device name in the leaf's subjectAltName (``NVIDIA:GH100:<id>``, OtherName
1.3.6.1.4.1.412.274.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from attestation.errors import Code, EndorsementMismatch
from attestation.snp import der

TCG_DICE_TCBINFO = "2.23.133.5.4.1"
TCG_DICE_UEID = "2.23.133.5.4.4"
NVIDIA_DEVICE_NAME = "1.3.6.1.4.1.412.274.1"
SHA384 = "2.16.840.1.101.3.4.2.2"
ARCHITECTURES = {"GH100": "HOPPER", "GB100": "BLACKWELL", "GB102": "BLACKWELL", "GB202": "BLACKWELL"}


@dataclass(frozen=True)
class DeviceIdentity:
    architecture: str  # HOPPER, BLACKWELL
    chip: str  # GH100, GB100, ...
    fwid: bytes
    ueid: str


def _mismatch(message: str) -> EndorsementMismatch:
    return EndorsementMismatch(message, code=Code.GPU_FWID_MISMATCH)


def _ext(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _hopper_fwid(buf: bytes) -> bytes | None:
    top = der.parse_single(buf, der.SEQUENCE)
    parts = der.children(buf, top)
    if len(parts) != 3 or parts[0].tag != der.INTEGER or parts[2].tag != der.SEQUENCE:
        return None
    fwid = der.children(buf, parts[2])
    if len(fwid) != 2 or fwid[0].tag != der.OID or fwid[1].tag != der.OCTET_STRING:
        raise ValueError("FWID is not SEQUENCE { OID, OCTET STRING }")
    if der.decode_oid(fwid[0].content(buf)) != SHA384:
        raise ValueError("FWID hash is not SHA-384")
    return fwid[1].content(buf)


def _dice_fwid(buf: bytes) -> bytes | None:
    top = der.parse_single(buf, der.SEQUENCE)
    for field in der.children(buf, top):
        if field.tag != der.context(6):
            continue
        for fwid in der.children(buf, field):
            parts = der.children(buf, fwid)
            if len(parts) != 2 or parts[0].tag != der.OID or parts[1].tag != der.OCTET_STRING:
                raise ValueError("TcbInfo FWID is not SEQUENCE { OID, OCTET STRING }")
            if der.decode_oid(parts[0].content(buf)) == SHA384:
                return parts[1].content(buf)
    return None


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The SHA-384 FWID the leaf certifies (Hopper shape first, then TCG DICE TcbInfo)."""
    value = _ext(leaf, TCG_DICE_TCBINFO)
    if value is None:
        raise _mismatch("the GPU leaf certificate has no FWID (2.23.133.5.4.1) extension")
    try:
        fwid = _hopper_fwid(value)
        if fwid is None:
            fwid = _dice_fwid(value)
    except ValueError as exc:
        raise _mismatch(f"the GPU leaf FWID extension does not parse: {exc}") from exc
    if fwid is None or len(fwid) != 48:
        raise _mismatch("the GPU leaf FWID extension holds no SHA-384 FWID")
    return fwid


def _device_name(leaf: x509.Certificate) -> str | None:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for name in san.get_values_for_type(x509.OtherName):
        if name.type_id.dotted_string != NVIDIA_DEVICE_NAME:
            continue
        try:
            tlv = der.parse_single(name.value, der.UTF8_STRING)
            return der.decode_string(tlv.tag, tlv.content(name.value))
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _dice_ueid(certs: tuple[x509.Certificate, ...]) -> str | None:
    for cert in certs:
        value = _ext(cert, TCG_DICE_UEID)
        if value is None:
            continue
        try:
            top = der.parse_single(value, der.SEQUENCE)
            parts = der.children(value, top)
        except ValueError:
            return None
        if len(parts) == 1 and parts[0].tag == der.OCTET_STRING:
            return parts[0].content(value).hex()
    return None


def device_identity(certs: tuple[x509.Certificate, ...]) -> DeviceIdentity:
    """Architecture, FWID and UEID from a verified chain (leaf first)."""
    leaf = certs[0]
    name = _device_name(leaf)
    cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common = str(cn[0].value) if cn else ""
    chip = ""
    if name and name.count(":") == 2:
        chip = name.split(":")[1]
    elif common:
        chip = common.split(" ", 1)[0]
    architecture = ARCHITECTURES.get(chip, "UNKNOWN")
    ueid = _dice_ueid(certs) or name
    if not ueid:
        raise EndorsementMismatch(
            "the GPU leaf certificate names no device identity (UEID or NVIDIA device name)",
            code=Code.GPU_CHAIN_UNTRUSTED,
        )
    return DeviceIdentity(architecture=architecture, chip=chip, fwid=leaf_fwid(leaf), ueid=ueid)
