"""AMD certificates: the cryptography path and the DER fallback agree, and the fallback verifies alone."""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.utils import CryptographyDeprecationWarning
from vectorlib import manifest_entries

import attestation.snp.collateral as snp_collateral
from attestation.errors import AttestationError, Code, CollateralError
from attestation.snp import SnpCollateral, load_pem_certificates, parse_certificate, verify_report
from attestation.snp import der as asn1
from attestation.trust import PRODUCTION

LEAVES = manifest_entries("vcek") + manifest_entries("vlek")
CAS = manifest_entries("ark") + manifest_entries("ask") + manifest_entries("cert-chain")
KEY_USAGE = "2.5.29.15"  # AMD encodes it with a non-minimal unused-bits count; cryptography re-encodes


def _ders(vectors: Path, entry: dict[str, Any]) -> list[bytes]:
    data = (vectors / entry["file"]).read_bytes()
    return load_pem_certificates(data) if data.startswith(b"-----") else [data]


def _comparable(cert: Any) -> dict[str, Any]:
    out = {k: getattr(cert, k) for k in cert.__dataclass_fields__ if k not in ("public_key", "parsed_by")}
    out["extensions"] = {k: v for k, v in out["extensions"].items() if k != KEY_USAGE}
    out["key"] = cert.public_key.public_numbers()
    return out


@pytest.mark.parametrize(
    "entry", LEAVES + [e for e in CAS if e["file"].startswith("snp/")], ids=lambda e: e["file"]
)
def test_fallback_parser_matches_cryptography(vectors: Path, entry: dict[str, Any]) -> None:
    for der in _ders(vectors, entry):
        primary = parse_certificate(der)
        fallback = parse_certificate(der, force_fallback=True)
        assert (primary.parsed_by, fallback.parsed_by) == ("cryptography", "der")
        assert _comparable(primary) == _comparable(fallback)
        assert primary.amd_extensions() == fallback.amd_extensions()
        assert primary.is_ca == fallback.is_ca
        assert fallback.pss_sha384


@pytest.mark.parametrize("entry", LEAVES, ids=lambda e: e["file"])
def test_leaf_extensions_match_manifest(vectors: Path, entry: dict[str, Any]) -> None:
    exp = entry["expected"]
    for force in (False, True):
        cert = parse_certificate(_ders(vectors, entry)[0], force_fallback=force)
        ext = cert.amd_extensions()
        amd = exp["amd_extensions"]
        assert (cert.subject_cn, cert.issuer_cn, cert.serial) == (exp["subject_cn"], exp["issuer_cn"], 0)
        assert [str(cert.not_before), str(cert.not_after)] == exp["validity"]
        assert ext.struct_version == amd["structVersion"]
        assert ext.product_name == amd["productName"]
        assert (ext.bl_spl, ext.tee_spl, ext.snp_spl, ext.ucode_spl) == (
            amd["blSPL"], amd["teeSPL"], amd["snpSPL"], amd["ucodeSPL"],
        )  # fmt: skip
        assert ext.hwid == (bytes.fromhex(amd["hwID"]) if amd["hwID"] else None)
        assert ext.csp_id == amd.get("cspID")
        assert ext.fmc_spl is None and not cert.is_ca


def test_serial_zero_warning_does_not_escape(vectors: Path) -> None:
    der = (vectors / "snp/milan-v3-oak.vcek.der").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cert = parse_certificate(der)
        SnpCollateral.from_der([der])
    assert cert.serial == 0
    assert not [w for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]


