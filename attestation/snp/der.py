"""A minimal, strict DER reader and X.509 certificate splitter (pure).

It exists for AMD VCEK/VLEK certificates, whose serial number is 0: ``cryptography`` 50 loads them with
a deprecation warning and a future release will refuse them. This reader extracts exactly what the SNP
verifier needs (the TBS bytes as signed, names, validity, SubjectPublicKeyInfo, extensions, the
signature) and nothing more. It accepts only definite, minimally encoded lengths and low tag numbers,
and every structure must be consumed exactly. Errors are ``ValueError``; callers map them to codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# Universal tags (class and constructed bits included).
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
T61_STRING = 0x14
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31
_STRING_TAGS = {UTF8_STRING: "utf-8", PRINTABLE_STRING: "ascii", IA5_STRING: "ascii", T61_STRING: "latin-1"}


def context(number: int, *, constructed: bool = True) -> int:
    return 0x80 | (0x20 if constructed else 0) | number


@dataclass(frozen=True)
class Tlv:
    tag: int
    start: int  # offset of the tag byte
    body: int  # offset of the first content byte
    end: int  # offset just past the content

    def content(self, buf: bytes) -> bytes:
        return buf[self.body : self.end]

    def encoding(self, buf: bytes) -> bytes:
        return buf[self.start : self.end]


def read_tlv(buf: bytes, pos: int, end: int) -> Tlv:
    if pos + 2 > end:
        raise ValueError(f"DER: truncated header at offset {pos}")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError(f"DER: high tag numbers are not supported (offset {pos})")
    first = buf[pos + 1]
    body = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError(f"DER: indefinite or oversized length at offset {pos}")
        if body + count > end:
            raise ValueError(f"DER: truncated length at offset {pos}")
        length = int.from_bytes(buf[body : body + count], "big")
        if buf[body] == 0 or length < 0x80:
            raise ValueError(f"DER: non-minimal length at offset {pos}")
        body += count
    if body + length > end:
        raise ValueError(f"DER: element at offset {pos} runs past its container")
    return Tlv(tag, pos, body, body + length)


def expect(buf: bytes, pos: int, end: int, tag: int) -> Tlv:
    tlv = read_tlv(buf, pos, end)
    if tlv.tag != tag:
        raise ValueError(f"DER: expected tag 0x{tag:02x} at offset {pos}, found 0x{tlv.tag:02x}")
    return tlv


def children(buf: bytes, tlv: Tlv) -> list[Tlv]:
    out: list[Tlv] = []
    pos = tlv.body
    while pos < tlv.end:
        child = read_tlv(buf, pos, tlv.end)
        out.append(child)
        pos = child.end
    return out


def parse_single(buf: bytes, tag: int) -> Tlv:
    """The one element that makes up all of ``buf``."""
    tlv = expect(buf, 0, len(buf), tag)
    if tlv.end != len(buf):
        raise ValueError(f"DER: {len(buf) - tlv.end} trailing bytes")
    return tlv


def decode_integer(content: bytes) -> int:
    if not content:
        raise ValueError("DER: empty INTEGER")
    if len(content) > 1 and (
        (content[0] == 0 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)
    ):
        raise ValueError("DER: non-minimal INTEGER")
    return int.from_bytes(content, "big", signed=True)


def decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise ValueError("DER: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(content):
        if value == 0 and byte == 0x80 and (i == 0 or not content[i - 1] & 0x80):
            raise ValueError("DER: non-minimal OBJECT IDENTIFIER arc")
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def decode_string(tag: int, content: bytes) -> str:
    if tag == BMP_STRING:
        return content.decode("utf-16-be")
    encoding = _STRING_TAGS.get(tag)
    if encoding is None:
        raise ValueError(f"DER: tag 0x{tag:02x} is not a supported string type")
    return content.decode(encoding)


def decode_time(tag: int, content: bytes) -> datetime:
    text = content.decode("ascii")
    if tag == UTC_TIME and len(text) == 13 and text.endswith("Z"):
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tag == GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")):
        raise ValueError(f"DER: unsupported time encoding {text!r}")
    if not text[:-1].isdigit():
        raise ValueError(f"DER: malformed time {text!r}")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def decode_boolean(content: bytes) -> bool:
    if content not in (b"\x00", b"\xff"):
        raise ValueError("DER: BOOLEAN must be 0x00 or 0xFF")
    return content == b"\xff"


def name_attributes(buf: bytes, name: Tlv) -> tuple[tuple[str, str], ...]:
    """A Name as ((oid, value), ...) in encoding order; values that are not strings are hex."""
    out: list[tuple[str, str]] = []
    for rdn in children(buf, name):
        if rdn.tag != SET:
            raise ValueError("DER: Name component is not a SET")
        for atv in children(buf, rdn):
            if atv.tag != SEQUENCE:
                raise ValueError("DER: AttributeTypeAndValue is not a SEQUENCE")
            parts = children(buf, atv)
            if len(parts) != 2 or parts[0].tag != OID:
                raise ValueError("DER: malformed AttributeTypeAndValue")
            value = parts[1].content(buf)
            try:
                text = decode_string(parts[1].tag, value)
            except ValueError:
                text = value.hex()
            out.append((decode_oid(parts[0].content(buf)), text))
    return tuple(out)


@dataclass(frozen=True)
class RawExtension:
    critical: bool
    value: bytes  # contents of extnValue (the DER of the extension's own value, or raw bytes)


@dataclass(frozen=True)
class RawCertificate:
    tbs: bytes
    tbs_signature_algorithm: bytes  # full AlgorithmIdentifier DER
    signature_algorithm: bytes
    signature: bytes
    serial: int
    issuer: tuple[tuple[str, str], ...]
    subject: tuple[tuple[str, str], ...]
    not_before: datetime
    not_after: datetime
    spki: bytes
    extensions: dict[str, RawExtension]


def _parse_extensions(buf: bytes, wrapper: Tlv) -> dict[str, RawExtension]:
    exts = children(buf, wrapper)
    if len(exts) != 1 or exts[0].tag != SEQUENCE:
        raise ValueError("DER: [3] extensions must hold one SEQUENCE")
    out: dict[str, RawExtension] = {}
    for ext in children(buf, exts[0]):
        parts = children(buf, ext)
        if ext.tag != SEQUENCE or len(parts) not in (2, 3) or parts[0].tag != OID:
            raise ValueError("DER: malformed Extension")
        critical = False
        if len(parts) == 3:
            if parts[1].tag != BOOLEAN:
                raise ValueError("DER: Extension critical flag is not a BOOLEAN")
            critical = decode_boolean(parts[1].content(buf))
            if not critical:
                raise ValueError("DER: critical FALSE must be omitted (DEFAULT)")
        if parts[-1].tag != OCTET_STRING:
            raise ValueError("DER: extnValue is not an OCTET STRING")
        oid = decode_oid(parts[0].content(buf))
        if oid in out:
            raise ValueError(f"DER: duplicate extension {oid}")
        out[oid] = RawExtension(critical, parts[-1].content(buf))
    return out


def parse_certificate(der: bytes) -> RawCertificate:
    """Split an X.509 v3 certificate into the pieces a verifier needs; the TBS bytes are exact."""
    cert = parse_single(der, SEQUENCE)
    top = children(der, cert)
    if len(top) != 3 or top[0].tag != SEQUENCE or top[1].tag != SEQUENCE or top[2].tag != BIT_STRING:
        raise ValueError("DER: Certificate is not SEQUENCE { tbs, algorithm, BIT STRING }")
    sig_bits = top[2].content(der)
    if not sig_bits or sig_bits[0] != 0:
        raise ValueError("DER: signature BIT STRING has unused bits")
    fields = children(der, top[0])
    if len(fields) < 7:
        raise ValueError("DER: TBSCertificate has too few fields")
    version_wrapper = fields[0]
    if version_wrapper.tag != context(0):
        raise ValueError("DER: only X.509 v3 certificates are supported")
    version = parse_single(version_wrapper.content(der), INTEGER)
    if decode_integer(version.content(version_wrapper.content(der))) != 2:
        raise ValueError("DER: certificate version is not v3")
    serial, algorithm, issuer, validity, subject, spki = fields[1:7]
    if (serial.tag, algorithm.tag, issuer.tag, validity.tag, subject.tag, spki.tag) != (
        INTEGER,
        SEQUENCE,
        SEQUENCE,
        SEQUENCE,
        SEQUENCE,
        SEQUENCE,
    ):
        raise ValueError("DER: TBSCertificate fields have unexpected types")
    times = children(der, validity)
    if len(times) != 2:
        raise ValueError("DER: Validity must hold two times")
    extensions: dict[str, RawExtension] = {}
    for extra in fields[7:]:
        if extra.tag == context(3):
            extensions = _parse_extensions(der, extra)
        elif extra.tag not in (context(1, constructed=False), context(2, constructed=False)):
            raise ValueError(f"DER: unexpected TBSCertificate field tag 0x{extra.tag:02x}")
    return RawCertificate(
        tbs=top[0].encoding(der),
        tbs_signature_algorithm=algorithm.encoding(der),
        signature_algorithm=top[1].encoding(der),
        signature=sig_bits[1:],
        serial=decode_integer(serial.content(der)),
        issuer=name_attributes(der, issuer),
        subject=name_attributes(der, subject),
        not_before=decode_time(times[0].tag, times[0].content(der)),
        not_after=decode_time(times[1].tag, times[1].content(der)),
        spki=spki.encoding(der),
        extensions=extensions,
    )


def parse_pss_sha384(alg_der: bytes) -> int:
    """Check an AlgorithmIdentifier is RSASSA-PSS with SHA-384 and MGF1-SHA-384; return the salt length."""
    alg = parse_single(alg_der, SEQUENCE)
    parts = children(alg_der, alg)
    if len(parts) != 2 or parts[0].tag != OID or decode_oid(parts[0].content(alg_der)) != RSASSA_PSS:
        raise ValueError("signature algorithm is not RSASSA-PSS")
    params = children(alg_der, parts[1])
    salt, trailer, hash_oid, mgf_ok = 20, 1, SHA1, False
    for p in params:
        inner = children(alg_der, p)
        if len(inner) != 1:
            raise ValueError("malformed RSASSA-PSS parameters")
        if p.tag == context(0):
            hash_oid = _algorithm_oid(alg_der, inner[0])
        elif p.tag == context(1):
            mgf = children(alg_der, inner[0])
            mgf_ok = (
                len(mgf) == 2
                and decode_oid(mgf[0].content(alg_der)) == MGF1
                and _algorithm_oid(alg_der, mgf[1]) == SHA384
            )
        elif p.tag == context(2):
            salt = decode_integer(inner[0].content(alg_der))
        elif p.tag == context(3):
            trailer = decode_integer(inner[0].content(alg_der))
        else:
            raise ValueError("unknown RSASSA-PSS parameter")
    if hash_oid != SHA384 or not mgf_ok or trailer != 1:
        raise ValueError("RSASSA-PSS parameters are not SHA-384 with MGF1-SHA-384")
    return salt


def _algorithm_oid(buf: bytes, tlv: Tlv) -> str:
    parts = children(buf, tlv)
    if tlv.tag != SEQUENCE or not parts or parts[0].tag != OID or len(parts) > 2:
        raise ValueError("malformed AlgorithmIdentifier")
    if len(parts) == 2 and parts[1].encoding(buf) != b"\x05\x00":
        raise ValueError("unexpected hash algorithm parameters")
    return decode_oid(parts[0].content(buf))


RSASSA_PSS = "1.2.840.113549.1.1.10"
MGF1 = "1.2.840.113549.1.1.8"
SHA1 = "1.3.14.3.2.26"
SHA384 = "2.16.840.1.101.3.4.2.2"
