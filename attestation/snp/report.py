"""The SEV-SNP ATTESTATION_REPORT: strict parsing and field decoding (pure).

Layout: AMD SEV-SNP Firmware ABI specification #56860, table "ATTESTATION_REPORT Structure"; offsets in
the vectors' README. All integers are little-endian. Versions 2, 3 and 5 are accepted; version 3 added
the CPUID bytes, version 5 the mitigation vectors. Reserved bytes must be zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from attestation.claims import SnpTcb
from attestation.errors import Code, MalformedEvidence

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 5)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
PRODUCTS = ("Milan", "Genoa", "Turin")

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

_POLICY_RESERVED_ONE = 1 << 17
_POLICY_BITS = {
    "smt_allowed": 16,
    "migration_agent_allowed": 18,
    "debug_allowed": 19,
    "single_socket": 20,
}
_PLATFORM_INFO_BITS = {
    "smt_enabled": 0,
    "tsme_enabled": 1,
    "ecc_enabled": 2,
    "rapl_disabled": 3,
    "ciphertext_hiding_enabled": 4,
    "alias_check_complete": 5,
}
_KEY_INFO_RESERVED = ~0x1F & 0xFFFFFFFF
# (start, end) byte ranges that must be zero in every supported version.
_RESERVED = ((0x04C, 0x050), (0x18B, 0x1A0), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x208, 0x2A0), (0x330, 0x4A0))
_RESERVED_BEFORE_V3 = (0x188, 0x18B)  # CPUID bytes
_RESERVED_BEFORE_V5 = (0x1F8, 0x208)  # mitigation vectors
# Every field from VERSION (0x000) to CURRENT_MIT_VECTOR (0x200..0x207); 'x' pads are reserved bytes.
_LAYOUT = struct.Struct("<IIQ16s16sII8sQI4x64s48s32s48s48s32s32s8sBBB21x64s8s3sx3sx8sQQ")
assert _LAYOUT.size == 0x208
_R = slice(0x2A0, 0x2E8)
_S = slice(0x2E8, 0x330)


def _malformed(message: str, code: Code = Code.SNP_REPORT_MALFORMED) -> MalformedEvidence:
    return MalformedEvidence(message, code=code, hint="the bytes are not a valid SEV-SNP attestation report")


def product_from_cpuid(family: int, model: int) -> str | None:
    """The SNP product for a CPUID family/model (report v3+), or None when it is not a known SNP part."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
        return None
    if family == 0x1A:
        return "Turin"
    return None


def product_family(name: str) -> str | None:
    """'Milan-B0' -> 'Milan'; the stepping suffix is ignored (vectors README quirk 5)."""
    base = name.split("-", 1)[0]
    return base if base in PRODUCTS else None


def decode_tcb(raw: bytes, product: str | None) -> SnpTcb:
    """Decode an 8-byte TCB_VERSION. Turin has FMC first and SNP at byte 3; Milan/Genoa keep SNP at 6."""
    if product == "Turin":
        return SnpTcb(fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], raw=raw)
    return SnpTcb(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], raw=raw)


def _bits(value: int, names: dict[str, int]) -> dict[str, bool]:
    return {name: bool(value >> bit & 1) for name, bit in names.items()}


