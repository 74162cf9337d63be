"""TDX quote v4/v5 parsing (Intel TDX DCAP Quoting Library API, quote format appendix).

Pure and bounds-checked: every length field is checked against the bytes that are actually there, and
every failure is a ``MalformedEvidence`` with a TDX code. Bytes after the signature data (padding or
text some tools append) are tolerated, counted in ``trailing_bytes`` and never read again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from attestation.errors import Code, MalformedEvidence

HEADER_SIZE = 48
TEE_TYPE_TDX = 0x81
ATTESTATION_KEY_TYPE_P256 = 2
BODY_TD10 = 2  # TDX 1.0 TD report, 584 bytes
BODY_TD15 = 3  # TDX 1.5 TD report, 648 bytes
BODY_SGX = 1
BODY_SIZES = {BODY_TD10: 584, BODY_TD15: 648}
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
QE_REPORT_SIZE = 384
SIG_SIZE = 64
KEY_SIZE = 64
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# TD_ATTRIBUTES bits (Intel TDX module ABI)
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
TD_ATTR_PKS = 1 << 30
TD_ATTR_KL = 1 << 31
TD_ATTR_PERFMON = 1 << 63

_HEADER = struct.Struct("<HHI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_DESCRIPTOR = struct.Struct("<HI")

_MALFORMED_HINT = "the quote is truncated or corrupted; capture it again from the TD (configfs-tsm)"


def _malformed(message: str) -> MalformedEvidence:
    return MalformedEvidence(message, code=Code.TDX_QUOTE_MALFORMED, hint=_MALFORMED_HINT)


def _unsupported(message: str) -> MalformedEvidence:
    return MalformedEvidence(
        message,
        code=Code.TDX_UNSUPPORTED_VERSION,
        hint="only TDX quotes v4/v5 with an ECDSA P-256 attestation key and a TD report body are supported",
    )


@dataclass(frozen=True, slots=True)
class QeReport:
    """The fields of the QE's SGX report body that the verifier uses."""

    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes

    @classmethod
    def parse(cls, raw: bytes) -> QeReport:
        if len(raw) != QE_REPORT_SIZE:
            raise _malformed(f"QE report is {len(raw)} bytes, expected {QE_REPORT_SIZE}")
        return cls(
            cpusvn=raw[0:16],
            miscselect=_U32.unpack_from(raw, 16)[0],
            attributes=raw[48:64],
            mrenclave=raw[64:96],
            mrsigner=raw[128:160],
            isvprodid=_U16.unpack_from(raw, 256)[0],
            isvsvn=_U16.unpack_from(raw, 258)[0],
            report_data=raw[320:384],
        )


@dataclass(frozen=True, slots=True)
class TdxQuote:
    """A parsed quote. Body fields are read on access from ``body`` (offsets per the TD report layout)."""

    version: int
    body_type: int
    header: bytes
    body: bytes
    signed_region: bytes
    signature: bytes
    attestation_key: bytes
    certification_data: bytes  # the whole type-6 block: QE report, its signature, auth data, PCK chain
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes  # exactly as carried, including a trailing NUL if present
    signature_data_length: int
    trailing_bytes: int

    # header
    @property
    def attestation_key_type(self) -> int:
        return int(_U16.unpack_from(self.header, 2)[0])

    @property
    def tee_type(self) -> int:
        return int(_U32.unpack_from(self.header, 4)[0])

    @property
    def header_reserved(self) -> bytes:
        return self.header[8:12]

    @property
    def qe_vendor_id(self) -> bytes:
        return self.header[12:28]

    @property
    def user_data(self) -> bytes:
        return self.header[28:48]

    # TD report body
    @property
    def body_size(self) -> int:
        return len(self.body)

    @property
    def tee_tcb_svn(self) -> bytes:
        return self.body[0:16]

    @property
    def mrseam(self) -> bytes:
        return self.body[16:64]

    @property
    def mrsignerseam(self) -> bytes:
        return self.body[64:112]

    @property
    def seam_attributes(self) -> bytes:
        return self.body[112:120]

    @property
    def td_attributes_raw(self) -> bytes:
        return self.body[120:128]

    @property
    def td_attributes(self) -> int:
        return int.from_bytes(self.body[120:128], "little")

    @property
    def debug(self) -> bool:
        return bool(self.body[120] & TD_ATTR_DEBUG)

    @property
    def xfam(self) -> bytes:
        return self.body[128:136]

    @property
    def mrtd(self) -> bytes:
        return self.body[136:184]

    @property
    def mrconfigid(self) -> bytes:
        return self.body[184:232]

    @property
    def mrowner(self) -> bytes:
        return self.body[232:280]

    @property
    def mrownerconfig(self) -> bytes:
        return self.body[280:328]

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        b = self.body
        return (b[328:376], b[376:424], b[424:472], b[472:520])

    @property
    def report_data(self) -> bytes:
        return self.body[520:584]

    @property
    def tee_tcb_svn2(self) -> bytes | None:
        return self.body[584:600] if self.body_type == BODY_TD15 else None

    @property
    def mrservicetd(self) -> bytes | None:
        return self.body[600:648] if self.body_type == BODY_TD15 else None

    # signature data
    @property
    def pck_chain_nul_terminated(self) -> bool:
        return self.pck_chain_pem.endswith(b"\x00")

    def td_attributes_decoded(self) -> dict[str, bool]:
        value = self.td_attributes
        return {
            "debug": bool(value & TD_ATTR_DEBUG),
            "sept_ve_disable": bool(value & TD_ATTR_SEPT_VE_DISABLE),
            "pks": bool(value & TD_ATTR_PKS),
            "kl": bool(value & TD_ATTR_KL),
            "perfmon": bool(value & TD_ATTR_PERFMON),
        }


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size
    if end > len(data):
        raise _malformed(f"{what} needs bytes {offset}..{end - 1} but only {len(data)} are present")
    return data[offset:end]


