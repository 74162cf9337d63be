"""TDX quote parsing against the real vectors' ``expected`` blocks, and malformed inputs."""

from __future__ import annotations

import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from vectorlib import manifest_entries

from attestation.errors import Code, MalformedEvidence
from attestation.tdx import QeReport, parse_quote
from attestation.tdx.pck import load_pck_chain
from attestation.tdx.quote import CERT_DATA_PCK_CHAIN, CERT_DATA_QE_REPORT, INTEL_QE_VENDOR_ID
from attestation.trust import PRODUCTION

QUOTES = manifest_entries("tdx-quote")
CHAINS = manifest_entries("pck-chain")
KEY_TYPES = {2: "ECDSA-256-with-P-256 curve"}
# Keys of `expected` that describe verification or collateral; test_tdx_verify.py checks them.
CHECKED_ELSEWHERE = {
    "quote_signature_valid",
    "qe_report_signature_valid",
    "qe_report_data_binding_valid",
    "pck_chain_valid_to_intel_root",
    "collateral_all_current_between",
    "tcb_status_asserted_by_source",
}


def _cn(name: Any) -> str:
    from cryptography.x509.oid import NameOID

    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _pck_leaf(pem: bytes) -> dict[str, Any]:
    chain = load_pck_chain(pem)
    leaf, sgx = chain.leaf, chain.sgx
    return {
        "cn": _cn(leaf.subject),
        "issuer_cn": _cn(leaf.issuer),
        "serial": hex(leaf.serial_number),
        "validity": [str(leaf.not_valid_before_utc), str(leaf.not_valid_after_utc)],
        "sgx_ext": {
            "fmspc": sgx.fmspc.hex(),
            "pceid": sgx.pce_id.hex(),
            "sgx_type": sgx.sgx_type,
            "ppid": sgx.ppid.hex(),
            "pcesvn": sgx.pcesvn,
            "cpusvn": sgx.cpusvn.hex(),
            "comp_svns": list(sgx.comp_svns),
            "platform_instance_id": sgx.platform_instance_id.hex() if sgx.platform_instance_id else None,
        },
    }


def observed(data: bytes) -> dict[str, Any]:
    """What our parser says, in the manifest's vocabulary."""
    q = parse_quote(data)
    qe = QeReport.parse(q.qe_report)
    chain = load_pck_chain(q.pck_chain_pem)
    trailing = data[len(data) - q.trailing_bytes :] if q.trailing_bytes else b""
    out: dict[str, Any] = {
        "file_length": len(data),
        "version": q.version,
        "attestation_key_type": q.attestation_key_type,
        "attestation_key_type_meaning": KEY_TYPES.get(q.attestation_key_type),
        "tee_type": hex(q.tee_type),
        "header_bytes_8_11": q.header_reserved.hex(),
        "qe_vendor_id": q.qe_vendor_id.hex(),
        "qe_vendor_is_intel": q.qe_vendor_id == INTEL_QE_VENDOR_ID,
        "user_data": q.user_data.hex(),
        "body_descriptor_type": q.body_type,
        "body_size": q.body_size,
        "tee_tcb_svn": q.tee_tcb_svn.hex(),
        "mrseam": q.mrseam.hex(),
        "mrsignerseam": q.mrsignerseam.hex(),
        "seam_attributes": q.seam_attributes.hex(),
        "td_attributes": q.td_attributes_raw.hex(),
        "td_attributes_decoded": {**q.td_attributes_decoded(), "value_u64": hex(q.td_attributes)},
        "xfam": q.xfam.hex(),
        "mrtd": q.mrtd.hex(),
        "mrconfigid": q.mrconfigid.hex(),
        "mrowner": q.mrowner.hex(),
        "mrownerconfig": q.mrownerconfig.hex(),
        **{f"rtmr{i}": r.hex() for i, r in enumerate(q.rtmrs)},
        "report_data": q.report_data.hex(),
        "tee_tcb_svn2": q.tee_tcb_svn2.hex() if q.tee_tcb_svn2 else None,
        "mrservicetd": q.mrservicetd.hex() if q.mrservicetd else None,
        "signed_bytes": f"0..{len(q.signed_region) - 1}",
        "signature_data_length": q.signature_data_length,
        "bytes_after_signature_data": q.trailing_bytes,
        "bytes_after_signature_data_all_zero": not any(trailing),
        "attestation_public_key": q.attestation_key.hex(),
        "certification_data_type": CERT_DATA_QE_REPORT,  # parse_quote accepts nothing else
        "certification_data_size": len(q.certification_data),
        "qe_report": {
            "cpusvn": qe.cpusvn.hex(),
            "miscselect": qe.miscselect.to_bytes(4, "little").hex(),
            "attributes": qe.attributes.hex(),
            "mrenclave": qe.mrenclave.hex(),
            "mrsigner": qe.mrsigner.hex(),
            "isvprodid": qe.isvprodid,
            "isvsvn": qe.isvsvn,
            "report_data": qe.report_data.hex(),
        },
        "qe_auth_data_size": len(q.qe_auth_data),
        "qe_auth_data": q.qe_auth_data.hex(),
        "inner_certification_data_type": CERT_DATA_PCK_CHAIN,  # parse_quote accepts nothing else
        "inner_certification_data_size": len(q.pck_chain_pem),
        "pck_pem_chain_nul_terminated": q.pck_chain_nul_terminated,
        "pck_chain_subject_cns": [_cn(c.subject) for c in (chain.leaf, chain.intermediate, chain.root)],
        "pck_leaf": _pck_leaf(q.pck_chain_pem),
    }
    return out


