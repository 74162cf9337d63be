"""SEV-SNP revocation fails closed (security review, finding 3): under the production trust profile a CRL
issued by the product's ARK and current at the time passed in is required, checked with AMD's real KDS
CRLs (valid 2026-08-19 to 2026-10-04); the only way around it is the explicit opt-out, which shows in
the claims."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from vectorlib import manifest_entries

from attestation.collateral import Collateral, classify
from attestation.errors import AttestationError, Code
from attestation.evidence import verify_evidence
from attestation.snp import SnpCollateral, load_pem_certificates, parse_certificate, verify_report
from attestation.trust import PRODUCTION

INSIDE_CRLS = datetime(2026, 9, 1, tzinfo=UTC)
CRL_THIS_UPDATE = datetime(2026, 8, 19, 14, 9, 1, tzinfo=UTC)  # the earliest of the three
VCEK_REPORTS = [e for e in manifest_entries("snp-report") if "vlek" not in e["file"]]
VLEK_REPORTS = [e for e in manifest_entries("snp-report") if "vlek" in e["file"]]


def _name(entry: dict[str, Any]) -> str:
    return str(entry["file"]).split("/")[1].removesuffix(".report.bin")


def _product(entry: dict[str, Any]) -> str:
    return _name(entry).split("-")[0]


def _leaf(vectors: Path, entry: dict[str, Any]) -> bytes:
    data = (vectors / entry["expected"]["signature_verifies_with"]).read_bytes()
    return load_pem_certificates(data)[0] if data.startswith(b"-----") else data


def _chain(vectors: Path, product: str, kind: str = "vcek") -> list[bytes]:
    return load_pem_certificates((vectors / f"snp/certs/kds-cert-chain-{kind}-{product}.pem").read_bytes())


def _crl(vectors: Path, product: str) -> bytes:
    return (vectors / f"snp/certs/kds-crl-{product}.der").read_bytes()


@pytest.mark.parametrize("entry", VCEK_REPORTS, ids=_name)
def test_every_vcek_vector_verifies_with_amds_crl_inside_its_window(
    vectors: Path, entry: dict[str, Any]
) -> None:
    product = _product(entry)
    report = (vectors / entry["file"]).read_bytes()
    collateral = SnpCollateral.from_der(
        [_leaf(vectors, entry), *_chain(vectors, product)], [_crl(vectors, product)]
    )
    claims = verify_report(report, trust=PRODUCTION, collateral=collateral, now=INSIDE_CRLS)
    assert claims.revocation_checked is True and claims.simulated is False
    assert claims.measurement.hex() == entry["expected"]["measurement"]


@pytest.mark.parametrize("entry", VCEK_REPORTS, ids=_name)
def test_without_a_current_crl_production_refuses_with_a_code(vectors: Path, entry: dict[str, Any]) -> None:
    product = _product(entry)
    report = (vectors / entry["file"]).read_bytes()
    certs = [_leaf(vectors, entry), *_chain(vectors, product)]

    def code(crls: list[bytes], now: datetime) -> Code:
        with pytest.raises(AttestationError) as info:
            verify_report(report, trust=PRODUCTION, collateral=SnpCollateral.from_der(certs, crls), now=now)
        assert info.value.hint
        return info.value.code

    assert code([], INSIDE_CRLS) is Code.SNP_CRL_MISSING
    assert code([_crl(vectors, product)], datetime(2026, 10, 4, 0, 0, 1, tzinfo=UTC)) is Code.SNP_CRL_EXPIRED
    assert code([_crl(vectors, product)], CRL_THIS_UPDATE - timedelta(days=1)) is Code.SNP_CRL_EXPIRED
    # Another product's CRL (another ARK's) does not cover this chain.
    other = "genoa" if product == "milan" else "milan"
    assert code([_crl(vectors, other)], INSIDE_CRLS) is Code.SNP_CRL_MISSING


def test_the_memoised_chain_still_requires_a_current_crl(vectors: Path) -> None:
    """A chain verified once is remembered; the CRL's window is re-checked on every call."""
    entry = next(e for e in VCEK_REPORTS if _name(e) == "genoa-v5-oak")
    report = (vectors / entry["file"]).read_bytes()
    collateral = SnpCollateral.from_der(
        [_leaf(vectors, entry), *_chain(vectors, "genoa")], [_crl(vectors, "genoa")]
    )
    assert verify_report(report, trust=PRODUCTION, collateral=collateral, now=INSIDE_CRLS).revocation_checked
    with pytest.raises(AttestationError) as info:
        verify_report(report, trust=PRODUCTION, collateral=collateral, now=datetime(2026, 10, 5, tzinfo=UTC))
    assert info.value.code is Code.SNP_CRL_EXPIRED


