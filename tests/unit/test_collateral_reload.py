"""The control plane's collateral paths (``kms.usecases.verifier``, ``attestation.store``): a store changed by
another process (``sovereign collateral import``) is used from the next verification; the Admin import
follows the configured collateral signers; a CRL whose issuer is unknown is refused."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestation import collateral_bundle
from attestation.collateral import CollateralItem, ItemKind
from attestation.errors import AttestationError, Code
from attestation.simulate import MintedSnp, SimulatedPki, shared_pki
from attestation.store import CollateralStore
from kms.errors import Code as KmsCode
from kms.errors import KmsError
from kms.usecases.verifier import EvidenceVerifier, load_signers

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KINDS = {"certs": ItemKind.CERTIFICATE, "crls": ItemKind.CRL}


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(NOW)


@pytest.fixture(scope="module")
def minted(pki: SimulatedPki) -> MintedSnp:
    return pki.mint_snp_report(product="Milan")


def _load(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def _ask_serial(minted: MintedSnp) -> int:
    certs = [_load(d) for d in minted.chain_der]
    return next(c.serial_number for c in certs if c.subject != c.issuer)


def _store(pki: SimulatedPki, root: Path) -> CollateralStore:
    items = [
        (CollateralItem(KINDS[kind], data), "simulator")
        for kind, values in pki.snp_collateral_items().items()
        for data in values
    ]
    store = CollateralStore(root)
    store.import_items(items, trust=pki.trust_store(), now=NOW)
    return store


def _revoking_crl(pki: SimulatedPki, minted: MintedSnp) -> bytes:
    return pki.amd_crl("Milan", revoked_serials=[_ask_serial(minted)], this_update=NOW)


def test_an_import_by_another_process_applies_at_the_next_verification(
    pki: SimulatedPki, minted: MintedSnp, tmp_path: Path
) -> None:
    _store(pki, tmp_path / "store")
    verifier = EvidenceVerifier(pki.trust_store(), tmp_path / "store")
    assert verifier.verify(minted.report, [], NOW).tee.value == "snp"
    # what 'sovereign collateral import' does: its own store object on the same folder, no reload call
    CollateralStore(tmp_path / "store").import_items(
        [(CollateralItem(ItemKind.CRL, _revoking_crl(pki, minted)), "kds-crl.der")],
        trust=pki.trust_store(),
        now=NOW,
    )
    with pytest.raises(AttestationError) as info:
        verifier.verify(minted.report, [], NOW)
    assert info.value.code == Code.SNP_CERT_REVOKED


def test_a_store_that_breaks_after_a_change_fails_verification_closed(
    pki: SimulatedPki, minted: MintedSnp, tmp_path: Path
) -> None:
    store = _store(pki, tmp_path / "store")
    verifier = EvidenceVerifier(pki.trust_store(), store.root)
    verifier.verify(minted.report, [], NOW)
    index = store.root / "index.json"
    index.write_text(index.read_text().replace('"version": 1', '"version": 9'))
    with pytest.raises(AttestationError) as info:
        verifier.verify(minted.report, [], NOW)
    assert info.value.code == Code.COLLATERAL_STORE_ERROR  # never the stale set


def test_an_unchanged_store_is_not_read_again(pki: SimulatedPki, minted: MintedSnp, tmp_path: Path) -> None:
    store = _store(pki, tmp_path / "store")
    verifier = EvidenceVerifier(pki.trust_store(), store.root)
    loaded = verifier.collateral()
    verifier.verify(minted.report, [], NOW)
    assert verifier.collateral() is loaded


def test_a_crl_whose_issuer_is_unknown_is_refused(
    pki: SimulatedPki, minted: MintedSnp, tmp_path: Path
) -> None:
    crl = CollateralItem(ItemKind.CRL, _revoking_crl(pki, minted))
    with pytest.raises(AttestationError) as info:
        CollateralStore(tmp_path / "empty").import_items([(crl, "crl.der")], trust=pki.trust_store(), now=NOW)
    assert info.value.code == Code.COLLATERAL_REJECTED and "issuer" in info.value.message
    assert info.value.hint and "issuer's certificate" in info.value.hint
    assert not (tmp_path / "empty" / "index.json").exists()  # all or nothing
    # with its issuer (the ARK) in the same import, it is checked and stored
    ark = next(d for d in minted.chain_der if _load(d).subject == _load(d).issuer)
    report = CollateralStore(tmp_path / "with-ark").import_items(
        [(CollateralItem(ItemKind.CERTIFICATE, ark), "ark.der"), (crl, "crl.der")],
        trust=pki.trust_store(),
        now=NOW,
    )
    assert len(report.added) == 2 and not any("CRL" in w for w in report.warnings)


def _bundle(pki: SimulatedPki, minted: MintedSnp, key: Ed25519PrivateKey) -> bytes:
    item = CollateralItem(ItemKind.CRL, _revoking_crl(pki, minted))
    return collateral_bundle.create([(item, "kds-crl.der")], key, NOW)


def test_with_a_signer_only_signed_bundles_are_imported(
    pki: SimulatedPki, minted: MintedSnp, tmp_path: Path
) -> None:
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    store = _store(pki, tmp_path / "store")
    verifier = EvidenceVerifier(pki.trust_store(), store.root, signers=[signer.public_key()])
    crl = _revoking_crl(pki, minted)
    for refused in (crl, _bundle(pki, minted, other)):
        with pytest.raises(AttestationError) as info:
            verifier.import_collateral(refused, NOW)
        assert info.value.code == Code.COLLATERAL_BUNDLE_INVALID
    assert crl not in [i.data for i in store.items()]
    verifier.verify(minted.report, [], NOW)  # nothing was imported
    report = verifier.import_collateral(_bundle(pki, minted, signer), NOW)
    assert [r["kind"] for r in report.added] == ["crl"]
    with pytest.raises(AttestationError) as revoked:
        verifier.verify(minted.report, [], NOW)
    assert revoked.value.code == Code.SNP_CERT_REVOKED


def test_without_a_signer_unsigned_items_are_imported_and_bundles_refused(
    pki: SimulatedPki, minted: MintedSnp, tmp_path: Path
) -> None:
    store = _store(pki, tmp_path / "store")
    verifier = EvidenceVerifier(pki.trust_store(), store.root)
    with pytest.raises(AttestationError) as info:
        verifier.import_collateral(_bundle(pki, minted, Ed25519PrivateKey.generate()), NOW)
    assert info.value.code == Code.COLLATERAL_BUNDLE_INVALID and "no collateral signer" in info.value.message
    report = verifier.import_collateral(_revoking_crl(pki, minted), NOW)
    assert [r["kind"] for r in report.added] == ["crl"]


def test_no_store_configured_is_a_coded_error(pki: SimulatedPki) -> None:
    with pytest.raises(KmsError) as info:
        EvidenceVerifier(pki.trust_store(), None).import_collateral(b"{}", NOW)
    assert info.value.code == KmsCode.SERVER_CONFIG_INVALID


def test_load_signers(tmp_path: Path) -> None:
    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(2)]
    paths = []
    for i, key in enumerate(keys):
        path = tmp_path / f"s{i}.pub.pem"
        path.write_bytes(
            key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        paths.append(str(path))
    assert load_signers("") == ()
    assert len(load_signers(f"{paths[0]}, {paths[1]}")) == 2
    (tmp_path / "bad.pem").write_text("not a key")
    for bad in (str(tmp_path / "missing.pem"), str(tmp_path / "bad.pem")):
        with pytest.raises(KmsError) as info:
            load_signers(bad)
        assert info.value.code == KmsCode.SERVER_CONFIG_INVALID
