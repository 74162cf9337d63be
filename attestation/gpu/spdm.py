"""SPDM 1.1 GET_MEASUREMENTS request and MEASUREMENTS response, parsed by their structure (pure).

NVIDIA GPUs (Hopper, Blackwell) in confidential-computing mode answer ``GET_MEASUREMENTS`` with every
measurement block, the responder nonce, NVIDIA opaque data (type-length-value records) and an ECDSA P-384
signature over request || response-without-signature. Every length comes from the message itself: the
measurement record length, each block's size, the opaque-data length; the signature length comes from the
negotiated algorithm (P-384: r || s, 48 bytes each). Bytes after the signature are counted, never read.
Layout: DMTF DSP0274 (SPDM) 1.1, GET_MEASUREMENTS / MEASUREMENTS and the measurement block format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import NamedTuple

from attestation.errors import Code, MalformedEvidence

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
NONCE_SIZE = 32
REQUEST_SIZE = 4 + NONCE_SIZE + 1  # header, nonce, SlotIDParam
P384_SIGNATURE_SIZE = 96
DMTF_MEASUREMENT_SPECIFICATION = 0x01
ALL_MEASUREMENTS = 0xFF
SIGNATURE_REQUESTED = 0x01

# NVIDIA opaque-data record types (little-endian u16 type, u16 length, value).
OPAQUE_CERT_ISSUER_NAME = 1
OPAQUE_CERT_AUTHORITY_KEY_IDENTIFIER = 2
OPAQUE_DRIVER_VERSION = 3
OPAQUE_GPU_INFO = 4
OPAQUE_SKU = 5
OPAQUE_VBIOS_VERSION = 6
OPAQUE_MANUFACTURER_ID = 7
OPAQUE_TAMPER_DETECTION = 8
OPAQUE_SMC = 9
OPAQUE_VPR = 10
OPAQUE_NVDEC0_STATUS = 11
OPAQUE_MSRSCNT = 12
OPAQUE_CPRINFO = 13
OPAQUE_BOARD_ID = 14
OPAQUE_CHIP_SKU = 15
OPAQUE_CHIP_SKU_MOD = 16
OPAQUE_PROJECT = 17
OPAQUE_PROJECT_SKU = 18
OPAQUE_PROJECT_SKU_MOD = 19
OPAQUE_FWID = 20
OPAQUE_PROTECTED_PCIE_STATUS = 21
OPAQUE_SWITCH_PDI = 22
OPAQUE_FLOORSWEPT_PORTS = 23
OPAQUE_POSITION_ID = 24
OPAQUE_LOCK_SWITCH_STATUS = 25
OPAQUE_GPU_LINK_CONN = 32
OPAQUE_SYS_ENABLE_STATUS = 33
OPAQUE_OPAQUE_DATA_VERSION = 34
OPAQUE_CHIP_INFO = 35
OPAQUE_FEATURE_FLAG = 36

# One-byte status values NVIDIA uses in opaque data (NVDEC0 status, protected-PCIe status).
STATUS_ENABLED = 0xAA
STATUS_DISABLED = 0x55


def malformed(message: str) -> MalformedEvidence:
    return MalformedEvidence(message, code=Code.GPU_REPORT_MALFORMED)


class MeasurementBlock(NamedTuple):
    """One DMTF measurement block: its index (1-based), value type, value (a SHA-384 digest on NVIDIA GPUs)."""

    measurement_index: int  # SPDM "Index", 1-based
    value_type: int
    value: bytes

    @property
    def is_digest(self) -> bool:
        return not self.value_type & 0x80


@dataclass(frozen=True)
class SpdmRequest:
    version: int
    attributes: int
    operation: int
    nonce: bytes
    slot_id: int


@dataclass(frozen=True)
class SpdmReport:
    """A parsed request || response. ``signed`` is exactly what the signature covers."""

    request: SpdmRequest
    slot_id: int
    values: MappingProxyType[int, bytes]  # measurement index (1-based) -> value, in record order
    value_types: MappingProxyType[int, int]
    responder_nonce: bytes
    opaque: MappingProxyType[int, bytes]
    opaque_order: tuple[int, ...]
    signed: bytes
    signature: bytes
    trailing_bytes: int

    @property
    def measurements(self) -> MappingProxyType[int, bytes]:
        return self.values

    @cached_property
    def blocks(self) -> tuple[MeasurementBlock, ...]:
        return tuple(MeasurementBlock(i, self.value_types[i], v) for i, v in self.values.items())

    def opaque_text(self, record: int) -> str | None:
        """A NUL-padded ASCII opaque record (driver version, project, SKU), or None when absent."""
        value = self.opaque.get(record)
        if value is None:
            return None
        text = value.split(b"\x00", 1)[0]
        try:
            return text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise malformed(f"opaque record {record} is not ASCII text") from exc


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, size: int, field: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise malformed(
                f"{self.what} truncated at {field}: needs {size} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "little")


_REQUEST = struct.Struct(f"<BBBB{NONCE_SIZE}sB")


def parse_request(data: bytes) -> SpdmRequest:
    if len(data) == _REQUEST.size:  # one C-level read; shorter input takes the reader for its wording
        version, code, attributes, operation, nonce, slot_id = _REQUEST.unpack(data)
    else:
        r = _Reader(data, "GET_MEASUREMENTS request")
        version, code = r.u8("SPDMVersion"), r.u8("RequestResponseCode")
        attributes, operation = r.u8("Param1"), r.u8("Param2")
        nonce = r.take(NONCE_SIZE, "Nonce")
        slot_id = r.u8("SlotIDParam")
    if version != SPDM_VERSION_1_1:
        raise malformed(f"request SPDM version {version:#04x}; only 1.1 (0x11) is supported")
    if code != GET_MEASUREMENTS:
        raise malformed(f"request code {code:#04x} is not GET_MEASUREMENTS (0xE0)")
    if attributes != SIGNATURE_REQUESTED:
        raise malformed(
            f"request attributes {attributes:#04x}: a signed measurement request (0x01) is required"
        )
    if operation != ALL_MEASUREMENTS:
        raise malformed(
            f"request asks for measurement {operation:#04x}; all measurements (0xFF) are required"
        )
    return SpdmRequest(version, attributes, operation, nonce, slot_id)


_BLOCK_HEAD = struct.Struct("<BBH")  # Index, MeasurementSpecification, MeasurementSize
_VALUE_HEAD = struct.Struct("<BH")  # DMTFSpecMeasurementValueType, DMTFSpecMeasurementValueSize


# Every block a 48-byte digest: the layout NVIDIA GPUs use. Read in one C-level pass when it fits; the
# general loop below accepts exactly the same records and words the errors.
_DIGEST_BLOCK = struct.Struct("<BBHBH48s")


_DIGEST_RECORDS: dict[int, struct.Struct] = {}  # one layout per block count (at most 255)


def _digest_blocks(record: bytes, count: int) -> tuple[dict[int, bytes], dict[int, int]] | None:
    if len(record) != count * _DIGEST_BLOCK.size:
        return None
    layout = _DIGEST_RECORDS.get(count)
    if layout is None:
        layout = _DIGEST_RECORDS.setdefault(count, struct.Struct("<" + "BBHBH48s" * count))
    fields = layout.unpack(record)  # index, spec, size, value type, value size, digest; per block
    if (
        fields[1::6].count(DMTF_MEASUREMENT_SPECIFICATION) != count
        or fields[2::6].count(51) != count
        or fields[4::6].count(48) != count
    ):
        return None
    indexes = fields[0::6]
    values = dict(zip(indexes, fields[5::6], strict=True))
    if len(values) != count or 0 in values:
        return None
    return values, dict(zip(indexes, fields[3::6], strict=True))


def _parse_blocks(record: bytes, count: int) -> tuple[dict[int, bytes], dict[int, int]]:
    if count == 0:
        raise malformed("the response carries no measurement blocks")
    fast = _digest_blocks(record, count)
    return fast if fast is not None else _parse_blocks_general(record, count)


def _parse_blocks_general(record: bytes, count: int) -> tuple[dict[int, bytes], dict[int, int]]:
    values: dict[int, bytes] = {}
    types: dict[int, int] = {}
    pos, end = 0, len(record)
    for _ in range(count):
        if pos + _BLOCK_HEAD.size > end:
            raise malformed(f"measurement record truncated at block {len(values) + 1} of {count}")
        index, spec, size = _BLOCK_HEAD.unpack_from(record, pos)
        body = pos + _BLOCK_HEAD.size
        pos = body + size
        if pos > end:
            raise malformed(f"measurement block {index} runs past the measurement record")
        if size < _VALUE_HEAD.size:
            raise malformed(f"measurement block {index} is too short for a DMTF measurement")
        value_type, value_size = _VALUE_HEAD.unpack_from(record, body)
        if _VALUE_HEAD.size + value_size != size:
            raise malformed(
                f"measurement block {index}: value size {value_size} does not fill block size {size}"
            )
        if spec != DMTF_MEASUREMENT_SPECIFICATION:
            raise malformed(f"measurement block {index} uses specification {spec:#04x}, not DMTF (0x01)")
        if index == 0 or index in values:
            raise malformed(f"measurement block index {index} is zero or repeated")
        values[index] = record[body + _VALUE_HEAD.size : pos]
        types[index] = value_type
    if pos != end:
        raise malformed(f"measurement record has {end - pos} bytes after its {count} blocks")
    return values, types


_RECORD_HEAD = struct.Struct("<HH")  # type, length


def _parse_opaque(data: bytes) -> tuple[dict[int, bytes], tuple[int, ...]]:
    records: dict[int, bytes] = {}
    order: list[int] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + _RECORD_HEAD.size > end:
            raise malformed(f"opaque data truncated in a record header at offset {pos}")
        kind, size = _RECORD_HEAD.unpack_from(data, pos)
        start = pos + _RECORD_HEAD.size
        pos = start + size
        if pos > end:
            raise malformed(f"opaque record {kind} runs past the opaque data")
        if kind in records:
            raise malformed(f"opaque record {kind} appears twice")
        records[kind] = data[start:pos]
        order.append(kind)
    return records, tuple(order)


_RESPONSE_HEAD = struct.Struct("<BBBBBHB")  # version, code, param1, param2, blocks, 24-bit record length


def parse_report(data: bytes, *, signature_size: int = P384_SIGNATURE_SIZE) -> SpdmReport:
    """Parse ``request || response`` (raw bytes). Raises ``MalformedEvidence`` (GPU_REPORT_MALFORMED)."""
    if not isinstance(data, bytes | bytearray):
        raise malformed("the GPU report must be bytes")
    data = bytes(data)
    request = parse_request(data[:REQUEST_SIZE])
    r = _Reader(data[REQUEST_SIZE:], "MEASUREMENTS response")
    if len(r.data) >= _RESPONSE_HEAD.size:  # one C-level read; shorter input takes the reader for its wording
        version, code, _param1, param2, count, length_low, length_high = _RESPONSE_HEAD.unpack_from(r.data)
        slot_id, record_length = param2 & 0x0F, length_low | length_high << 16
        r.pos = _RESPONSE_HEAD.size
    else:
        version, code = r.u8("SPDMVersion"), r.u8("RequestResponseCode")
        r.u8("Param1")
        slot_id = r.u8("Param2") & 0x0F
        count = r.u8("NumberOfBlocks")
        record_length = r.uint(3, "MeasurementRecordLength")
    if version != SPDM_VERSION_1_1:
        raise malformed(f"response SPDM version {version:#04x}; only 1.1 (0x11) is supported")
    if code != MEASUREMENTS:
        raise malformed(f"response code {code:#04x} is not MEASUREMENTS (0x60)")
    if slot_id != request.slot_id:
        raise malformed(f"response slot {slot_id} differs from the requested slot {request.slot_id}")
    values, types = _parse_blocks(r.take(record_length, "MeasurementRecord"), count)
    responder_nonce = r.take(NONCE_SIZE, "Nonce")
    opaque_length = r.uint(2, "OpaqueLength")
    opaque, order = _parse_opaque(r.take(opaque_length, "OpaqueData"))
    signed_end = REQUEST_SIZE + r.pos
    signature = r.take(signature_size, "Signature")
    return SpdmReport(
        request=request,
        slot_id=slot_id,
        values=MappingProxyType(values),
        value_types=MappingProxyType(types),
        responder_nonce=responder_nonce,
        opaque=MappingProxyType(opaque),
        opaque_order=order,
        signed=data[:signed_end],
        signature=signature,
        trailing_bytes=len(data) - signed_end - signature_size,
    )


def decode_hex_report(text: str | bytes) -> bytes:
    """The hex-text form NVIDIA's tools and SDK test data use (whitespace tolerated)."""
    try:
        raw = text.decode("ascii") if isinstance(text, bytes) else text
        return bytes.fromhex("".join(raw.split()))
    except (UnicodeDecodeError, ValueError) as exc:
        raise malformed("the GPU report is not hex text") from exc
