"""End-to-end SNP verification on the real vectors under the production trust store."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from vectorlib import manifest_entries

from attestation.claims import Claims, TcbStatus, Tee
from attestation.errors import AttestationError, Code
from attestation.snp import (
    SnpCollateral,
    load_pem_certificates,
    parse_certificate,
    parse_report,
    verify_report,
)
from attestation.snp.verify import verify_report_signature
from attestation.trust import AMD_ARK_SHA256, INTEL_SGX_ROOT_SHA256, PRODUCTION, TrustStore

REPORTS = manifest_entries("snp-report")
IDS = [e["file"].split("/")[1].removesuffix(".report.bin") for e in REPORTS]


@dataclass(frozen=True)
class Vector:
    name: str
    entry: dict[str, Any]
    report: bytes
    leaf: bytes
    chain: list[bytes]  # KDS cert_chain: ASK/ASVK then ARK
    product: str
    not_before: datetime
    not_after: datetime

    @property
    def now(self) -> datetime:
        return self.not_before + (self.not_after - self.not_before) / 2

    def collateral(self) -> SnpCollateral:
        return SnpCollateral.from_der([self.leaf, *self.chain])


def _der(path: Path) -> bytes:
    data = path.read_bytes()
    return load_pem_certificates(data)[0] if data.startswith(b"-----") else data


def load_vector(vectors: Path, entry: dict[str, Any]) -> Vector:
    exp = entry["expected"]
    name = entry["file"].split("/")[1].removesuffix(".report.bin")
    product = name.split("-")[0].capitalize()
    kind = "vlek" if "vlek" in name else "vcek"
    chain = load_pem_certificates(
        (vectors / f"snp/certs/kds-cert-chain-{kind}-{product.lower()}.pem").read_bytes()
    )
    lo, hi = (datetime.fromisoformat(t) for t in exp["certificates_all_valid_between"])
    return Vector(
        name, entry, (vectors / entry["file"]).read_bytes(), _der(vectors / exp["signature_verifies_with"]),
        chain, product, lo, hi,
    )  # fmt: skip


@pytest.fixture(scope="module")
def all_vectors(vectors: Path) -> dict[str, Vector]:
    return {v.name: v for v in (load_vector(vectors, e) for e in REPORTS)}


def _code(exc: pytest.ExceptionInfo[AttestationError]) -> Code:
    return exc.value.code


def _archived(report: bytes, **kwargs: Any) -> Claims:
    """Verification at a vector's own time, long before AMD's CRLs here were issued: the explicit
    opt-out for archived evidence. The CRL requirement itself is tested in test_snp_revocation.py."""
    return verify_report(report, require_revocation=False, **kwargs)


@pytest.mark.parametrize("name", IDS)
def test_vector_verifies_in_production(all_vectors: dict[str, Vector], name: str) -> None:
    v = all_vectors[name]
    exp = v.entry["expected"]
    claims = _archived(v.report, trust=PRODUCTION, collateral=v.collateral(), now=v.now)
    assert claims.tee is Tee.SNP
    assert claims.product == v.product
    assert claims.version == exp["version"]
    assert claims.measurement.hex() == exp["measurement"]
    assert claims.report_data.hex() == exp["report_data"]
    assert claims.host_data.hex() == exp["host_data"]
    assert claims.policy == int(exp["policy"], 16)
    assert claims.debug is exp["policy_decoded"]["debug_allowed"]
    assert claims.tcb == exp["reported_tcb"]
    assert claims.tcb_status is TcbStatus.NOT_APPLICABLE
    assert claims.simulated is False
    assert claims.revocation_checked is False  # no CRL in this collateral
    d = claims.details
    is_vlek = exp["key_info"]["signing_key"] == 1
    assert d["signing_key"] == ("vlek" if is_vlek else "vcek")
    assert claims.platform_id == (b"" if is_vlek else bytes.fromhex(exp["chip_id"]))
    assert d["vmpl"] == exp["vmpl"] and d["guest_svn"] == exp["guest_svn"]
    assert d["current_tcb"] == exp["current_tcb"] and d["committed_tcb"] == exp["committed_tcb"]
    assert d["launch_tcb"] == exp["launch_tcb"]
    assert d["platform_info"]["raw"] == int(exp["platform_info"], 16)
    assert d["debug_allowed"] is exp["policy_decoded"]["debug_allowed"]
    assert d["smt_allowed"] is exp["policy_decoded"]["smt_allowed"]
    assert d["leaf_product_name"] == parse_certificate(v.leaf).amd_extensions().product_name
    assert claims.to_dict()["tee"] == "snp"


def test_debug_vector_verifies_with_debug_claim(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["milan-v2-gosevguest"]
    claims = _archived(v.report, trust=PRODUCTION, collateral=v.collateral(), now=v.now)
    assert claims.debug is True and claims.details["debug_allowed"] is True


def test_vlek_vector_chains_through_asvk(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["milan-v3-trustee-vlek"]
    assert parse_certificate(v.chain[0]).subject_cn == "SEV-VLEK-Milan"
    claims = _archived(v.report, trust=PRODUCTION, collateral=v.collateral(), now=v.now)
    assert claims.details["signing_key"] == "vlek" and claims.platform_id == b""
    # The VCEK chain (ASK, not ASVK) cannot carry a VLEK.
    milan_vcek_chain = all_vectors["milan-v3-oak"].chain
    with pytest.raises(AttestationError) as info:
        _archived(
            v.report,
            trust=PRODUCTION,
            collateral=SnpCollateral.from_der([v.leaf, *milan_vcek_chain]),
            now=v.now,
        )
    assert _code(info) is Code.SNP_CHAIN_INVALID


def test_reported_tcb_not_current_tcb_selects_vcek(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["milan-v2-trustee-azure"]
    report = parse_report(v.report)
    assert report.current_tcb_raw != report.reported_tcb_raw
    assert _archived(v.report, trust=PRODUCTION, collateral=v.collateral(), now=v.now).tcb["microcode"] == 115


@pytest.mark.parametrize("name", IDS)
def test_outside_validity_window_is_expired(all_vectors: dict[str, Vector], name: str) -> None:
    v = all_vectors[name]
    collateral = v.collateral()
    _archived(v.report, trust=PRODUCTION, collateral=collateral, now=v.now)  # fills the chain memo
    for when in (v.not_before - timedelta(seconds=1), v.not_after + timedelta(seconds=1)):
        with pytest.raises(AttestationError) as info:
            _archived(v.report, trust=PRODUCTION, collateral=collateral, now=when)
        assert _code(info) is Code.SNP_CERT_EXPIRED
    # A fresh collateral (no memo) says the same.
    with pytest.raises(AttestationError) as info:
        _archived(v.report, trust=PRODUCTION, collateral=v.collateral(), now=v.not_after + timedelta(days=1))
    assert _code(info) is Code.SNP_CERT_EXPIRED
    for edge in (v.not_before, v.not_after):
        _archived(v.report, trust=PRODUCTION, collateral=collateral, now=edge)


def test_naive_now_is_refused(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["genoa-v5-oak"]
    with pytest.raises(ValueError, match="timezone"):
        _archived(v.report, trust=PRODUCTION, collateral=v.collateral(), now=datetime(2030, 1, 1))


@pytest.mark.parametrize("name", IDS)
def test_other_vectors_vcek_is_not_found(all_vectors: dict[str, Vector], name: str) -> None:
    v = all_vectors[name]
    for other in all_vectors.values():
        if other.name == name:
            continue
        collateral = SnpCollateral.from_der([other.leaf, *v.chain, *other.chain])
        with pytest.raises(AttestationError) as info:
            _archived(v.report, trust=PRODUCTION, collateral=collateral, now=v.now)
        assert _code(info) is Code.SNP_ENDORSEMENT_NOT_FOUND, other.name


def test_other_vcek_forced_fails_signature(all_vectors: dict[str, Vector]) -> None:
    for v in all_vectors.values():
        for other in all_vectors.values():
            if other.name == v.name:
                continue
            key = parse_certificate(other.leaf).public_key
            with pytest.raises(AttestationError) as info:
                verify_report_signature(parse_report(v.report), key)  # type: ignore[arg-type]
            assert _code(info) is Code.SNP_SIGNATURE_INVALID


def test_spliced_selectors_reach_signature_check(all_vectors: dict[str, Vector]) -> None:
    """Copy another Milan chip's id and REPORTED_TCB into a report: its VCEK is chosen, the chain and
    extensions pass, and only the report signature fails."""
    target, donor = all_vectors["milan-v2-virtee"], all_vectors["milan-v2-gosevguest"]
    data = bytearray(target.report)
    data[0x180:0x188] = donor.report[0x180:0x188]
    data[0x1A0:0x1E0] = donor.report[0x1A0:0x1E0]
    with pytest.raises(AttestationError) as info:
        _archived(bytes(data), trust=PRODUCTION, collateral=donor.collateral(), now=donor.now)
    assert _code(info) is Code.SNP_SIGNATURE_INVALID


# Fields whose change is caught before the signature check, by the parser or by leaf selection.
def _expected_codes(report: bytes, offset: int) -> set[Code]:
    version = struct.unpack_from("<I", report)[0]
    if offset < 0x4:  # 3 -> 2 is a supported version whose CPUID bytes must then be zero
        return {Code.SNP_UNSUPPORTED_VERSION, Code.SNP_REPORT_MALFORMED, Code.SNP_SIGNATURE_INVALID}
    if 0x34 <= offset < 0x38:
        return {Code.SNP_UNSUPPORTED_SIGNATURE_ALGO}
    if offset == 0x0A:
        return {Code.SNP_SIGNATURE_INVALID, Code.SNP_REPORT_MALFORMED}
    if 0x48 <= offset < 0x4C:
        return {Code.SNP_REPORT_MALFORMED, Code.SNP_SIGNING_KEY_MISMATCH, Code.SNP_SIGNATURE_INVALID,
                Code.SNP_ENDORSEMENT_NOT_FOUND}  # fmt: skip
    reserved = [(0x4C, 0x50), (0x18B, 0x1A0), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x208, 0x2A0)]
    reserved += [(0x188, 0x18B)] if version < 3 else []
    reserved += [(0x1F8, 0x208)] if version < 5 else []
    if any(lo <= offset < hi for lo, hi in reserved):
        return {Code.SNP_REPORT_MALFORMED}
    if 0x182 <= offset < 0x186:  # reserved TCB_VERSION bytes on Milan/Genoa: only the signature covers them
        return {Code.SNP_SIGNATURE_INVALID}
    if 0x180 <= offset < 0x188:  # REPORTED_TCB: this chip's VCEK is held, but for another TCB
        return {Code.SNP_TCB_MISMATCH}
    if 0x1A0 <= offset < 0x1E0:  # CHIP_ID: no VCEK for that chip
        return {Code.SNP_ENDORSEMENT_NOT_FOUND}
    if 0x188 <= offset < 0x18A:  # CPUID family/model: another product, or the same one (signature)
        return {Code.SNP_PRODUCT_MISMATCH, Code.SNP_SIGNATURE_INVALID}
    return {Code.SNP_SIGNATURE_INVALID}


def test_every_signed_byte_and_the_signature_are_covered(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["milan-v3-oak"]
    collateral = v.collateral()
    _archived(v.report, trust=PRODUCTION, collateral=collateral, now=v.now)
    offsets = [*range(0x2A0), *range(0x2A0, 0x330, 3)]
    for offset in offsets:
        data = bytearray(v.report)
        data[offset] ^= 0x01
        with pytest.raises(AttestationError) as info:
            _archived(bytes(data), trust=PRODUCTION, collateral=collateral, now=v.now)
        want = _expected_codes(v.report, offset) if offset < 0x2A0 else {Code.SNP_SIGNATURE_INVALID}
        assert info.value.code in want, hex(offset)


@pytest.mark.parametrize("name", IDS)
def test_sampled_flips_on_every_vector(all_vectors: dict[str, Vector], name: str) -> None:
    v = all_vectors[name]
    collateral = v.collateral()
    for offset in (
        0x08,
        0x10,
        0x50,
        0x90,
        0xBF,
        0xC0,
        0xE0,
        0x110,
        0x140,
        0x160,
        0x1E0,
        0x1E8,
        0x1F0,
        0x2A0,
        0x2E8,
    ):
        data = bytearray(v.report)
        data[offset] ^= 0x80
        with pytest.raises(AttestationError) as info:
            _archived(bytes(data), trust=PRODUCTION, collateral=collateral, now=v.now)
        assert info.value.code in _expected_codes(v.report, offset) | {Code.SNP_SIGNATURE_INVALID}, hex(
            offset
        )


@pytest.mark.parametrize("size", [0, 100, 0x2A0, 0x49F, 0x4A1, 0x940])
def test_truncated_or_padded_is_malformed(all_vectors: dict[str, Vector], size: int) -> None:
    v = all_vectors["genoa-v5-oak"]
    data = (v.report + bytes(0x4A0))[:size]
    with pytest.raises(AttestationError) as info:
        _archived(data, trust=PRODUCTION, collateral=v.collateral(), now=v.now)
    assert _code(info) is Code.SNP_REPORT_MALFORMED


def test_wrong_ark_is_refused(vectors: Path, all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["milan-v3-oak"]
    genoa_ark = load_pem_certificates((vectors / "snp/certs/ark-genoa.pem").read_bytes())[0]
    collateral = SnpCollateral.from_der([v.leaf, v.chain[0], genoa_ark])
    with pytest.raises(AttestationError) as info:
        _archived(v.report, trust=PRODUCTION, collateral=collateral, now=v.now)
    assert _code(info) in {Code.SNP_CHAIN_INVALID, Code.UNTRUSTED_ROOT}
    # Pinning the Genoa ARK's fingerprint for Milan does not help: the names and signatures disagree.
    genoa_for_milan = TrustStore("odd", {"Milan": AMD_ARK_SHA256["Genoa"]}, INTEL_SGX_ROOT_SHA256)
    with pytest.raises(AttestationError) as info:
        _archived(v.report, trust=genoa_for_milan, collateral=collateral, now=v.now)
    assert _code(info) is Code.SNP_CHAIN_INVALID


def test_trust_store_without_the_ark_is_untrusted(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["milan-v3-oak"]
    collateral = v.collateral()
    no_milan = TrustStore("no-milan", {"Genoa": AMD_ARK_SHA256["Genoa"]}, INTEL_SGX_ROOT_SHA256)
    for _ in range(2):  # the second run goes through the chain memo; the pin is still checked
        with pytest.raises(AttestationError) as info:
            _archived(v.report, trust=no_milan, collateral=collateral, now=v.now)
        assert _code(info) is Code.UNTRUSTED_ROOT
        _archived(v.report, trust=PRODUCTION, collateral=collateral, now=v.now)


def test_missing_ask_or_leaf(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["genoa-v5-oak"]
    with pytest.raises(AttestationError) as info:
        _archived(
            v.report, trust=PRODUCTION, collateral=SnpCollateral.from_der([v.leaf, v.chain[1]]), now=v.now
        )
    assert _code(info) is Code.SNP_CHAIN_INVALID
    with pytest.raises(AttestationError) as info:
        _archived(v.report, trust=PRODUCTION, collateral=SnpCollateral.from_der(v.chain), now=v.now)
    assert _code(info) is Code.SNP_ENDORSEMENT_NOT_FOUND
    with pytest.raises(AttestationError) as info:
        _archived(v.report, trust=PRODUCTION, collateral=SnpCollateral.empty(), now=v.now)
    assert _code(info) is Code.SNP_ENDORSEMENT_NOT_FOUND


def test_endorsements_from_the_evidence_are_used(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["genoa-v5-oak"]
    empty = SnpCollateral.empty()
    claims = _archived(
        v.report, trust=PRODUCTION, collateral=empty, now=v.now, endorsements=[v.leaf, *v.chain]
    )
    assert claims.product == "Genoa"
    # Only the leaf in the evidence, the CA certificates in the collateral.
    ca_only = SnpCollateral.from_der(v.chain)
    _archived(v.report, trust=PRODUCTION, collateral=ca_only, now=v.now, endorsements=[v.leaf])
    with pytest.raises(AttestationError) as info:
        _archived(v.report, trust=PRODUCTION, collateral=empty, now=v.now, endorsements=[b"\x30\x03junk"])
    assert _code(info) is Code.SNP_CHAIN_INVALID


def test_endorsed_foreign_chain_cannot_replace_pinned_root(all_vectors: dict[str, Vector]) -> None:
    """A Milan chain sent as endorsements for a Genoa report fails on names, not on a trusted path."""
    v, milan = all_vectors["genoa-v5-oak"], all_vectors["milan-v3-oak"]
    with pytest.raises(AttestationError) as info:
        _archived(
            v.report,
            trust=PRODUCTION,
            collateral=SnpCollateral.from_der([v.leaf]),
            now=v.now,
            endorsements=milan.chain,
        )
    assert _code(info) is Code.SNP_CHAIN_INVALID


def test_product_argument(all_vectors: dict[str, Vector]) -> None:
    v2 = all_vectors["milan-v2-virtee"]
    assert _archived(v2.report, trust=PRODUCTION, collateral=v2.collateral(), now=v2.now, product="Milan")
    with pytest.raises(AttestationError) as info:
        _archived(v2.report, trust=PRODUCTION, collateral=v2.collateral(), now=v2.now, product="Genoa")
    assert _code(info) is Code.SNP_PRODUCT_MISMATCH
    v3 = all_vectors["genoa-v5-oak"]
    with pytest.raises(AttestationError) as info:
        _archived(v3.report, trust=PRODUCTION, collateral=v3.collateral(), now=v3.now, product="Milan")
    assert _code(info) is Code.SNP_PRODUCT_MISMATCH
    with pytest.raises(AttestationError) as info:
        _archived(v3.report, trust=PRODUCTION, collateral=v3.collateral(), now=v3.now, product="Venice")
    assert _code(info) in {Code.SNP_PRODUCT_MISMATCH, Code.SNP_REPORT_MALFORMED}


def test_unknown_cpuid_is_product_mismatch(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["genoa-v5-oak"]
    data = bytearray(v.report)
    data[0x188] = 0x17
    with pytest.raises(AttestationError) as info:
        _archived(bytes(data), trust=PRODUCTION, collateral=v.collateral(), now=v.now)
    assert _code(info) is Code.SNP_PRODUCT_MISMATCH


@pytest.mark.parametrize(("signing_key", "code"), [(7, Code.SNP_SIGNING_KEY_MISMATCH), (3, Code.SNP_SIGNING_KEY_MISMATCH),
                                                    (1, Code.SNP_ENDORSEMENT_NOT_FOUND)])  # fmt: skip
def test_signing_key_field(all_vectors: dict[str, Vector], signing_key: int, code: Code) -> None:
    v = all_vectors["genoa-v5-oak"]
    data = bytearray(v.report)
    data[0x48] = (data[0x48] & ~0x1C) | signing_key << 2
    with pytest.raises(AttestationError) as info:
        _archived(bytes(data), trust=PRODUCTION, collateral=v.collateral(), now=v.now)
    assert _code(info) is code


def test_errors_carry_message_and_hint(all_vectors: dict[str, Vector]) -> None:
    v = all_vectors["milan-v3-oak"]
    with pytest.raises(AttestationError) as info:
        _archived(v.report, trust=PRODUCTION, collateral=v.collateral(), now=datetime(2040, 1, 1, tzinfo=UTC))
    err = info.value.to_dict()
    assert err["code"] == "SNP_CERT_EXPIRED" and "SEV-VCEK" in err["message"] and err["hint"]
