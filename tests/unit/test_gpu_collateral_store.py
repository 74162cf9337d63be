"""GPU collateral in the offline store: RIMs and OCSP responses as items, signed bundles, import checks and
rollback protection, status windows, and the lookup that feeds ``attestation.gpu.verify_gpu``.

Simulated NVIDIA PKI (attestation.simulate.gpu) for the full path; the real RIMs and H100 reports from
../shared/vectors/gpu (read in place) under the production trust store for classification, signature
checks, rollback between two real NVIDIA-signed RIMs, and RIM ids."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509 import ocsp

from attestation import collateral_bundle, gpu
from attestation.collateral import CollateralItem, ItemKind, classify
from attestation.errors import AttestationError, Code, CollateralError
from attestation.gpu_collateral import rim_ids
from attestation.simulate.gpu import GpuFault, GpuSimulator, MintedGpu
from attestation.store import CollateralStore
from attestation.trust import PRODUCTION

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NONCE = hashlib.sha256(b"gpu-collateral-store").digest()
REAL_NOW = datetime(2026, 12, 3, tzinfo=UTC)
INSIDE_RIM_WINDOW = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def sim() -> GpuSimulator:
    return GpuSimulator(NOW)


@pytest.fixture(scope="module")
def minted(sim: GpuSimulator) -> MintedGpu:
    return sim.mint(nonce=NONCE, seed="store-gpu")


def _ca_certs(m: MintedGpu) -> list[tuple[CollateralItem, str]]:
    return [(CollateralItem(ItemKind.CERTIFICATE, d), "evidence") for d in m.evidence.chain[1:]]


def _items(m: MintedGpu, *, rims: bool = True, ocsp_answers: bool = True) -> list[tuple[CollateralItem, str]]:
    out = _ca_certs(m)
    if rims:
        out += [(CollateralItem(ItemKind.GPU_RIM, r), "rim-service") for r in (m.driver_rim, m.vbios_rim)]
    if ocsp_answers:  # the device chain's 4 answers, then the RIM chains' (checkable only with the RIMs)
        answers = m.ocsp_responses if rims else m.ocsp_responses[:4]
        out += [(CollateralItem(ItemKind.OCSP_RESPONSE, r), "ocsp") for r in answers]
    return out


def _verify(store: CollateralStore, m: MintedGpu, sim: GpuSimulator, now: datetime = NOW) -> gpu.GpuClaims:
    inputs = store.load().gpu.inputs_for(m.evidence)
    return gpu.verify_gpu(
        m.evidence, nonce=m.nonce, trust=sim.trust_store(), now=now, collateral=inputs.collateral,
        driver_rim=inputs.driver_rim, vbios_rim=inputs.vbios_rim,
    )  # fmt: skip


def _code(fn: object) -> Code:
    with pytest.raises(AttestationError) as err:
        fn()  # type: ignore[operator]
    return err.value.code


def _forger(name: x509.Name) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-made certificate with the provisioner CA's name and another key."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=9))
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    return cert, key


def _brom_ocsp(sim: GpuSimulator, m: MintedGpu, this_update: datetime, *, forged: bool = False) -> bytes:
    """An OCSP answer for the minted GPU's BROM certificate, signed by its issuer (the provisioner CA), or
    (``forged``) by another key under the issuer's name."""
    brom, prov = (x509.load_der_x509_certificate(d) for d in m.evidence.chain[1:3])
    _identity, prov_ca = sim._device_cas("GH100", False)  # the simulator's CA key, for a second answer
    responder, key = _forger(prov.subject) if forged else (prov, prov_ca.key)
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=brom, issuer=prov, algorithm=hashes.SHA384(), cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=this_update, next_update=this_update + timedelta(days=7), revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    return response.public_bytes(serialization.Encoding.DER)


def _import(store: CollateralStore, sim: GpuSimulator, data: bytes, now: datetime = NOW) -> None:
    store.import_items([(i, "test") for i in classify(data, "test")], trust=sim.trust_store(), now=now)


