"""SEV-SNP report parsing against every real vector's expected values, and strictness on bad input."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from vectorlib import manifest_entries

from attestation.claims import SnpTcb
from attestation.errors import Code, MalformedEvidence
from attestation.snp import REPORT_SIZE, SIGNED_SIZE, decode_tcb, parse_report, product_from_cpuid

REPORTS = manifest_entries("snp-report")
IDS = [e["file"] for e in REPORTS]


def _tcb_dict(tcb: SnpTcb) -> dict[str, Any]:
    return tcb.to_dict()


@pytest.mark.parametrize("entry", REPORTS, ids=IDS)
def test_vector_parses_to_expected_values(vectors: Path, entry: dict[str, Any]) -> None:
    data = (vectors / entry["file"]).read_bytes()
    exp = entry["expected"]
    r = parse_report(data)
    assert len(data) == exp["report_size"] == REPORT_SIZE
    assert r.version == exp["version"]
    assert r.guest_svn == exp["guest_svn"]
    assert r.policy == int(exp["policy"], 16)
    pol = exp["policy_decoded"]
    assert (r.abi_minor, r.abi_major) == (pol["abi_minor"], pol["abi_major"])
    bits = r.policy_bits()
    assert bits["smt_allowed"] == pol["smt_allowed"]
    assert bits["migration_agent_allowed"] == pol["migrate_ma_allowed"]
    assert bits["debug_allowed"] == pol["debug_allowed"] == r.debug_allowed
    assert bits["single_socket"] == pol["single_socket_required"]
    assert r.family_id.hex() == exp["family_id"]
    assert r.image_id.hex() == exp["image_id"]
    assert r.vmpl == exp["vmpl"]
    assert r.signature_algo == exp["signature_algo"]
    assert r.platform_info == int(exp["platform_info"], 16)
    assert r.platform_info_bits() == exp["platform_info_decoded"]
    key_info = exp["key_info"]
    assert r.key_info == int(key_info["raw"], 16)
    assert (int(r.author_key_en), int(r.mask_chip_key), r.signing_key) == (
        key_info["author_key_en"],
        key_info["mask_chip_key"],
        key_info["signing_key"],
    )
    for name in ("report_data", "measurement", "host_data", "id_key_digest", "author_key_digest"):
        assert getattr(r, name).hex() == exp[name], name
    assert r.report_id.hex() == exp["report_id"]
    assert r.report_id_ma.hex() == exp["report_id_ma"]
    assert r.chip_id.hex() == exp["chip_id"]
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        assert _tcb_dict(getattr(r, name)) == exp[name], name
    assert "{}.{}.{}".format(*r.current_version) == exp["current_version"]
    assert "{}.{}.{}".format(*r.committed_version) == exp["committed_version"]
    if r.version >= 3:
        assert r.cpuid_fam_id == int(exp["cpuid_fam_id"], 16)
        assert r.cpuid_mod_id == int(exp["cpuid_mod_id"], 16)
        assert r.cpuid_step == int(exp["cpuid_step"], 16)
        assert r.product == entry["file"].split("/")[1].split("-")[0].capitalize()
    else:
        assert r.cpuid_fam_id is None and r.product is None
    if r.version >= 5:
        assert r.launch_mit_vector == int(exp["launch_mit_vector"], 16)
        assert r.current_mit_vector == int(exp["current_mit_vector"], 16)
    else:
        assert r.launch_mit_vector is None and "launch_mit_vector" not in exp
    assert r.r == int.from_bytes(bytes.fromhex(exp["signature_r_little_endian"]), "little")
    assert r.s == int.from_bytes(bytes.fromhex(exp["signature_s_little_endian"]), "little")
    assert r.signed_bytes == data[:SIGNED_SIZE] and len(r.signed_bytes) == 0x2A0
    details = r.details()
    assert details["current_version"] == exp["current_version"]
    assert details["platform_info"]["raw"] == r.platform_info
    assert ("cpuid" in details) == (r.version >= 3)
    assert ("current_mit_vector" in details) == (r.version >= 5)
    for product in (None, "Milan", "Turin"):
        fixed = parse_report(data, product=product) if r.version < 3 else r
        assert fixed.details()["current_tcb"] == fixed.current_tcb.to_dict()
        assert fixed.details()["launch_tcb"] == fixed.launch_tcb.to_dict()


def _vector(vectors: Path, name: str = "genoa-v5-oak") -> bytearray:
    return bytearray((vectors / f"snp/{name}.report.bin").read_bytes())


def _code(data: bytes | bytearray) -> Code:
    with pytest.raises(MalformedEvidence) as info:
        parse_report(bytes(data))
    return info.value.code


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 2 * REPORT_SIZE])
def test_wrong_length_is_malformed(vectors: Path, size: int) -> None:
    data = bytes(_vector(vectors)) * 2
    assert _code(data[:size]) is Code.SNP_REPORT_MALFORMED


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unsupported_version(vectors: Path, version: int) -> None:
    data = _vector(vectors)
    struct.pack_into("<I", data, 0, version)
    assert _code(data) is Code.SNP_UNSUPPORTED_VERSION


def test_signature_algo_must_be_ecdsa_p384(vectors: Path) -> None:
    data = _vector(vectors)
    struct.pack_into("<I", data, 0x34, 2)
    assert _code(data) is Code.SNP_UNSUPPORTED_SIGNATURE_ALGO


def test_policy_bit17_must_be_set(vectors: Path) -> None:
    data = _vector(vectors)
    data[0x0A] &= ~0x02
    assert _code(data) is Code.SNP_REPORT_MALFORMED


def test_key_info_reserved_bits(vectors: Path) -> None:
    data = _vector(vectors)
    data[0x48] |= 0x20
    assert _code(data) is Code.SNP_REPORT_MALFORMED


@pytest.mark.parametrize(
    ("name", "offset"),
    [
        ("genoa-v5-oak", 0x04C),
        ("genoa-v5-oak", 0x18B),
        ("genoa-v5-oak", 0x19F),
        ("genoa-v5-oak", 0x1EB),
        ("genoa-v5-oak", 0x1EF),
        ("genoa-v5-oak", 0x208),
        ("genoa-v5-oak", 0x29F),
        ("genoa-v5-oak", 0x330),
        ("genoa-v5-oak", 0x49F),
        ("milan-v3-oak", 0x1F8),  # mitigation vectors are reserved before v5
        ("milan-v3-oak", 0x207),
        ("milan-v2-virtee", 0x188),  # CPUID bytes are reserved in v2
    ],
)
def test_reserved_bytes_must_be_zero(vectors: Path, name: str, offset: int) -> None:
    data = _vector(vectors, name)
    data[offset] ^= 0x01
    assert _code(data) is Code.SNP_REPORT_MALFORMED


def test_v5_mitigation_bytes_are_fields_not_reserved(vectors: Path) -> None:
    data = _vector(vectors, "genoa-v5-oak")
    data[0x1F8] ^= 0x02
    assert parse_report(bytes(data)).launch_mit_vector == 0x3


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(MalformedEvidence) as info:
        parse_report("not bytes")  # type: ignore[arg-type]
    assert info.value.code is Code.SNP_REPORT_MALFORMED


def test_unknown_explicit_product_is_malformed(vectors: Path) -> None:
    with pytest.raises(MalformedEvidence):
        parse_report(bytes(_vector(vectors, "milan-v2-virtee")), product="Venice")


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x00, "Milan"),
        (0x19, 0x01, "Milan"),
        (0x19, 0x0F, "Milan"),
        (0x19, 0x10, "Genoa"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0x1F, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x19, 0xAF, "Genoa"),
        (0x19, 0x20, None),
        (0x19, 0xB0, None),
        (0x1A, 0x02, "Turin"),
        (0x17, 0x31, None),
        (0x00, 0x00, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert product_from_cpuid(family, model) == product


def test_tcb_layouts() -> None:
    raw = bytes([1, 2, 3, 4, 0, 0, 7, 8])
    milan = decode_tcb(raw, "Milan")
    assert (milan.bootloader, milan.tee, milan.snp, milan.microcode, milan.fmc) == (1, 2, 7, 8, None)
    assert decode_tcb(raw, None) == decode_tcb(raw, "Genoa") == milan
    turin = decode_tcb(raw, "Turin")
    assert (turin.fmc, turin.bootloader, turin.tee, turin.snp, turin.microcode) == (1, 2, 3, 4, 8)
    assert turin.to_dict()["fmc"] == 1 and "fmc" not in milan.to_dict()


def test_v2_report_takes_explicit_product_for_layout(vectors: Path) -> None:
    data = bytes(_vector(vectors, "milan-v2-virtee"))
    assert parse_report(data).product is None
    turin = parse_report(data, product="Turin")
    assert turin.product == "Turin"
    assert turin.reported_tcb.fmc == 3 and len(turin.platform_chip_id) == 8
