"""Signed collateral bundles, rollback rejection and expiry status (simulated PKI, pure + temp store)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestation import collateral_bundle
from attestation.collateral import CollateralItem, ItemKind
from attestation.errors import Code, CollateralError
from attestation.simulate import SimulatedPki
from attestation.store import CollateralStore

NOW = datetime(2026, 1, 15, tzinfo=UTC)
KINDS = {"certs": ItemKind.CERTIFICATE, "crls": ItemKind.CRL, "tcb_infos": ItemKind.TDX_TCB_INFO,
         "qe_identities": ItemKind.TDX_QE_IDENTITY}  # fmt: skip


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return SimulatedPki.generate(NOW)


def tdx_items(pki: SimulatedPki) -> list[tuple[CollateralItem, str]]:
    return [(CollateralItem(KINDS[k], v), "sim") for k, vs in pki.tdx_collateral_items().items() for v in vs]


def test_bundle_round_trip_and_earliest_next_update(pki: SimulatedPki, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    items = tdx_items(pki)
    data = collateral_bundle.create(items, key, NOW)
    opened = collateral_bundle.open_bundle(data, [key.public_key()])
    assert {i.sha256 for i, _ in opened.items} == {i.sha256 for i, _ in items}
    nexts = [e["next_update"] for e in opened.manifest["items"] if e["kind"] != "certificate"]
    assert opened.earliest_next_update == min(nexts)
    report = CollateralStore(tmp_path).import_bundle(
        data, signers=[key.public_key()], trust=pki.trust_store(), now=NOW
    )
    assert len(report.added) == len(opened.items) and report.earliest_next_update == min(nexts)


def _mutate(data: bytes, how: str) -> bytes:
    doc = json.loads(data)
    if how == "object":
        digest = next(iter(doc["objects"]))
        raw = bytearray(base64.b64decode(doc["objects"][digest]))
        raw[-3] ^= 1
        doc["objects"][digest] = base64.b64encode(bytes(raw)).decode()
    elif how == "manifest":
        manifest = json.loads(base64.b64decode(doc["manifest"]))
        manifest["earliest_next_update"] = "2099-01-01T00:00:00+00:00"
        doc["manifest"] = base64.b64encode(json.dumps(manifest).encode()).decode()
    elif how == "extra-object":
        doc["objects"]["00" * 32] = base64.b64encode(b"x").decode()
    return json.dumps(doc).encode()


@pytest.mark.parametrize("how", ["object", "manifest", "extra-object", "wrong-key"])
def test_tampered_or_foreign_bundle_is_refused_and_nothing_stored(
    pki: SimulatedPki, tmp_path: Path, how: str
) -> None:
    key = Ed25519PrivateKey.generate()
    data = collateral_bundle.create(tdx_items(pki), key, NOW)
    signer = Ed25519PrivateKey.generate().public_key() if how == "wrong-key" else key.public_key()
    store = CollateralStore(tmp_path)
    with pytest.raises(CollateralError) as err:
        store.import_bundle(_mutate(data, how), signers=[signer], trust=pki.trust_store(), now=NOW)
    assert err.value.code is Code.COLLATERAL_BUNDLE_INVALID
    assert store.entries() == []


def test_item_with_bad_vendor_signature_is_refused(pki: SimulatedPki, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    bad = CollateralItem(ItemKind.TDX_TCB_INFO, pki.tdx_tcb_info(corrupt_signature=True))
    items = [(i, s) for i, s in tdx_items(pki) if i.kind is not ItemKind.TDX_TCB_INFO] + [(bad, "sim")]
    data = collateral_bundle.create(items, key, NOW)
    with pytest.raises(CollateralError) as err:
        CollateralStore(tmp_path).import_bundle(
            data, signers=[key.public_key()], trust=pki.trust_store(), now=NOW
        )
    assert err.value.code in (Code.COLLATERAL_REJECTED, Code.TDX_COLLATERAL_SIGNATURE_INVALID)


def test_older_tcb_info_and_crl_are_rollbacks(pki: SimulatedPki, tmp_path: Path) -> None:
    store = CollateralStore(tmp_path)
    store.import_items(tdx_items(pki), trust=pki.trust_store(), now=NOW)
    older_info = pki.tdx_tcb_info(issue_date=NOW - timedelta(days=40), next_update=NOW + timedelta(days=5))
    with pytest.raises(CollateralError) as err:
        store.import_items(
            [(CollateralItem(ItemKind.TDX_TCB_INFO, older_info), "old")], trust=pki.trust_store(), now=NOW
        )
    assert err.value.code is Code.COLLATERAL_ROLLBACK
    older_crl = pki.pck_crl(this_update=NOW - timedelta(days=40), next_update=NOW + timedelta(days=5))
    with pytest.raises(CollateralError) as err:
        store.import_items(
            [(CollateralItem(ItemKind.CRL, older_crl), "old")], trust=pki.trust_store(), now=NOW
        )
    assert err.value.code is Code.COLLATERAL_ROLLBACK
    newer = pki.tdx_tcb_info(issue_date=NOW, next_update=NOW + timedelta(days=60))
    report = store.import_items(
        [(CollateralItem(ItemKind.TDX_TCB_INFO, newer), "new")], trust=pki.trust_store(), now=NOW
    )
    assert len(report.added) == 1


def test_status_lists_expiry_soonest_first(pki: SimulatedPki, tmp_path: Path) -> None:
    store = CollateralStore(tmp_path)
    store.import_items(tdx_items(pki), trust=pki.trust_store(), now=NOW)
    rows, earliest = store.status(NOW)
    assert earliest is not None and rows[0]["expires"] == earliest.isoformat()
    assert [r["expires"] for r in rows] == sorted(r["expires"] for r in rows)
    later_rows, _ = store.status(earliest + timedelta(seconds=1))
    assert later_rows[0]["state"] == "EXPIRED" and rows[0]["state"] != "EXPIRED"