def test_signed_bundle_carries_gpu_collateral_that_the_lookup_hands_to_the_verifier(
    sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    data = collateral_bundle.create(_items(minted), key, NOW)
    opened = collateral_bundle.open_bundle(data, [key.public_key()])
    kinds = {e["kind"] for e in opened.manifest["items"]}
    assert {"gpu-rim", "ocsp-response", "certificate"} <= kinds
    store = CollateralStore(tmp_path)
    report = store.import_bundle(data, signers=[key.public_key()], trust=sim.trust_store(), now=NOW)
    assert not report.warnings and report.earliest_next_update
    claims = _verify(store, minted, sim)
    assert claims.measurement_result == "success" and claims.details["revocation"]["status"] == "good"
    inputs = store.load().gpu.inputs_for(minted.evidence)
    assert inputs.ids.driver_id == "NV_GPU_DRIVER_GH100_550.90.07"
    assert inputs.ids.vbios_id == "NV_GPU_VBIOS_1010_0200_882_96009F0001"
    rows, earliest = store.status(NOW)
    windows = {r["kind"]: r for r in rows if r["kind"] in ("gpu-rim", "ocsp-response")}
    assert set(windows) == {"gpu-rim", "ocsp-response"}
    for row in windows.values():
        assert row["valid_from"] < NOW.isoformat() < row["expires"] and row["state"] == "ok"
    assert earliest == NOW + timedelta(days=7)  # the OCSP answers' nextUpdate


def test_missing_collateral_gives_the_verifiers_missing_code(
    sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    no_ocsp = CollateralStore(tmp_path / "no-ocsp")
    no_ocsp.import_items(_items(minted, ocsp_answers=False), trust=sim.trust_store(), now=NOW)
    assert _code(lambda: _verify(no_ocsp, minted, sim)) is Code.GPU_COLLATERAL_MISSING
    no_rims = CollateralStore(tmp_path / "no-rims")
    no_rims.import_items(_items(minted, rims=False), trust=sim.trust_store(), now=NOW)
    assert no_rims.load().gpu.inputs_for(minted.evidence).driver_rim is None
    assert _code(lambda: _verify(no_rims, minted, sim)) is Code.GPU_COLLATERAL_MISSING
    other = sim.mint(nonce=NONCE, seed="store-gpu", driver_version="555.42.02")  # no RIM for this driver
    assert _code(lambda: _verify(no_rims, other, sim)) is Code.GPU_COLLATERAL_MISSING


def test_expired_ocsp_answers_give_the_expired_code(
    sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    store = CollateralStore(tmp_path)
    store.import_items(_items(minted), trust=sim.trust_store(), now=NOW)
    later = NOW + timedelta(days=8)
    assert _code(lambda: _verify(store, minted, sim, now=later)) is Code.GPU_COLLATERAL_EXPIRED
    rows, _ = store.status(later)
    assert {r["state"] for r in rows if r["kind"] == "ocsp-response"} == {"EXPIRED"}


def test_an_older_ocsp_answer_cannot_replace_a_newer_one(
    sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    store = CollateralStore(tmp_path)
    store.import_items(_items(minted), trust=sim.trust_store(), now=NOW)  # answers from NOW - 1 day
    with pytest.raises(CollateralError) as err:
        _import(store, sim, _brom_ocsp(sim, minted, NOW - timedelta(days=3)))
    assert err.value.code is Code.COLLATERAL_ROLLBACK
    _import(store, sim, _brom_ocsp(sim, minted, NOW - timedelta(hours=2)))  # newer: accepted
    assert _verify(store, minted, sim).details["revocation"]["status"] == "good"


def test_ocsp_answers_must_be_signed_by_a_pinned_issuer(
    sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    store = CollateralStore(tmp_path)
    store.import_items(_items(minted, ocsp_answers=False), trust=sim.trust_store(), now=NOW)
    forged = _brom_ocsp(sim, minted, NOW, forged=True)
    with pytest.raises(CollateralError) as err:
        _import(store, sim, forged)
    assert err.value.code is Code.COLLATERAL_REJECTED
    bare = CollateralStore(tmp_path / "bare")  # the issuer's certificate is not known: cannot be checked
    with pytest.raises(CollateralError) as err:
        _import(bare, sim, _brom_ocsp(sim, minted, NOW))
    assert err.value.code is Code.COLLATERAL_REJECTED
    assert not (tmp_path / "bare" / "index.json").exists()


def test_a_rim_under_an_unpinned_root_or_edited_is_refused(sim: GpuSimulator, tmp_path: Path) -> None:
    store = CollateralStore(tmp_path)
    for fault in (GpuFault.RIM_UNTRUSTED, GpuFault.RIM_INVALID):
        bad = sim.mint(nonce=NONCE, seed="bad-rim", faults={fault})
        with pytest.raises(CollateralError) as err:
            _import(store, sim, bad.vbios_rim)
        assert err.value.code is Code.COLLATERAL_REJECTED and "GPU_RIM_" in err.value.message


# -- real NVIDIA RIMs and reports ---------------------------------------------------------------------
def _real(vectors: Path, name: str) -> Path:
    return vectors / "gpu" / "rims" / f"{name}.swidtag"


def test_real_rims_classify_import_with_expiry_warnings_and_show_windows(
    vectors: Path, tmp_path: Path
) -> None:
    paths = [_real(vectors, "driver-nvtrust-sample"), _real(vectors, "vbios-96005E0001-nvtrust-sample")]
    assert [classify(p.read_bytes())[0].kind for p in paths] == [ItemKind.GPU_RIM] * 2
    store = CollateralStore(tmp_path)
    report = store.import_files(paths, trust=PRODUCTION, now=REAL_NOW)
    assert len(report.added) == 2 and len(report.warnings) == 2  # the sample signers expired in 2025
    rows, _ = store.status(REAL_NOW)
    by_desc = {r["description"]: r for r in rows}
    vbios = by_desc["RIM GH100 96.00.5E.00.01 (tagVersion 0)"]
    assert vbios["state"] == "EXPIRED" and vbios["expires"].startswith("2025-06-22")
    assert vbios["valid_from"].startswith("2023-06-23")
    assert "RIM GH100 545.00 (tagVersion 0)" in by_desc


def test_real_rims_edited_after_signing_are_refused(vectors: Path, tmp_path: Path) -> None:
    store = CollateralStore(tmp_path)
    for name in ("driver-gh100-535.86.09-mismatch", "driver-gh100-570.124.03-expired"):
        with pytest.raises(CollateralError) as err:
            store.import_files([_real(vectors, name)], trust=PRODUCTION, now=REAL_NOW)
        assert err.value.code is Code.COLLATERAL_REJECTED and "GPU_RIM_INVALID" in err.value.message
    assert store.entries() == []


def test_an_older_real_rim_for_the_same_vbios_is_a_rollback(vectors: Path, tmp_path: Path) -> None:
    """Two NVIDIA-signed VBIOS RIMs for 96.00.5E.00.01: the 'mismatch' one was signed in 2023-12, the sample
    in 2023-06. Once the newer is held, the older cannot come back; the lookup hands out the newer."""
    store = CollateralStore(tmp_path)
    store.import_files([_real(vectors, "vbios-96005E0001-mismatch")], trust=PRODUCTION, now=INSIDE_RIM_WINDOW)
    with pytest.raises(CollateralError) as err:
        store.import_files(
            [_real(vectors, "vbios-96005E0001-nvtrust-sample")], trust=PRODUCTION, now=INSIDE_RIM_WINDOW
        )
    assert err.value.code is Code.COLLATERAL_ROLLBACK
    both = CollateralStore(tmp_path / "both")  # in the other order both are kept; the newer one wins
    for name in ("vbios-96005E0001-nvtrust-sample", "vbios-96005E0001-mismatch"):
        both.import_files([_real(vectors, name)], trust=PRODUCTION, now=INSIDE_RIM_WINDOW)
    newest = both.load().gpu.rim("96.00.5E.00.01", "GH100")
    assert newest == _real(vectors, "vbios-96005E0001-mismatch").read_bytes()


def test_real_report_rim_ids_and_missing_rims(vectors: Path, tmp_path: Path) -> None:
    report = gpu.decode_hex_report((vectors / "gpu/hopper-nvtrust-550.report.txt").read_text())
    evidence = gpu.from_pem(report, (vectors / "gpu/hopper-nvtrust-550.chain.pem").read_bytes())
    ids = rim_ids(evidence)
    assert (ids.chip, ids.driver_id) == ("GH100", "NV_GPU_DRIVER_GH100_550.90.07")
    assert ids.vbios_id == "NV_GPU_VBIOS_1010_0200_882_96009F0001"
    store = CollateralStore(tmp_path)  # holds the 545 / 96.00.5E RIMs only: nothing for this report
    store.import_files(
        [_real(vectors, "driver-nvtrust-sample"), _real(vectors, "vbios-96005E0001-nvtrust-sample")],
        trust=PRODUCTION, now=INSIDE_RIM_WINDOW,
    )  # fmt: skip
    inputs = store.load().gpu.inputs_for(evidence)
    assert inputs.driver_rim is None and inputs.vbios_rim is None
    nonce = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
    options = gpu.GpuVerifyOptions(require_revocation=False)
    code = _code(
        lambda: gpu.verify_gpu(
            evidence, nonce=nonce, trust=PRODUCTION, now=INSIDE_RIM_WINDOW, collateral=inputs.collateral,
            driver_rim=inputs.driver_rim, vbios_rim=inputs.vbios_rim, options=options,
        )
    )  # fmt: skip
    assert code is Code.GPU_COLLATERAL_MISSING


def test_a_remembered_good_verdict_holds_only_inside_its_window(
    sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    """One collateral set and verifier cache across calls (as the server keeps them): the revocation verdict
    remembered at NOW must not answer for a time after nextUpdate or before thisUpdate."""
    store = CollateralStore(tmp_path)
    store.import_items(_items(minted), trust=sim.trust_store(), now=NOW)
    inputs = store.load().gpu.inputs_for(minted.evidence)
    cache = gpu.GpuVerifierCache()

    def at(when: datetime) -> gpu.GpuClaims:
        return gpu.verify_gpu(
            minted.evidence, nonce=minted.nonce, trust=sim.trust_store(), now=when,
            collateral=inputs.collateral, driver_rim=inputs.driver_rim, vbios_rim=inputs.vbios_rim, cache=cache,
        )  # fmt: skip

    assert at(NOW).details["revocation"]["status"] == "good"
    assert at(NOW + timedelta(hours=1)).details["revocation"]["status"] == "good"
    assert _code(lambda: at(NOW + timedelta(days=8))) is Code.GPU_COLLATERAL_EXPIRED
    assert _code(lambda: at(NOW - timedelta(days=2))) is Code.GPU_COLLATERAL_EXPIRED
    assert at(NOW).details["revocation"]["status"] == "good"


def test_rims_by_nvidia_id_and_nvidia_crls_route_to_gpu_revocation(
    sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    store = CollateralStore(tmp_path)
    store.import_items(_items(minted), trust=sim.trust_store(), now=NOW)
    _import(store, sim, sim.provisioner_crl())  # signed by the provisioner CA imported above
    loaded = store.load().gpu
    ids = loaded.inputs_for(minted.evidence).ids
    assert loaded.rim_by_id(ids.driver_id) == minted.driver_rim
    assert loaded.rim_by_id(ids.vbios_id) == minted.vbios_rim
    assert loaded.rim_by_id("NV_GPU_DRIVER_GH100_1.0") is None and loaded.rim_by_id("other") is None
    assert len(loaded.revocation.crls) == 1 and not store.load().tdx.crls
    with pytest.raises(CollateralError) as err:  # an older CRL from the same issuer: rollback
        _import(store, sim, sim.provisioner_crl(stale=True))
    assert err.value.code is Code.COLLATERAL_ROLLBACK