@pytest.mark.parametrize("entry", QUOTES, ids=lambda e: e["file"])
def test_quote_parses_to_every_expected_value(entry: dict[str, Any], vectors: Path) -> None:
    data = (vectors / entry["file"]).read_bytes()
    got = observed(data)
    for key, want in entry["expected"].items():
        if key in CHECKED_ELSEWHERE:
            continue
        assert key in got, f"expected key {key!r} is not checked by this test"
        if key == "signed_bytes":
            assert want.startswith(got[key] + " "), (want, got[key])
        else:
            assert got[key] == want, key


@pytest.mark.parametrize("entry", CHAINS, ids=lambda e: e["file"])
def test_pck_chain_files_equal_the_quote_chain(entry: dict[str, Any], vectors: Path) -> None:
    pem = (vectors / entry["file"]).read_bytes()
    quote = parse_quote((vectors / entry["file"].replace(".pck_chain.pem", ".quote.bin")).read_bytes())
    assert quote.pck_chain_pem == pem
    chain = load_pck_chain(pem)
    exp = entry["expected"]
    assert [_cn(c.subject) for c in (chain.leaf, chain.intermediate, chain.root)] == exp["subject_cns"]
    assert chain.sgx.fmspc.hex() == exp["leaf_fmspc"]
    assert hex(chain.leaf.serial_number) == exp["leaf_serial"]
    assert [str(chain.leaf.not_valid_before_utc), str(chain.leaf.not_valid_after_utc)] == exp["leaf_validity"]
    assert pem.endswith(b"\x00") == exp["nul_terminated"]
    PRODUCTION.check_intel_root(chain.root_der)
    chain.check_time(chain.leaf.not_valid_before_utc + timedelta(days=1))


@pytest.fixture(scope="module")
def dcapqvl(vectors: Path) -> bytes:
    return (vectors / "tdx/v4-dcapqvl.quote.bin").read_bytes()


@pytest.fixture(scope="module")
def v5(vectors: Path) -> bytes:
    return (vectors / "tdx/v5-gotdxguest-sample.quote.bin").read_bytes()


def _code(data: bytes) -> Code:
    with pytest.raises(MalformedEvidence) as exc:
        parse_quote(data)
    return exc.value.code


