"""TDX quote encoder (Intel TDX DCAP Quoting Library API, quote v4 and v5, ECDSA-P256 key type 2)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
BODY_TYPE_TDX10 = 2
BODY_TYPE_TDX15 = 3
BODY_SIZE = {BODY_TYPE_TDX10: 584, BODY_TYPE_TDX15: 648}
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28


def _fixed(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    return value


@dataclass(frozen=True)
class TdReportBody:
    tee_tcb_svn: bytes
    mrseam: bytes
    td_attributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    mrsignerseam: bytes = bytes(48)
    seam_attributes: int = 0
    tee_tcb_svn2: bytes = bytes(16)
    mrservicetd: bytes = bytes(48)

    def encode(self, body_type: int) -> bytes:
        if len(self.rtmrs) != 4:
            raise ValueError("rtmrs must be four 48-byte values")
        out = b"".join(
            [
                _fixed("tee_tcb_svn", self.tee_tcb_svn, 16),
                _fixed("mrseam", self.mrseam, 48),
                _fixed("mrsignerseam", self.mrsignerseam, 48),
                struct.pack("<QQQ", self.seam_attributes, self.td_attributes, self.xfam),
                _fixed("mrtd", self.mrtd, 48),
                _fixed("mrconfigid", self.mrconfigid, 48),
                _fixed("mrowner", self.mrowner, 48),
                _fixed("mrownerconfig", self.mrownerconfig, 48),
                *(_fixed(f"rtmr{i}", r, 48) for i, r in enumerate(self.rtmrs)),
                _fixed("report_data", self.report_data, 64),
            ]
        )
        if body_type == BODY_TYPE_TDX15:
            out += _fixed("tee_tcb_svn2", self.tee_tcb_svn2, 16) + _fixed("mrservicetd", self.mrservicetd, 48)
        assert len(out) == BODY_SIZE[body_type]
        return out


@dataclass(frozen=True)
class QeReport:
    """The Quoting Enclave's 384-byte SGX report body (only the fields a verifier reads are set)."""

    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes

    def encode(self) -> bytes:
        out = bytearray(384)
        out[0:16] = _fixed("cpusvn", self.cpusvn, 16)
        struct.pack_into("<I", out, 16, self.miscselect)
        out[48:64] = _fixed("attributes", self.attributes, 16)
        out[64:96] = _fixed("mrenclave", self.mrenclave, 32)
        out[128:160] = _fixed("mrsigner", self.mrsigner, 32)
        struct.pack_into("<HH", out, 256, self.isvprodid, self.isvsvn)
        out[320:384] = _fixed("report_data", self.report_data, 64)
        return bytes(out)


def qe_binding(attestation_key_xy: bytes, auth_data: bytes) -> bytes:
    """QE REPORTDATA: SHA-256(attestation public key || QE auth data) || 32 zero bytes."""
    return hashlib.sha256(attestation_key_xy + auth_data).digest() + bytes(32)


def raw_p256_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def public_xy(key: ec.EllipticCurvePrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


def header(version: int, user_data: bytes) -> bytes:
    return struct.pack(
        "<HHI4s16s20s",
        version,
        ATT_KEY_TYPE_ECDSA_P256,
        TEE_TYPE_TDX,
        bytes(4),
        INTEL_QE_VENDOR_ID,
        _fixed("user_data", user_data, 20),
    )


def signed_region(version: int, body_type: int, user_data: bytes, body: TdReportBody) -> bytes:
    """Header and body (v5: with the 6-byte body descriptor in between): what the quote signs."""
    if version == 4:
        if body_type != BODY_TYPE_TDX10:
            raise ValueError("quote v4 carries only a TDX 1.0 body (type 2)")
        return header(4, user_data) + body.encode(body_type)
    if version == 5:
        if body_type not in BODY_SIZE:
            raise ValueError("quote v5 body type must be 2 (TDX 1.0) or 3 (TDX 1.5)")
        encoded = body.encode(body_type)
        return header(5, user_data) + struct.pack("<HI", body_type, len(encoded)) + encoded
    raise ValueError(f"TDX quote version {version} is not 4 or 5")


def certification_data(qe_report: bytes, qe_report_sig: bytes, auth_data: bytes, pem_chain: bytes) -> bytes:
    """Type-6 certification data: QE report, its signature, QE auth data, then the type-5 PEM chain."""
    return (
        qe_report
        + qe_report_sig
        + struct.pack("<H", len(auth_data))
        + auth_data
        + struct.pack("<HI", CERT_DATA_PCK_CHAIN, len(pem_chain))
        + pem_chain
    )


def quote(signed: bytes, signature: bytes, attestation_key_xy: bytes, cert_data: bytes) -> bytes:
    sig_data = (
        signature + attestation_key_xy + struct.pack("<HI", CERT_DATA_QE_REPORT, len(cert_data)) + cert_data
    )
    return signed + struct.pack("<I", len(sig_data)) + sig_data