@dataclass(frozen=True)
class SnpReport:
    """A parsed report. TCB fields are kept raw; ``product`` selects their layout (None: Milan/Genoa)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: bytes
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: bytes
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb_raw: bytes
    current_version: tuple[int, int, int]  # major, minor, build
    committed_version: tuple[int, int, int]
    launch_tcb_raw: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    r: int
    s: int
    product: str | None

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def cpuid_product(self) -> str | None:
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info >> 1 & 1)

    @property
    def signing_key(self) -> int:
        return self.key_info >> 2 & 0x7

    @property
    def abi_minor(self) -> int:
        return self.policy & 0xFF

    @property
    def abi_major(self) -> int:
        return self.policy >> 8 & 0xFF

    @property
    def debug_allowed(self) -> bool:
        return bool(self.policy >> _POLICY_BITS["debug_allowed"] & 1)

    def policy_bits(self) -> dict[str, bool]:
        return _bits(self.policy, _POLICY_BITS)

    def platform_info_bits(self) -> dict[str, bool]:
        return _bits(self.platform_info, _PLATFORM_INFO_BITS)

    @property
    def current_tcb(self) -> SnpTcb:
        return decode_tcb(self.current_tcb_raw, self.product)

    @property
    def reported_tcb(self) -> SnpTcb:
        return decode_tcb(self.reported_tcb_raw, self.product)

    @property
    def committed_tcb(self) -> SnpTcb:
        return decode_tcb(self.committed_tcb_raw, self.product)

    @property
    def launch_tcb(self) -> SnpTcb:
        return decode_tcb(self.launch_tcb_raw, self.product)

    @property
    def platform_chip_id(self) -> bytes:
        """The chip id as the hwID extension carries it: 8 bytes on Turin, 64 otherwise."""
        return self.chip_id[:8] if self.product == "Turin" else self.chip_id

    def details(self) -> dict[str, Any]:
        """JSON-compatible view of every decoded field (no signature). Built on every verification, so
        it is written out flat rather than through ``SnpTcb`` objects."""
        policy, info, product = self.policy, self.platform_info, self.product
        out: dict[str, Any] = {
            "vmpl": self.vmpl,
            "guest_svn": self.guest_svn,
            "abi_major": policy >> 8 & 0xFF,
            "abi_minor": policy & 0xFF,
        }
        for name, bit in _POLICY_BITS.items():
            out[name] = bool(policy >> bit & 1)
        platform: dict[str, Any] = {"raw": info}
        for name, bit in _PLATFORM_INFO_BITS.items():
            platform[name] = bool(info >> bit & 1)
        out["platform_info"] = platform
        out["author_key_en"] = bool(self.key_info & 1)
        out["mask_chip_key"] = bool(self.key_info & 2)
        out["current_tcb"] = tcb_dict(self.current_tcb_raw, product)
        out["committed_tcb"] = tcb_dict(self.committed_tcb_raw, product)
        out["launch_tcb"] = tcb_dict(self.launch_tcb_raw, product)
        out["family_id"] = self.family_id.hex()
        out["image_id"] = self.image_id.hex()
        out["id_key_digest"] = self.id_key_digest.hex()
        out["author_key_digest"] = self.author_key_digest.hex()
        out["report_id"] = self.report_id.hex()
        out["report_id_ma"] = self.report_id_ma.hex()
        out["current_version"] = "{}.{}.{}".format(*self.current_version)
        out["committed_version"] = "{}.{}.{}".format(*self.committed_version)
        if self.cpuid_fam_id is not None:
            out["cpuid"] = {
                "family": self.cpuid_fam_id,
                "model": self.cpuid_mod_id,
                "stepping": self.cpuid_step,
            }
        if self.launch_mit_vector is not None:
            out["launch_mit_vector"] = self.launch_mit_vector
            out["current_mit_vector"] = self.current_mit_vector
        return out


def tcb_dict(raw: bytes, product: str | None) -> dict[str, Any]:
    """Same as ``decode_tcb(raw, product).to_dict()``, without the intermediate object."""
    if product == "Turin":
        return {
            "bootloader": raw[1],
            "tee": raw[2],
            "snp": raw[3],
            "microcode": raw[7],
            "raw": raw.hex(),
            "fmc": raw[0],
        }
    return {"bootloader": raw[0], "tee": raw[1], "snp": raw[6], "microcode": raw[7], "raw": raw.hex()}


_ZEROS = bytes(REPORT_SIZE)


def _check_reserved(data: bytes, start: int, end: int) -> None:
    if data[start:end] != _ZEROS[: end - start]:
        raise _malformed(f"reserved bytes 0x{start:03X}..0x{end - 1:03X} are not zero")


def _check_product(product: str | None) -> None:
    if product is not None and product not in PRODUCTS:
        raise _malformed(f"unknown SEV-SNP product {product!r}; expected one of {', '.join(PRODUCTS)}")


def parse_report(data: bytes, product: str | None = None) -> SnpReport:
    """Parse exactly one 1184-byte report. ``product`` fixes the TCB layout when CPUID is absent (v2).

    For v3+ the product comes from CPUID; a conflicting ``product`` is left to the verifier to reject.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise _malformed(f"report is {len(data)} bytes; an SEV-SNP report is exactly {REPORT_SIZE}")
    _check_product(product)
    (version, guest_svn, policy, family_id, image_id, vmpl, signature_algo, current_tcb, platform_info,
     key_info, report_data, measurement, host_data, id_key_digest, author_key_digest, report_id, report_id_ma,
     reported_tcb, cpuid_fam, cpuid_mod, cpuid_step, chip_id, committed_tcb, current_version, committed_version,
     launch_tcb, launch_mit, current_mit) = _LAYOUT.unpack_from(data)  # fmt: skip
    if version not in SUPPORTED_VERSIONS:
        raise _malformed(
            f"report version {version} is not supported (supported: 2, 3, 5)", Code.SNP_UNSUPPORTED_VERSION
        )
    if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise _malformed(
            f"SIGNATURE_ALGO {signature_algo} is not 1 (ECDSA P-384 with SHA-384)",
            Code.SNP_UNSUPPORTED_SIGNATURE_ALGO,
        )
    if not policy & _POLICY_RESERVED_ONE:
        raise _malformed(f"POLICY 0x{policy:x} has reserved bit 17 clear; the specification requires 1")
    if key_info & _KEY_INFO_RESERVED:
        raise _malformed(f"key info 0x{key_info:x} has reserved bits 31:5 set")
    for start, end in _RESERVED:
        _check_reserved(data, start, end)
    if version < 3:
        _check_reserved(data, *_RESERVED_BEFORE_V3)
    if version < 5:
        _check_reserved(data, *_RESERVED_BEFORE_V5)
    has_cpuid = version >= 3
    has_mit = version >= 5
    cpuid_product = product_from_cpuid(cpuid_fam, cpuid_mod) if has_cpuid else None
    return SnpReport(
        raw=data,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=family_id,
        image_id=image_id,
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb_raw=current_tcb,
        platform_info=platform_info,
        key_info=key_info,
        report_data=report_data,
        measurement=measurement,
        host_data=host_data,
        id_key_digest=id_key_digest,
        author_key_digest=author_key_digest,
        report_id=report_id,
        report_id_ma=report_id_ma,
        reported_tcb_raw=reported_tcb,
        cpuid_fam_id=cpuid_fam if has_cpuid else None,
        cpuid_mod_id=cpuid_mod if has_cpuid else None,
        cpuid_step=cpuid_step if has_cpuid else None,
        chip_id=chip_id,
        committed_tcb_raw=committed_tcb,
        current_version=(current_version[2], current_version[1], current_version[0]),
        committed_version=(committed_version[2], committed_version[1], committed_version[0]),
        launch_tcb_raw=launch_tcb,
        launch_mit_vector=launch_mit if has_mit else None,
        current_mit_vector=current_mit if has_mit else None,
        r=int.from_bytes(data[_R], "little"),
        s=int.from_bytes(data[_S], "little"),
        product=cpuid_product or product,
    )