def test_trailing_bytes_are_counted_but_do_not_change_the_parse(dcapqvl: bytes) -> None:
    base = parse_quote(dcapqvl)
    end = len(dcapqvl) - base.trailing_bytes
    for tail in (b"", b"junk", bytes(500)):
        q = parse_quote(dcapqvl[:end] + tail)
        assert q.trailing_bytes == len(tail)
        assert (q.signed_region, q.certification_data, q.signature) == (
            base.signed_region,
            base.certification_data,
            base.signature,
        )


def test_every_truncation_is_malformed(dcapqvl: bytes) -> None:
    end = len(dcapqvl) - parse_quote(dcapqvl).trailing_bytes
    for cut in range(0, end, 7):
        assert _code(dcapqvl[:cut]) is Code.TDX_QUOTE_MALFORMED, cut
    assert _code(dcapqvl[: end - 1]) is Code.TDX_QUOTE_MALFORMED


def _with_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4 :]


def _with_u16(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<H", value) + data[offset + 2 :]


def test_oversized_and_inconsistent_lengths_are_malformed(dcapqvl: bytes) -> None:
    sig_len_at = 632
    for value in (0, 10, 4299, 4301, 0xFFFFFFFF):
        assert _code(_with_u32(dcapqvl, sig_len_at, value)) is Code.TDX_QUOTE_MALFORMED, value
    cert_len_at = 636 + 130
    for value in (0, 4165, 4167, 0xFFFFFFFF):
        assert _code(_with_u32(dcapqvl, cert_len_at, value)) is Code.TDX_QUOTE_MALFORMED, value
    auth_len_at = 636 + 134 + 448
    for value in (0, 31, 33, 0xFFFF):
        assert _code(_with_u16(dcapqvl, auth_len_at, value)) is Code.TDX_QUOTE_MALFORMED, value
    inner_len_at = 636 + 134 + 450 + 32 + 2
    for value in (0, 3677, 3679, 0xFFFFFFFF):
        assert _code(_with_u32(dcapqvl, inner_len_at, value)) is Code.TDX_QUOTE_MALFORMED, value
    assert _code(_with_u16(dcapqvl, 636 + 128, 5)) is Code.TDX_QUOTE_MALFORMED
    assert _code(_with_u16(dcapqvl, 636 + 134 + 450 + 32, 3)) is Code.TDX_QUOTE_MALFORMED


def test_unsupported_header_values(dcapqvl: bytes) -> None:
    assert _code(_with_u16(dcapqvl, 0, 3)) is Code.TDX_UNSUPPORTED_VERSION
    assert _code(_with_u16(dcapqvl, 0, 6)) is Code.TDX_UNSUPPORTED_VERSION
    assert _code(_with_u16(dcapqvl, 2, 3)) is Code.TDX_UNSUPPORTED_VERSION  # ECDSA P-384 key type
    assert _code(_with_u32(dcapqvl, 4, 0)) is Code.TDX_UNSUPPORTED_VERSION  # SGX TEE type


def test_v5_body_descriptor(v5: bytes) -> None:
    assert parse_quote(v5).body_type == 3
    for body_type in (0, 1, 4, 0xFFFF):  # 1 = SGX enclave report
        assert _code(_with_u16(v5, 48, body_type)) is Code.TDX_UNSUPPORTED_VERSION, body_type
    for size in (0, 584, 647, 649, 0xFFFFFFFF):
        assert _code(_with_u32(v5, 50, size)) is Code.TDX_QUOTE_MALFORMED, size


def test_v5_with_a_tdx10_body_parses(v5: bytes, dcapqvl: bytes) -> None:
    # v5 + type 2 descriptor around a v4 body: the layout must shift by the 6-byte descriptor.
    body_and_sig = dcapqvl[48:]
    data = struct.pack("<H", 5) + dcapqvl[2:48] + struct.pack("<HI", 2, 584) + body_and_sig
    q = parse_quote(data)
    assert (q.version, q.body_type, q.body_size) == (5, 2, 584)
    assert q.mrtd == parse_quote(dcapqvl).mrtd
    assert q.tee_tcb_svn2 is None and q.mrservicetd is None
    assert len(q.signed_region) == 48 + 6 + 584
