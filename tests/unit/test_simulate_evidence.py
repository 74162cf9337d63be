"""Simulated evidence through the one entry point, with collateral imported the way an operator would."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from vectorlib import vectors_dir

from attestation.claims import Tee
from attestation.collateral import Collateral, classify
from attestation.errors import AttestationError, Code
from attestation.evidence import detect_tee, verify_evidence
from attestation.simulate import SimulatedPki, shared_pki
from attestation.trust import PRODUCTION

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(NOW)


def imported(pki: SimulatedPki) -> Collateral:
    """Every collateral file the PKI hands out, classified from raw bytes (no hints about its kind)."""
    files = [
        *(raw for values in pki.snp_collateral_items().values() for raw in values),
        *(raw for values in pki.tdx_collateral_items().values() for raw in values),
    ]
    return Collateral.from_items(item for raw in files for item in classify(raw))


def test_both_tees_verify_through_verify_evidence(pki: SimulatedPki) -> None:
    snp = pki.mint_snp_report(product="Genoa", version=5).report
    tdx = pki.mint_tdx_quote(version=5, body_type=3).quote
    collateral = imported(pki)  # after minting, so the VCEK is among the SNP certificates
    assert (detect_tee(snp), detect_tee(tdx)) == (Tee.SNP, Tee.TDX)
    for evidence, tee in ((snp, Tee.SNP), (tdx, Tee.TDX)):
        claims = verify_evidence(evidence, trust=pki.trust_store(), collateral=collateral, now=NOW)
        assert claims.tee is tee and claims.simulated is True
        with pytest.raises(AttestationError) as err:
            verify_evidence(evidence, trust=PRODUCTION, collateral=collateral, now=NOW)
        assert err.value.code is Code.TEST_ROOT_IN_PRODUCTION


def test_simulated_is_derived_from_the_root_not_from_the_trust_profile(pki: SimulatedPki) -> None:
    """Security review finding 6: a trust file pinning the simulator's roots with allow_simulated false
    (or any name) made simulator evidence come out simulated: False, escaping simulated_evidence = "deny"."""
    snp = pki.mint_snp_report(product="Milan", version=3).report
    tdx = pki.mint_tdx_quote().quote
    collateral = imported(pki)
    disguised = replace(pki.trust_store(), name="production", allow_simulated=False)
    for evidence in (snp, tdx):
        claims = verify_evidence(evidence, trust=disguised, collateral=collateral, now=NOW)
        assert claims.simulated is True
        assert claims.revocation_checked is True  # the simulator's collateral carries current CRLs
        assert disguised.is_simulated_root(pki.intel_ca().root_der)
    vectors = vectors_dir()
    if vectors is not None:  # Intel's real root is never simulated, whatever the profile says
        intel_root = (vectors / "tdx/certs/intel-sgx-root-ca.der").read_bytes()
        assert not disguised.is_simulated_root(intel_root)
