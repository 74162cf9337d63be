"""The GPU simulator: clean evidence verifies under the strictest options, each fault knob yields its code,
the production profile refuses it, its RIMs satisfy xmlsec1 too, and caches never skip pins or windows."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from xmlsec1 import ensure_xmlsec1, xmlsec1_accepts

from attestation import gpu
from attestation.errors import AttestationError, Code
from attestation.simulate.gpu import GpuFault, GpuSimulator, MintedGpu
from attestation.trust import PRODUCTION, TrustStore

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
EXPECTED = {
    GpuFault.MALFORMED: Code.GPU_REPORT_MALFORMED,
    GpuFault.BAD_SIGNATURE: Code.GPU_SIGNATURE_INVALID,
    GpuFault.FOREIGN_CHAIN: Code.GPU_CHAIN_UNTRUSTED,
    GpuFault.EXPIRED_CERT: Code.GPU_CERT_EXPIRED,
    GpuFault.FWID_MISMATCH: Code.GPU_FWID_MISMATCH,
    GpuFault.NONCE_MISMATCH: Code.GPU_NONCE_MISMATCH,
    GpuFault.REVOKED: Code.GPU_REVOKED,
    GpuFault.MISSING_COLLATERAL: Code.GPU_COLLATERAL_MISSING,
    GpuFault.EXPIRED_COLLATERAL: Code.GPU_COLLATERAL_EXPIRED,
    GpuFault.RIM_INVALID: Code.GPU_RIM_INVALID,
    GpuFault.RIM_UNTRUSTED: Code.GPU_RIM_UNTRUSTED,
    GpuFault.RIM_EXPIRED: Code.GPU_RIM_EXPIRED,
    GpuFault.RIM_INDEX_CONFLICT: Code.GPU_RIM_INDEX_CONFLICT,
    GpuFault.MEASUREMENT_MISMATCH: Code.GPU_MEASUREMENT_MISMATCH,
}


@pytest.fixture(scope="module")
def sim() -> GpuSimulator:
    return GpuSimulator(NOW)


def _verify(
    sim: GpuSimulator, minted: MintedGpu, *, trust: TrustStore | None = None, now: datetime = NOW,
    collateral: gpu.GpuCollateral | None = None, cache: gpu.GpuVerifierCache | None = None,
) -> gpu.GpuClaims:  # fmt: skip
    return gpu.verify_gpu(
        minted.evidence, nonce=minted.nonce, trust=trust or sim.trust_store(), now=now,
        collateral=collateral or minted.collateral(), driver_rim=minted.driver_rim, vbios_rim=minted.vbios_rim,
        cache=cache,
    )  # fmt: skip


def test_every_code_has_a_knob() -> None:
    assert set(EXPECTED) == set(GpuFault)
    assert {c for c in Code if c.value.startswith("GPU_")} - set(EXPECTED.values()) == {
        Code.GPU_DUPLICATE_DEVICE
    }


@pytest.mark.parametrize("architecture", ["HOPPER", "BLACKWELL"])
def test_clean_evidence_verifies_strictly(sim: GpuSimulator, architecture: str) -> None:
    minted = sim.mint(nonce=os.urandom(32), architecture=architecture, seed=f"clean-{architecture}")
    claims = _verify(sim, minted)
    assert claims.architecture == architecture
    assert claims.ueid == minted.ueid
    assert claims.fwid_in_report
    assert (claims.driver_version, claims.vbios_version) == (minted.driver_version, minted.vbios_version)
    assert claims.measurement_result == "success"
    assert claims.simulated and claims.to_dict()["simulated"] is True
    assert claims.details["revocation"]["status"] == "good"
    assert claims.details["driver_rim"]["matches_report_version"] is True
    assert claims.details["vbios_rim"]["matches_report_version"] is True
    assert claims.details["measurements_skipped"] == [35]
    if architecture == "BLACKWELL":  # the TCG DICE Ueid extension, not the device name
        assert not claims.ueid.startswith("NVIDIA:")


@pytest.mark.parametrize("fault", list(GpuFault), ids=str)
def test_each_fault_yields_its_code(sim: GpuSimulator, fault: GpuFault) -> None:
    minted = sim.mint(nonce=os.urandom(32), faults={fault}, seed=f"fault-{fault}")
    with pytest.raises(AttestationError) as info:
        _verify(sim, minted)
    assert info.value.code == EXPECTED[fault], info.value.message


def test_production_refuses_the_simulator(sim: GpuSimulator) -> None:
    minted = sim.mint(nonce=os.urandom(32))
    with pytest.raises(AttestationError) as info:
        _verify(sim, minted, trust=PRODUCTION)
    assert info.value.code == Code.TEST_ROOT_IN_PRODUCTION
    with pytest.raises(AttestationError) as rim_info:
        gpu.verify_rim(minted.driver_rim, trust=PRODUCTION, now=NOW)
    assert rim_info.value.code == Code.TEST_ROOT_IN_PRODUCTION


def test_alternatives_are_honoured(sim: GpuSimulator) -> None:
    """Index 4 lists two golden values; the report carries the second one."""
    minted = sim.mint(nonce=os.urandom(32))
    rim = gpu.verify_rim(minted.vbios_rim, trust=sim.trust_store(), now=NOW)
    assert len(rim.measurements[4].alternatives) == 2
    assert gpu.parse_report(minted.evidence.report).measurements[5] == rim.measurements[4].alternatives[1]
    assert _verify(sim, minted).measurement_result == "success"


def test_measurement_overrides_are_what_the_report_carries(sim: GpuSimulator) -> None:
    """``mint(measurements=...)`` puts given values at RIM index i into report block i + 1 (how a report is
    made to carry a real RIM's golden values); malformed overrides are refused, not minted."""
    values = {0: bytes([7]) * 48, 35: bytes([9]) * 48}
    minted = sim.mint(nonce=os.urandom(32), measurements=values, seed="override")
    blocks = gpu.parse_report(minted.evidence.report).measurements
    assert (blocks[1], blocks[36]) == (values[0], values[35])
    assert _verify(sim, minted).measurement_result == "success"
    for bad in ({64: bytes(48)}, {-1: bytes(48)}, {3: bytes(32)}):
        with pytest.raises(ValueError):
            sim.mint(nonce=os.urandom(32), measurements=bad)


def test_crls_answer_for_revocation_too(sim: GpuSimulator) -> None:
    minted = sim.mint(nonce=os.urandom(32), faults={GpuFault.MISSING_COLLATERAL}, seed="crl")
    brom = x509.load_der_x509_certificate(minted.evidence.chain[1])
    good = gpu.GpuCollateral(minted.ocsp_responses, crls=[sim.provisioner_crl()])
    assert _verify(sim, minted, collateral=good).details["revocation"]["status"] == "good"
    for crl, code in [
        (sim.provisioner_crl(revoked=(brom,)), Code.GPU_REVOKED),
        (sim.provisioner_crl(stale=True), Code.GPU_COLLATERAL_EXPIRED),
    ]:
        with pytest.raises(AttestationError) as info:
            _verify(sim, minted, collateral=gpu.GpuCollateral(minted.ocsp_responses, crls=[crl]))
        assert info.value.code == code
    # A CRL signed by someone else answers nothing.
    other = GpuSimulator(NOW)
    with pytest.raises(AttestationError) as info:
        _verify(
            sim, minted, collateral=gpu.GpuCollateral(minted.ocsp_responses, crls=[other.provisioner_crl()])
        )
    assert info.value.code == Code.GPU_COLLATERAL_MISSING


def test_ocsp_for_another_certificate_answers_nothing(sim: GpuSimulator) -> None:
    one = sim.mint(nonce=os.urandom(32), seed="ocsp-a")
    two = sim.mint(nonce=os.urandom(32), seed="ocsp-b")
    mixed = gpu.GpuCollateral(ocsp_responses=[*two.ocsp_responses, b"not DER"])
    with pytest.raises(AttestationError) as info:
        _verify(sim, one, collateral=mixed)
    assert info.value.code == Code.GPU_COLLATERAL_MISSING


def test_cache_never_skips_pins_or_windows(sim: GpuSimulator) -> None:
    cache = gpu.GpuVerifierCache()
    minted = sim.mint(nonce=os.urandom(32), seed="cached")
    first = _verify(sim, minted, cache=cache)
    assert _verify(sim, minted, cache=cache) == first
    with pytest.raises(AttestationError) as pinned:
        _verify(sim, minted, cache=cache, trust=GpuSimulator(NOW).trust_store())
    assert pinned.value.code == Code.GPU_CHAIN_UNTRUSTED
    with pytest.raises(AttestationError) as late:
        _verify(sim, minted, cache=cache, now=NOW + timedelta(days=365 * 20))
    assert late.value.code == Code.GPU_CERT_EXPIRED
    tampered = gpu.GpuEvidence(minted.evidence.report[:-1] + b"\x00", minted.evidence.chain)
    with pytest.raises(AttestationError) as sig:
        gpu.verify_gpu(
            tampered, nonce=minted.nonce, trust=sim.trust_store(), now=NOW, collateral=minted.collateral(),
            driver_rim=minted.driver_rim, vbios_rim=minted.vbios_rim, cache=cache,
        )  # fmt: skip
    assert sig.value.code == Code.GPU_SIGNATURE_INVALID


def test_a_node_with_two_gpus(sim: GpuSimulator) -> None:
    """Two GPUs with the same driver and VBIOS share one pair of RIMs; each is its own device."""
    nonce = os.urandom(32)
    gpus = [sim.mint(nonce=nonce, seed=f"node-{i}") for i in range(2)]
    rims = {(gpus[0].driver_version, gpus[0].vbios_version): (gpus[0].driver_rim, gpus[0].vbios_rim)}
    collateral = gpu.GpuCollateral([r for g in gpus for r in g.ocsp_responses])

    def lookup(driver: str, vbios: str) -> tuple[bytes | None, bytes | None]:
        return rims.get((driver, vbios), (None, None))

    claims = gpu.verify_gpus(
        [g.evidence for g in gpus],
        nonce=nonce,
        trust=sim.trust_store(),
        now=NOW,
        collateral=collateral,
        rims=lookup,
    )
    assert [c.ueid for c in claims] == [g.ueid for g in gpus]
    assert len({c.ueid for c in claims}) == 2
    assert all(c.measurement_result == "success" for c in claims)
    with pytest.raises(AttestationError) as info:
        gpu.verify_gpus(
            [gpus[0].evidence, gpus[0].evidence], nonce=nonce, trust=sim.trust_store(), now=NOW,
            collateral=collateral, rims=lookup,
        )  # fmt: skip
    assert info.value.code == Code.GPU_DUPLICATE_DEVICE
    unknown = sim.mint(nonce=nonce, seed="node-x", driver_version="999.1")
    with pytest.raises(AttestationError) as missing:
        gpu.verify_gpus(
            [unknown.evidence], nonce=nonce, trust=sim.trust_store(), now=NOW, collateral=unknown.collateral(),
            rims=lookup,
        )  # fmt: skip
    assert missing.value.code == Code.GPU_COLLATERAL_MISSING


def test_simulated_rims_satisfy_xmlsec1(sim: GpuSimulator, tmp_path: Path) -> None:
    binary = ensure_xmlsec1()
    root = tmp_path / "rim-root.pem"
    root.write_bytes(sim.rim_root.cert.public_bytes(serialization.Encoding.PEM))
    clean = sim.mint(nonce=os.urandom(32), seed="xmlsec")
    tampered = sim.mint(nonce=os.urandom(32), seed="xmlsec-bad", faults={GpuFault.RIM_INVALID})
    for name, data, want in [("driver", clean.driver_rim, True), ("vbios", clean.vbios_rim, True),
                             ("tampered", tampered.vbios_rim, False)]:  # fmt: skip
        path = tmp_path / f"{name}.xml"
        path.write_bytes(data)
        assert xmlsec1_accepts(binary, path, root, NOW) is want, name


def test_rim_signer_chains_need_revocation_answers_too(sim: GpuSimulator) -> None:
    minted = sim.mint(nonce=os.urandom(32), seed="rim-ocsp")
    device_only = gpu.GpuCollateral(minted.ocsp_responses[:4])  # the device chain's four answers
    with pytest.raises(AttestationError) as info:
        _verify(sim, minted, collateral=device_only)
    assert info.value.code == Code.GPU_COLLATERAL_MISSING
    assert "RIM signer" in info.value.message


def test_every_gpu_code_has_a_hint() -> None:
    for code in (c for c in Code if c.value.startswith("GPU_")):
        assert AttestationError("x", code=code).hint, code
