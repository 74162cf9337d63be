"""SEV-SNP ATTESTATION_REPORT encoder (AMD #56860, "ATTESTATION_REPORT Structure"), 1184 bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation.claims import SnpTcb

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
POLICY_RESERVED_BIT17 = 1 << 17
POLICY_SMT = 1 << 16
POLICY_DEBUG = 1 << 19
DEFAULT_POLICY = POLICY_SMT | POLICY_RESERVED_BIT17
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
# CPUID family, model, stepping written from report version 3 on.
CPUID: dict[str, tuple[int, int, int]] = {
    "Milan": (0x19, 0x01, 0x01),
    "Genoa": (0x19, 0x11, 0x01),
    "Turin": (0x1A, 0x02, 0x01),
}
_FIRMWARE = {"Milan": (1, 55, 29), "Genoa": (1, 55, 43), "Turin": (1, 55, 12)}  # major, minor, build
_PLATFORM_INFO = 0x25  # SMT enabled, ECC enabled, alias check complete (as in the Genoa vector)


def encode_tcb(product: str, tcb: SnpTcb) -> bytes:
    """TCB_VERSION: Milan/Genoa bytes BL, TEE, 0*4, SNP, UCODE; Turin FMC, BL, TEE, SNP, 0*3, UCODE."""
    if product == "Turin":
        return bytes([tcb.fmc or 0, tcb.bootloader, tcb.tee, tcb.snp, 0, 0, 0, tcb.microcode])
    return bytes([tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode])


@dataclass(frozen=True)
class SnpReportFields:
    product: str
    version: int
    policy: int
    vmpl: int
    measurement: bytes
    report_data: bytes
    host_data: bytes
    chip_id: bytes
    tcb: SnpTcb
    signing_key: int
    guest_svn: int = 0
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)


def _fixed(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    return value


def encode_body(f: SnpReportFields) -> bytearray:
    """Bytes 0x000..0x29F (the signed part) followed by a zeroed signature area."""
    if f.version not in (2, 3, 5):
        raise ValueError(f"SNP report version {f.version} is not 2, 3 or 5")
    tcb = encode_tcb(f.product, f.tcb)
    out = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", out, 0x000, f.version, f.guest_svn, f.policy)
    out[0x010:0x020] = _fixed("family_id", f.family_id, 16)
    out[0x020:0x030] = _fixed("image_id", f.image_id, 16)
    struct.pack_into("<II", out, 0x030, f.vmpl, 1)  # SIGNATURE_ALGO 1 = ECDSA P-384 / SHA-384
    out[0x038:0x040] = tcb  # CURRENT_TCB
    struct.pack_into("<QI", out, 0x040, _PLATFORM_INFO, f.signing_key << 2)
    out[0x050:0x090] = _fixed("report_data", f.report_data, 64)
    out[0x090:0x0C0] = _fixed("measurement", f.measurement, 48)
    out[0x0C0:0x0E0] = _fixed("host_data", f.host_data, 32)
    out[0x0E0:0x110] = _fixed("id_key_digest", f.id_key_digest, 48)
    out[0x110:0x140] = _fixed("author_key_digest", f.author_key_digest, 48)
    out[0x140:0x160] = _fixed("report_id", f.report_id, 32)
    out[0x160:0x180] = b"\xff" * 32  # REPORT_ID_MA: no migration agent
    out[0x180:0x188] = tcb  # REPORTED_TCB
    if f.version >= 3:
        out[0x188:0x18B] = bytes(CPUID[f.product])
    out[0x1A0:0x1E0] = _fixed("chip_id", f.chip_id, 64)
    out[0x1E0:0x1E8] = tcb  # COMMITTED_TCB
    major, minor, build = _FIRMWARE[f.product]
    out[0x1E8:0x1EB] = bytes([build, minor, major])
    out[0x1EC:0x1EF] = bytes([build, minor, major])
    out[0x1F0:0x1F8] = tcb  # LAUNCH_TCB
    # LAUNCH_MIT_VECTOR / CURRENT_MIT_VECTOR (v5) stay zero: no mitigations reported.
    return out


def sign_report(body: bytearray, key: ec.EllipticCurvePrivateKey) -> bytes:
    """ECDSA P-384/SHA-384 over 0x000..0x29F; R and S little-endian in 72-byte fields."""
    der = key.sign(bytes(body[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    body[0x2A0:0x2E8] = r.to_bytes(72, "little")
    body[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(body)