def test_the_genoa_crl_revokes_an_earlier_ask_not_the_current_one(vectors: Path) -> None:
    crl = x509.load_der_x509_crl(_crl(vectors, "genoa"))
    revoked = {entry.serial_number for entry in crl}
    ask = parse_certificate(_chain(vectors, "genoa")[0])
    assert revoked == {0x020001} and ask.serial == 0x020002 and ask.subject_cn == "SEV-Genoa"


@pytest.mark.parametrize("entry", VCEK_REPORTS[:1] + VLEK_REPORTS, ids=_name)
def test_the_opt_out_verifies_archived_evidence_and_says_so(vectors: Path, entry: dict[str, Any]) -> None:
    """Archived evidence (here: at its certificates' own time, years before these CRLs) verifies only with
    the explicit opt-out, and its claims say revocation was not checked (the default policy denies that)."""
    product = _product(entry)
    kind = "vlek" if "vlek" in entry["file"] else "vcek"
    report = (vectors / entry["file"]).read_bytes()
    collateral = SnpCollateral.from_der(
        [_leaf(vectors, entry), *_chain(vectors, product, kind)], [_crl(vectors, product)]
    )
    archived_at = datetime.fromisoformat(entry["expected"]["certificates_all_valid_between"][0])
    with pytest.raises(AttestationError) as info:
        verify_report(report, trust=PRODUCTION, collateral=collateral, now=archived_at)
    assert info.value.code is Code.SNP_CRL_EXPIRED
    claims = verify_report(
        report, trust=PRODUCTION, collateral=collateral, now=archived_at, require_revocation=False
    )
    assert claims.revocation_checked is False and claims.to_dict()["revocation_checked"] is False
    if kind == "vcek":  # a current CRL is used when there is one, opt-out or not
        again = verify_report(
            report, trust=PRODUCTION, collateral=collateral, now=INSIDE_CRLS, require_revocation=False
        )
        assert again.revocation_checked is True


def test_collateral_imported_from_files_carries_the_crl_to_verify_evidence(vectors: Path) -> None:
    """What README's example does: import the VCEK, the KDS cert_chain and the CRL, verify at a time
    inside the CRL's window through the one entry point."""
    entry = next(e for e in VCEK_REPORTS if _name(e) == "genoa-v5-oak")
    files = [
        vectors / "snp/genoa-v5-oak.vcek.der",
        vectors / "snp/certs/kds-cert-chain-vcek-genoa.pem",
        vectors / "snp/certs/kds-crl-genoa.der",
    ]
    collateral = Collateral.from_items(item for f in files for item in classify(f.read_bytes(), f.name))
    report = (vectors / entry["file"]).read_bytes()
    claims = verify_evidence(report, trust=PRODUCTION, collateral=collateral, now=INSIDE_CRLS)
    assert claims.revocation_checked is True
    with pytest.raises(AttestationError) as info:
        verify_evidence(
            report,
            trust=PRODUCTION,
            collateral=Collateral.from_items(
                item for f in files[:2] for item in classify(f.read_bytes(), f.name)
            ),
            now=INSIDE_CRLS,
        )
    assert info.value.code is Code.SNP_CRL_MISSING


def test_claims_say_until_when_the_crl_is_current_and_reappraisal_denies_after(vectors: Path) -> None:
    """As for TDX: stored SNP claims are re-appraised, and the CRL they were checked with goes stale."""
    from policies import Code as PolicyCode
    from policies import appraise, load_default

    entry = next(e for e in VCEK_REPORTS if _name(e) == "milan-v3-oak")
    report = (vectors / entry["file"]).read_bytes()
    collateral = SnpCollateral.from_der(
        [_leaf(vectors, entry), *_chain(vectors, "milan")], [_crl(vectors, "milan")]
    )
    claims = verify_report(report, trust=PRODUCTION, collateral=collateral, now=INSIDE_CRLS)
    assert claims.details["collateral_expires"] == "2026-10-04T00:00:00+00:00"
    policy = load_default("default")
    before = {r.code for r in appraise(policy, claims, now=INSIDE_CRLS).reasons}
    after = {r.code for r in appraise(policy, claims, now=datetime(2026, 10, 5, tzinfo=UTC)).reasons}
    assert after - before == {PolicyCode.POLICY_COLLATERAL_EXPIRED}
    assert PolicyCode.POLICY_REVOCATION_NOT_CHECKED not in before
