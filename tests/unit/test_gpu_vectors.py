"""NVIDIA GPU verification on the real vectors (../shared/vectors/gpu) under the production trust store.

Times are pinned: the sample RIM certificates expired in 2025, so "inside the RIM chains' window" is
2024-06-01, and "today" is a fixed date after every RIM leaf expired.

One pairing in the issue does not hold for the shared bytes, and the tests say so instead of hiding it:
``hopper-nvtrust-550`` is the report nvtrust ships *today* (driver 550.90.07, VBIOS 96.00.9F.00.01), while
the two sample RIMs nvtrust still ships beside it were made for its *earlier* sample report (driver 545.00,
VBIOS 96.00.5E.00.01), so 550 against them is ``GPU_MEASUREMENT_MISMATCH`` although both RIM signatures
verify. No real report in the shared vectors matches those RIMs. The positive comparison ("every active
golden index matches real RIMs") therefore uses a *faithful* report: minted by the simulator (its device
key and chain, pinned as a test root) with measurement values taken from the real RIMs' golden values,
checked against the real, production-root-signed RIMs. Adding nvtrust's earlier 545 sample report to
../shared/vectors would allow a fully real positive test.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from vectorlib import manifest_entries

from attestation import gpu
from attestation.errors import AttestationError, Code
from attestation.simulate.gpu import GpuSimulator
from attestation.trust import (
    NVIDIA_DEVICE_ROOT_SHA256,
    NVIDIA_RIM_ROOT_SHA256,
    PRODUCTION,
    TrustStore,
    fingerprint,
)

REPORTS = manifest_entries("gpu-report")
INSIDE_RIM_WINDOW = datetime(2024, 6, 1, tzinfo=UTC)
TODAY = datetime(2026, 12, 3, tzinfo=UTC)
NO_COLLATERAL = gpu.GpuVerifyOptions(require_revocation=False, require_rims=False)
RIMS_NO_REVOCATION = gpu.GpuVerifyOptions(require_revocation=False)
COCO_REPORT_DATA = (
    "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fece279b616efefc2aae21da80cf5581250"
)


def _report(vectors: Path, name: str) -> bytes:
    return gpu.decode_hex_report((vectors / f"gpu/{name}.report.txt").read_text())


def _evidence(vectors: Path, name: str, chain: str | None = None) -> gpu.GpuEvidence:
    return gpu.from_pem(_report(vectors, name), (vectors / f"gpu/{chain or name}.chain.pem").read_bytes())


def _rim(vectors: Path, name: str) -> bytes:
    return (vectors / f"gpu/rims/{name}.swidtag").read_bytes()


def _verify(evidence: gpu.GpuEvidence, **kw: Any) -> gpu.GpuClaims:
    args: dict[str, Any] = {
        "nonce": gpu.parse_report(evidence.report).request.nonce,
        "trust": PRODUCTION,
        "now": INSIDE_RIM_WINDOW,
        "collateral": None,
        "driver_rim": None,
        "vbios_rim": None,
        "options": NO_COLLATERAL,
    }
    args.update(kw)
    return gpu.verify_gpu(evidence, **args)


def _code(fn: Any) -> Code:
    with pytest.raises(AttestationError) as info:
        fn()
    return info.value.code


def test_pins_are_the_shared_roots(vectors: Path) -> None:
    device = gpu.chain.load_pem_chain(
        (vectors / "gpu/certs/nvidia-device-identity-root.pem").read_bytes(), Code.GPU_CHAIN_UNTRUSTED
    )
    rim = gpu.chain.load_pem_chain(
        (vectors / "gpu/certs/nvidia-rim-root.pem").read_bytes(), Code.GPU_RIM_UNTRUSTED
    )
    assert {fingerprint(device[0])} == NVIDIA_DEVICE_ROOT_SHA256
    assert {fingerprint(rim[0])} == NVIDIA_RIM_ROOT_SHA256


@pytest.mark.parametrize("entry", REPORTS, ids=[e["file"] for e in REPORTS])
def test_reports_parse_to_the_manifest_values(vectors: Path, entry: dict[str, Any]) -> None:
    exp = entry["expected"]
    report = gpu.parse_report(gpu.decode_hex_report((vectors / entry["file"]).read_text()))
    assert report.request.nonce.hex().startswith(exp["requester_nonce_prefix"])
    assert report.opaque_text(gpu.spdm.OPAQUE_DRIVER_VERSION) == exp["driver_version"]
    assert report.opaque_text(gpu.spdm.OPAQUE_PROJECT) == exp["project"]
    assert report.opaque_text(gpu.spdm.OPAQUE_CHIP_SKU) == exp["chip_sku"]
    if "vbios_version_hex" in exp:
        assert report.opaque[gpu.spdm.OPAQUE_VBIOS_VERSION].hex() == exp["vbios_version_hex"]
    if "measurement_blocks" in exp:
        assert len(report.blocks) == exp["measurement_blocks"]
        assert [b.measurement_index for b in report.blocks] == list(range(1, 65))
        assert all(b.is_digest and len(b.value) == 48 for b in report.blocks)
    assert len(report.signature) == 96


@pytest.mark.parametrize("name", ["hopper-nvtrust-550", "hopper-sdk-535", "hopper-sdk-expired"])
def test_signature_and_chain_verify(vectors: Path, name: str) -> None:
    claims = _verify(_evidence(vectors, name))
    report = gpu.parse_report(_report(vectors, name))
    assert claims.architecture == "HOPPER" and claims.chip == "GH100"
    assert not claims.simulated
    assert claims.driver_version == report.opaque_text(gpu.spdm.OPAQUE_DRIVER_VERSION)
    assert claims.ueid.startswith("NVIDIA:GH100:")
    assert claims.measurement_result == "not-compared"
    assert claims.details["revocation"] == {"status": "not-checked"}
    # FWID: the report carries it from driver 550 on; where it does, it equals the leaf's.
    assert claims.fwid_in_report == (gpu.spdm.OPAQUE_FWID in report.opaque)
    if claims.fwid_in_report:
        assert report.opaque[gpu.spdm.OPAQUE_FWID] == claims.fwid


def test_vbios_version_text(vectors: Path) -> None:
    assert _verify(_evidence(vectors, "hopper-nvtrust-550")).vbios_version == "96.00.9F.00.01"
    assert _verify(_evidence(vectors, "hopper-sdk-535")).vbios_version == "96.00.5E.00.01"


def test_badsig_is_refused_with_the_signature_code(vectors: Path) -> None:
    evidence = _evidence(vectors, "hopper-sdk-badsig", chain="hopper-sdk-535")
    assert _code(lambda: _verify(evidence)) == Code.GPU_SIGNATURE_INVALID


def test_coco_report_verdict(vectors: Path) -> None:
    """Established here: the Confidential Containers report verifies once parsed by structure. Its
    signature is the 96 bytes after the opaque data (opaque-data version 0100 with a FEATURE_FLAG record);
    one zero byte follows the signature and is counted, not read. Its nonce is the first 32 bytes of the
    CPU report_data Trustee expects."""
    evidence = _evidence(vectors, "hopper-coco")
    report = gpu.parse_report(evidence.report)
    assert report.trailing_bytes == 1 and evidence.report[-1:] == b"\x00"
    assert report.opaque[gpu.spdm.OPAQUE_OPAQUE_DATA_VERSION] == bytes.fromhex("0100")
    claims = _verify(evidence, nonce=bytes.fromhex(COCO_REPORT_DATA)[:32])
    assert claims.fwid_in_report and claims.driver_version == "580.95.05"
    assert claims.details["feature_flag"] == "0000" and claims.details["trailing_bytes"] == 1
    # "The last 96 bytes" would be the wrong signature: shifted by the trailing byte.
    assert evidence.report[-96:] != report.signature
    assert evidence.report[-97:-1] == report.signature


def test_nonce_mismatch(vectors: Path) -> None:
    evidence = _evidence(vectors, "hopper-nvtrust-550")
    assert _code(lambda: _verify(evidence, nonce=bytes(32))) == Code.GPU_NONCE_MISMATCH


def test_chain_must_end_at_the_pinned_root(vectors: Path) -> None:
    evidence = _evidence(vectors, "hopper-nvtrust-550")
    unpinned = TrustStore(name="no-nvidia", amd_arks={}, intel_roots=frozenset())
    assert _code(lambda: _verify(evidence, trust=unpinned)) == Code.GPU_CHAIN_UNTRUSTED
    truncated = gpu.GpuEvidence(evidence.report, evidence.chain[:-1])
    assert _code(lambda: _verify(truncated)) == Code.GPU_CHAIN_UNTRUSTED
    foreign = gpu.GpuEvidence(
        evidence.report, (*_evidence(vectors, "hopper-sdk-535").chain[:1], *evidence.chain[1:])
    )
    assert _code(lambda: _verify(foreign)) == Code.GPU_CHAIN_UNTRUSTED


def test_revocation_collateral_is_required_by_default(vectors: Path) -> None:
    evidence = _evidence(vectors, "hopper-nvtrust-550")
    strict = gpu.GpuVerifyOptions()
    assert _code(lambda: _verify(evidence, options=strict)) == Code.GPU_COLLATERAL_MISSING
    empty = gpu.GpuCollateral()
    assert _code(lambda: _verify(evidence, options=strict, collateral=empty)) == Code.GPU_COLLATERAL_MISSING


def test_nvtrust_550_with_its_shipped_rims_is_a_measurement_mismatch(vectors: Path) -> None:
    """Both RIM signatures and chains verify inside their window; the comparison fails because the RIMs
    describe driver 545.00 / VBIOS 96.00.5E.00.01 and the report is driver 550.90.07 / VBIOS 96.00.9F.00.01."""
    evidence = _evidence(vectors, "hopper-nvtrust-550")
    driver = gpu.verify_rim(_rim(vectors, "driver-nvtrust-sample"), trust=PRODUCTION, now=INSIDE_RIM_WINDOW)
    vbios = gpu.verify_rim(
        _rim(vectors, "vbios-96005E0001-nvtrust-sample"), trust=PRODUCTION, now=INSIDE_RIM_WINDOW
    )
    assert (driver.version, vbios.version) == ("545.00", "96.00.5E.00.01")
    with pytest.raises(AttestationError) as info:
        _verify(
            evidence,
            driver_rim=_rim(vectors, "driver-nvtrust-sample"),
            vbios_rim=_rim(vectors, "vbios-96005E0001-nvtrust-sample"),
            options=RIMS_NO_REVOCATION,
        )
    assert info.value.code == Code.GPU_MEASUREMENT_MISMATCH


SAMPLE_RIMS = ("driver-nvtrust-sample", "vbios-96005E0001-nvtrust-sample")
VBIOS_545 = bytes.fromhex("005e009601000000")  # 96.00.5E.00.01 in the report's byte order


@dataclass(frozen=True)
class FaithfulReport:
    """A simulator-signed report carrying the real sample RIMs' golden values, and a trust store that pins
    the simulator's device root for the report chain and NVIDIA's real RIM root for the RIMs."""

    evidence: gpu.GpuEvidence
    simulator: GpuSimulator
    trust: TrustStore


@pytest.fixture(scope="module")
def faithful_545(vectors: Path) -> FaithfulReport:
    driver, vbios = (
        gpu.verify_rim(_rim(vectors, n), trust=PRODUCTION, now=INSIDE_RIM_WINDOW) for n in SAMPLE_RIMS
    )
    golden = {i: m.alternatives[0] for rim in (driver, vbios) for i, m in rim.measurements.items()}
    simulator = GpuSimulator(INSIDE_RIM_WINDOW)
    minted = simulator.mint(
        nonce=hashlib.sha256(b"faithful-545").digest(), driver_version=driver.version, vbios=VBIOS_545,
        measurements=golden,
    )  # fmt: skip
    trust = TrustStore(
        name="simulated-device+nvidia-rims",
        amd_arks={},
        intel_roots=frozenset(),
        allow_simulated=True,
        nvidia_device_roots=simulator.trust_store().nvidia_device_roots,
        nvidia_rim_roots=NVIDIA_RIM_ROOT_SHA256,
    )
    return FaithfulReport(minted.evidence, simulator, trust)


def test_report_with_the_sample_rims_golden_values_matches_the_real_rims(
    vectors: Path, faithful_545: FaithfulReport
) -> None:
    claims = _verify(
        faithful_545.evidence, trust=faithful_545.trust, options=RIMS_NO_REVOCATION,
        driver_rim=_rim(vectors, SAMPLE_RIMS[0]), vbios_rim=_rim(vectors, SAMPLE_RIMS[1]),
    )  # fmt: skip
    assert claims.measurement_result == "success"
    assert claims.simulated  # the report is the simulator's; only the RIMs are NVIDIA's
    assert (claims.driver_version, claims.vbios_version) == ("545.00", "96.00.5E.00.01")
    assert claims.details["driver_rim"]["matches_report_version"] is True
    assert claims.details["vbios_rim"]["matches_report_version"] is True
    # 21 driver + 12 VBIOS active indexes; 35 (NVDEC0) is skipped because the report says NVDEC0 is disabled.
    assert claims.details["measurements_compared"] == 32
    assert claims.details["measurements_skipped"] == [35]
    assert claims.details["nvdec0"] == "disabled"


def test_the_faithful_report_needs_both_pins(vectors: Path, faithful_545: FaithfulReport) -> None:
    """The RIMs are checked under NVIDIA's real RIM root and the report under the simulator's device root:
    dropping either pin refuses."""
    rims = {"driver_rim": _rim(vectors, SAMPLE_RIMS[0]), "vbios_rim": _rim(vectors, SAMPLE_RIMS[1])}
    simulator_only = faithful_545.simulator.trust_store()
    assert (
        _code(
            lambda: _verify(faithful_545.evidence, trust=simulator_only, options=RIMS_NO_REVOCATION, **rims)
        )
        == Code.GPU_RIM_UNTRUSTED
    )
    assert (
        _code(lambda: _verify(faithful_545.evidence, options=RIMS_NO_REVOCATION, **rims))
        == Code.TEST_ROOT_IN_PRODUCTION
    )


def test_vbios_mismatch_rim_differs_from_the_sample_at_four_indexes(vectors: Path) -> None:
    sample, mismatch = (
        gpu.verify_rim(_rim(vectors, n), trust=PRODUCTION, now=INSIDE_RIM_WINDOW)
        for n in ("vbios-96005E0001-nvtrust-sample", "vbios-96005E0001-mismatch")
    )
    assert mismatch.version == sample.version == "96.00.5E.00.01"
    assert set(mismatch.measurements) == set(sample.measurements)
    differing = [
        i for i in sorted(sample.measurements)
        if sample.measurements[i].alternatives != mismatch.measurements[i].alternatives
    ]  # fmt: skip
    assert differing == [1, 2, 3, 9]


def test_vbios_mismatch_rim_has_a_valid_signature_and_fails_the_comparison(
    vectors: Path, faithful_545: FaithfulReport
) -> None:
    with pytest.raises(AttestationError) as info:
        _verify(
            faithful_545.evidence, trust=faithful_545.trust, options=RIMS_NO_REVOCATION,
            driver_rim=_rim(vectors, SAMPLE_RIMS[0]), vbios_rim=_rim(vectors, "vbios-96005E0001-mismatch"),
        )  # fmt: skip
    assert info.value.code == Code.GPU_MEASUREMENT_MISMATCH
    assert "[1, 2, 3, 9]" in info.value.message


@pytest.mark.parametrize("name", ["driver-gh100-535.86.09-mismatch", "driver-gh100-570.124.03-expired"])
@pytest.mark.parametrize("now", [INSIDE_RIM_WINDOW, TODAY], ids=["2024-06-01", "today"])
def test_rims_edited_after_signing_fail_their_signature_first(
    vectors: Path, name: str, now: datetime
) -> None:
    assert (
        _code(lambda: gpu.verify_rim(_rim(vectors, name), trust=PRODUCTION, now=now)) == Code.GPU_RIM_INVALID
    )
    lenient = gpu.GpuVerifyOptions(require_revocation=False, accept_expired_rim_certificates=True)
    code = _code(
        lambda: _verify(
            _evidence(vectors, "hopper-nvtrust-550"), now=now, driver_rim=_rim(vectors, name),
            vbios_rim=_rim(vectors, SAMPLE_RIMS[1]), options=lenient,
        )
    )  # fmt: skip
    assert code == Code.GPU_RIM_INVALID


@pytest.mark.parametrize(
    "name", ["driver-nvtrust-sample", "vbios-96005E0001-nvtrust-sample", "vbios-96005E0001-mismatch"]
)
def test_expired_rim_certificates_are_refused_today(vectors: Path, name: str) -> None:
    assert (
        _code(lambda: gpu.verify_rim(_rim(vectors, name), trust=PRODUCTION, now=TODAY))
        == Code.GPU_RIM_EXPIRED
    )


def test_accepting_expired_rim_certificates_is_an_explicit_option(vectors: Path) -> None:
    """Strict: the expired sample RIMs are refused. With the option their check passes and verification
    reaches the comparison, which fails as the 550 report and these RIMs always do (see above)."""
    evidence = _evidence(vectors, "hopper-nvtrust-550")
    rims = {"driver_rim": _rim(vectors, SAMPLE_RIMS[0]), "vbios_rim": _rim(vectors, SAMPLE_RIMS[1])}
    assert (
        _code(lambda: _verify(evidence, now=TODAY, options=RIMS_NO_REVOCATION, **rims))
        == Code.GPU_RIM_EXPIRED
    )
    lenient = gpu.GpuVerifyOptions(require_revocation=False, accept_expired_rim_certificates=True)
    assert (
        _code(lambda: _verify(evidence, now=TODAY, options=lenient, **rims)) == Code.GPU_MEASUREMENT_MISMATCH
    )


def test_accepted_expired_rims_are_marked_in_the_claims(vectors: Path, faithful_545: FaithfulReport) -> None:
    rims = {"driver_rim": _rim(vectors, SAMPLE_RIMS[0]), "vbios_rim": _rim(vectors, SAMPLE_RIMS[1])}
    lenient = gpu.GpuVerifyOptions(require_revocation=False, accept_expired_rim_certificates=True)
    claims = _verify(faithful_545.evidence, trust=faithful_545.trust, now=TODAY, options=lenient, **rims)
    assert claims.measurement_result == "success"
    assert claims.details["driver_rim"]["certificate_expired_accepted"] is True
    assert claims.details["vbios_rim"]["certificate_expired_accepted"] is True


def test_rims_need_the_pinned_rim_root(vectors: Path) -> None:
    device_only = TrustStore(
        name="device-only",
        amd_arks={},
        intel_roots=frozenset(),
        nvidia_device_roots=NVIDIA_DEVICE_ROOT_SHA256,
    )
    rim = _rim(vectors, "driver-nvtrust-sample")
    assert (
        _code(lambda: gpu.verify_rim(rim, trust=device_only, now=INSIDE_RIM_WINDOW)) == Code.GPU_RIM_UNTRUSTED
    )


def test_multi_gpu_json_parses_into_several_gpus(vectors: Path) -> None:
    raw = (vectors / "gpu/multi-gpu-hopper.evidence.json").read_bytes()
    items = json.loads(raw)
    evidence = gpu.parse_evidence_json(raw)
    assert len(evidence) == len(items) == 4
    assert {e.declared_architecture for e in evidence} == {"HOPPER"}
    nonce = bytes.fromhex(items[0]["nonce"])
    claims = gpu.verify_gpus(
        evidence, nonce=nonce, trust=PRODUCTION, now=INSIDE_RIM_WINDOW, collateral=None,
        rims=lambda _driver, _vbios: (None, None), options=NO_COLLATERAL,
    )  # fmt: skip
    assert len({c.ueid for c in claims}) == 4
    assert {c.driver_version for c in claims} == {"590.12"}
    # The same GPU twice (a relayed copy) is refused.
    with pytest.raises(AttestationError) as info:
        gpu.verify_gpus(
            [evidence[0], evidence[0]], nonce=nonce, trust=PRODUCTION, now=INSIDE_RIM_WINDOW, collateral=None,
            rims=lambda _driver, _vbios: (None, None), options=NO_COLLATERAL,
        )  # fmt: skip
    assert info.value.code == Code.GPU_DUPLICATE_DEVICE


def test_single_gpu_sdk_json(vectors: Path) -> None:
    raw = (vectors / "gpu/hopper-sdk.evidence.json").read_bytes()
    [evidence] = gpu.parse_evidence_json(raw)
    claims = _verify(evidence, nonce=bytes.fromhex(json.loads(raw)[0]["nonce"]))
    assert claims.architecture == "HOPPER"


@pytest.mark.parametrize(
    "payload",
    [b"", b"{}", b"[]", b"[1]", b'[{"evidence": "!!", "certificate": "AA=="}]', b"[" * 5000,
     json.dumps([{"evidence": base64.b64encode(b"\x11\xe0").decode(), "certificate": "AA=="}]).encode()],
)  # fmt: skip
def test_bad_evidence_json_is_a_coded_refusal(payload: bytes) -> None:
    with pytest.raises(AttestationError) as info:
        for item in gpu.parse_evidence_json(payload):
            _verify(item, nonce=bytes(32))
    assert info.value.code == Code.GPU_REPORT_MALFORMED
