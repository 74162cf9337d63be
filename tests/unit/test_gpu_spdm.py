"""The SPDM parser's rules, one edit each on a real report: every length comes from the structure, and every
violation is GPU_REPORT_MALFORMED (never an IndexError, never a silent truncation)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import gpu
from attestation.errors import AttestationError, Code
from attestation.gpu import spdm

REQ = spdm.REQUEST_SIZE


@pytest.fixture(scope="module")
def raw(vectors: Path) -> bytes:
    return gpu.decode_hex_report((vectors / "gpu/hopper-nvtrust-550.report.txt").read_text())


def _set(offset: int, value: bytes) -> Callable[[bytes], bytes]:
    return lambda b: b[:offset] + value + b[offset + len(value) :]


def _opaque_offset(b: bytes) -> int:
    record_length = int.from_bytes(b[REQ + 5 : REQ + 8], "little")
    return REQ + 8 + record_length + spdm.NONCE_SIZE  # the OpaqueLength field


def _opaque_length(delta: int) -> Callable[[bytes], bytes]:
    def edit(b: bytes) -> bytes:
        at = _opaque_offset(b)
        length = int.from_bytes(b[at : at + 2], "little") + delta
        return b[:at] + struct.pack("<H", length) + b[at + 2 :]

    return edit


def _duplicate_first_record(b: bytes) -> bytes:
    at = _opaque_offset(b)
    first_type = b[at + 2 : at + 4]
    second = at + 2 + 4 + int.from_bytes(b[at + 4 : at + 6], "little")
    return b[:second] + first_type + b[second + 2 :]


EDITS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda b: b"",
    "request only": lambda b: b[:REQ],
    "request version 1.0": _set(0, b"\x10"),
    "not GET_MEASUREMENTS": _set(1, b"\xe1"),
    "unsigned request": _set(2, b"\x00"),
    "one measurement requested": _set(3, b"\x01"),
    "response version": _set(REQ, b"\x12"),
    "not MEASUREMENTS": _set(REQ + 1, b"\x61"),
    "other slot": _set(REQ + 3, b"\x01"),
    "no blocks": _set(REQ + 4, b"\x00"),
    "one block more than the record": _set(REQ + 4, b"\x41"),
    "record length past the end": _set(REQ + 5, b"\xff\xff\x00"),
    "record length one short": lambda b: _set(
        REQ + 5, (int.from_bytes(b[REQ + 5 : REQ + 8], "little") - 1).to_bytes(3, "little")
    )(b),
    "block not DMTF": _set(REQ + 9, b"\x02"),
    "block index zero": _set(REQ + 8, b"\x00"),
    "block index repeated": _set(REQ + 8 + 55, b"\x01"),
    "block value size": _set(REQ + 8 + 5, b"\x2f\x00"),
    "opaque length past the end": _opaque_length(+200),
    "opaque length cuts a record": _opaque_length(-1),
    "opaque record repeated": _duplicate_first_record,
    "signature truncated": lambda b: b[:-1],
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_structure_violations_are_malformed(raw: bytes, edit: str) -> None:
    with pytest.raises(AttestationError) as info:
        spdm.parse_report(EDITS[edit](raw))
    assert info.value.code == Code.GPU_REPORT_MALFORMED


def test_structure_is_read_from_the_lengths(raw: bytes) -> None:
    report = spdm.parse_report(raw)
    assert len(report.signed) + len(report.signature) == len(raw)
    assert report.trailing_bytes == 0
    assert len(report.values) == 64 and set(report.value_types.values()) == {1}
    assert report.opaque_order[:2] == (spdm.OPAQUE_VBIOS_VERSION, spdm.OPAQUE_BOARD_ID)
    padded = spdm.parse_report(raw + b"\x00\x00")
    assert padded.trailing_bytes == 2 and padded.signature == report.signature


def test_non_ascii_text_record_is_malformed(raw: bytes) -> None:
    report = spdm.parse_report(raw)
    at = raw.index(b"550.90.07")
    bad = spdm.parse_report(raw[:at] + b"\xff" + raw[at + 1 :])
    assert report.opaque_text(spdm.OPAQUE_DRIVER_VERSION) == "550.90.07"
    with pytest.raises(AttestationError) as info:
        bad.opaque_text(spdm.OPAQUE_DRIVER_VERSION)
    assert info.value.code == Code.GPU_REPORT_MALFORMED


@pytest.mark.parametrize("text", ["zz", "0", b"\xff\xfe"])
def test_hex_text_is_checked(text: str | bytes) -> None:
    with pytest.raises(AttestationError) as info:
        gpu.decode_hex_report(text)
    assert info.value.code == Code.GPU_REPORT_MALFORMED


def test_vbios_version_text() -> None:
    assert gpu.format_vbios_version(bytes.fromhex("009f009601000000")) == "96.00.9F.00.01"
    with pytest.raises(AttestationError):
        gpu.format_vbios_version(b"\x00")


_BLOCK = st.tuples(
    st.integers(0, 255),  # index
    st.sampled_from([1, 1, 1, 2]),  # specification
    st.sampled_from([51, 51, 50, 52]),  # block size
    st.integers(0, 255),  # value type
    st.sampled_from([48, 48, 47]),  # value size
)


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(_BLOCK, min_size=1, max_size=6), extra=st.sampled_from([0, 0, 1, -1]))
def test_digest_fast_path_agrees_with_the_general_parser(
    blocks: list[tuple[int, int, int, int, int]], extra: int
) -> None:
    record = b"".join(
        struct.pack("<BBHBH", i, spec, size, vtype, vsize) + bytes(size - 3)
        for i, spec, size, vtype, vsize in blocks
    )
    count = max(1, len(blocks) + extra)
    fast = spdm._digest_blocks(record, count)
    try:
        general = spdm._parse_blocks_general(record, count)
    except AttestationError:
        assert fast is None
        return
    assert fast is None or fast == general