def _parse_header(data: bytes) -> tuple[int, int, int]:
    """Return (version, body_type, body_offset) after checking the header and v5 descriptor."""
    if len(data) < HEADER_SIZE:
        raise _malformed(f"{len(data)} bytes is shorter than the 48-byte quote header")
    version, key_type, tee_type = _HEADER.unpack_from(data, 0)
    if version not in (4, 5):
        raise _unsupported(f"quote version {version} is not supported (4 and 5 are)")
    if key_type != ATTESTATION_KEY_TYPE_P256:
        raise _unsupported(f"attestation key type {key_type} is not supported (2 = ECDSA P-256)")
    if tee_type != TEE_TYPE_TDX:
        raise _unsupported(f"TEE type {tee_type:#x} is not TDX (0x81)")
    if version == 4:
        return version, BODY_TD10, HEADER_SIZE
    body_type, body_size = _DESCRIPTOR.unpack(_take(data, HEADER_SIZE, 6, "v5 body descriptor"))
    if body_type not in BODY_SIZES:
        kind = "an SGX enclave report" if body_type == BODY_SGX else "unknown"
        raise _unsupported(f"v5 body type {body_type} ({kind}) is not a TD report (types 2 and 3)")
    if body_size != BODY_SIZES[body_type]:
        raise _malformed(f"v5 body type {body_type} must be {BODY_SIZES[body_type]} bytes, says {body_size}")
    return version, body_type, HEADER_SIZE + 6


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX quote (v4, or v5 with a TDX 1.0/1.5 body). Raises ``MalformedEvidence`` (TDX codes)."""
    data = bytes(data)
    version, body_type, body_offset = _parse_header(data)
    body_end = body_offset + BODY_SIZES[body_type]
    body = _take(data, body_offset, BODY_SIZES[body_type], "TD report body")
    (sig_len,) = _U32.unpack(_take(data, body_end, 4, "signature data length"))
    sig_data = _take(data, body_end + 4, sig_len, "signature data")
    if sig_len < 2 * SIG_SIZE + 6:
        raise _malformed(f"signature data of {sig_len} bytes cannot hold signature, key and cert header")
    cert_type, cert_len = struct.unpack_from("<HI", sig_data, 128)
    if cert_type != CERT_DATA_QE_REPORT:
        raise _malformed(f"certification data type {cert_type} is not 6 (QE report certification data)")
    if 134 + cert_len != sig_len:
        raise _malformed(f"certification data size {cert_len} does not fill signature data of {sig_len}")
    cert_data = sig_data[134:]
    qe_report, qe_auth, pem = _parse_certification_data(cert_data)
    return TdxQuote(
        version=version,
        body_type=body_type,
        header=data[:HEADER_SIZE],
        body=body,
        signed_region=data[:body_end],
        signature=sig_data[0:64],
        attestation_key=sig_data[64:128],
        certification_data=cert_data,
        qe_report=qe_report,
        qe_report_signature=cert_data[QE_REPORT_SIZE : QE_REPORT_SIZE + SIG_SIZE],
        qe_auth_data=qe_auth,
        pck_chain_pem=pem,
        signature_data_length=sig_len,
        trailing_bytes=len(data) - (body_end + 4 + sig_len),
    )


def _parse_certification_data(cert_data: bytes) -> tuple[bytes, bytes, bytes]:
    """Split type-6 certification data into (QE report, QE auth data, PEM PCK chain)."""
    fixed = QE_REPORT_SIZE + SIG_SIZE
    (auth_len,) = _U16.unpack(_take(cert_data, fixed, 2, "QE auth data size"))
    auth = _take(cert_data, fixed + 2, auth_len, "QE auth data")
    inner_offset = fixed + 2 + auth_len
    inner_type, inner_len = struct.unpack("<HI", _take(cert_data, inner_offset, 6, "inner cert data header"))
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise _malformed(f"inner certification data type {inner_type} is not 5 (PEM PCK chain)")
    if inner_offset + 6 + inner_len != len(cert_data):
        raise _malformed(
            f"PCK chain size {inner_len} does not fill the {len(cert_data)}-byte certification data"
        )
    return cert_data[:QE_REPORT_SIZE], auth, cert_data[inner_offset + 6 :]