def test_every_vector_verifies_through_the_fallback_parser(
    vectors: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forced(data: bytes, *, force_fallback: bool = False) -> Any:
        return parse_certificate(data, force_fallback=True)

    monkeypatch.setattr(snp_collateral, "parse_certificate", forced)
    for entry in manifest_entries("snp-report"):
        exp = entry["expected"]
        leaf = _ders(vectors, {"file": exp["signature_verifies_with"]})[0]
        family = entry["file"].split("/")[1].split("-")[0]
        kind = "vlek" if "vlek" in entry["file"] else "vcek"
        chain = load_pem_certificates(
            (vectors / f"snp/certs/kds-cert-chain-{kind}-{family}.pem").read_bytes()
        )
        collateral = SnpCollateral.from_der([leaf, *chain])
        assert {c.parsed_by for c in collateral.pool.certificates} == {"der"}
        now = datetime.fromisoformat(exp["certificates_all_valid_between"][0])
        claims = verify_report(
            (vectors / entry["file"]).read_bytes(),
            trust=PRODUCTION,
            collateral=collateral,
            now=now,
            require_revocation=False,  # the vectors' own time, before AMD's CRLs at hand were issued
        )
        assert claims.measurement.hex() == exp["measurement"]


def test_fallback_rejects_a_tampered_tbs(vectors: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback trusts nothing it parsed: a changed TBS byte (validity year) breaks the ASK signature."""
    der = bytearray((vectors / "snp/genoa-v5-oak.vcek.der").read_bytes())
    at = der.find(b"320807")  # notAfter 2032-08-07 (UTCTime)
    assert at > 0
    der[at + 1] = ord("9")  # -> 2039
    monkeypatch.setattr(
        snp_collateral,
        "parse_certificate",
        lambda d, force_fallback=False: parse_certificate(d, force_fallback=True),
    )
    chain = load_pem_certificates((vectors / "snp/certs/kds-cert-chain-vcek-genoa.pem").read_bytes())
    collateral = SnpCollateral.from_der([bytes(der), *chain])
    report = (vectors / "snp/genoa-v5-oak.report.bin").read_bytes()
    with pytest.raises(AttestationError) as info:
        verify_report(
            report,
            trust=PRODUCTION,
            collateral=collateral,
            now=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
        )
    assert info.value.code is Code.SNP_CHAIN_INVALID


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\x00",  # trailing byte
        lambda d: b"\x30\x83\x00" + d[2:],  # non-minimal length
        lambda d: b"\x31" + d[1:],  # not a SEQUENCE
        lambda d: d[:4] + b"\xa1" + d[5:],  # version wrapper is not [0]
        lambda d: b"",
    ],
)
def test_der_reader_is_strict(vectors: Path, mutate: Any) -> None:
    der = (vectors / "snp/milan-v2-virtee.vcek.der").read_bytes()
    with pytest.raises(ValueError):
        asn1.parse_certificate(mutate(der))
    with pytest.raises(ValueError):
        parse_certificate(mutate(der))


def test_der_primitives() -> None:
    assert asn1.decode_oid(bytes.fromhex("2b060104019c780102")) == "1.3.6.1.4.1.3704.1.2"
    assert asn1.decode_integer(b"\x00\xdb") == 219 and asn1.decode_integer(b"\xff") == -1
    for bad in (b"", b"\x00\x01", b"\xff\x80"):
        with pytest.raises(ValueError):
            asn1.decode_integer(bad)
    for bad_oid in (b"", b"\x2b\x86", b"\x2b\x80\x01"):
        with pytest.raises(ValueError):
            asn1.decode_oid(bad_oid)
    assert str(asn1.decode_time(asn1.UTC_TIME, b"490101000000Z")) == "2049-01-01 00:00:00+00:00"
    assert str(asn1.decode_time(asn1.UTC_TIME, b"500101000000Z")) == "1950-01-01 00:00:00+00:00"
    assert str(asn1.decode_time(asn1.GENERALIZED_TIME, b"20500101000000Z")) == "2050-01-01 00:00:00+00:00"
    with pytest.raises(ValueError):
        asn1.decode_time(asn1.UTC_TIME, b"4901010000Z")
    with pytest.raises(ValueError):
        asn1.read_tlv(b"\x04\x80", 0, 2)  # indefinite length


def test_pem_helper_and_bad_collateral(vectors: Path) -> None:
    chain = load_pem_certificates((vectors / "snp/certs/kds-cert-chain-vcek-milan.pem").read_bytes())
    assert [parse_certificate(d).subject_cn for d in chain] == ["SEV-Milan", "ARK-Milan"]
    assert load_pem_certificates(b"no pem here") == []
    with pytest.raises(ValueError):
        load_pem_certificates(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----")
    with pytest.raises(CollateralError) as info:
        SnpCollateral.from_der([b"\x30\x00"])
    assert info.value.code is Code.COLLATERAL_MALFORMED
    with pytest.raises(CollateralError):
        SnpCollateral.from_der([], crls=[b"not a crl"])
    both = SnpCollateral.from_der([*chain, *chain])
    assert len(both.pool.certificates) == 2
