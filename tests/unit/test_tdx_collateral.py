"""Intel collateral: exact-bytes signatures, windows, formats, bundles and merging."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from vectorlib import manifest_entries

from attestation.errors import AttestationError, Code
from attestation.tdx import TdxCollateral, merge, parse_collateral_bundle
from attestation.tdx.pcs import QeIdentity, TcbInfo
from attestation.trust import PRODUCTION

TCB_INFOS = [e for e in manifest_entries("tcb-info") if e["file"].endswith(".tcb_info.json")]
V5_AT = datetime(2026, 2, 3, 1, tzinfo=UTC)


def _read(vectors: Path, name: str) -> bytes:
    return (vectors / "tdx" / name).read_bytes()


def _certs(vectors: Path) -> list[bytes]:
    return [
        _read(vectors, "gotdxguest.tcb_signing_chain.pem"),
        _read(vectors, "gotdxguest.pck_crl_issuer_chain.pem"),
    ]


def _code(fn: Any, *args: Any, **kwargs: Any) -> Code:
    with pytest.raises(AttestationError) as exc:
        fn(*args, **kwargs)
    return exc.value.code


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize("entry", TCB_INFOS, ids=lambda e: e["file"])
def test_tcb_info_files_parse_and_verify(entry: dict[str, Any], vectors: Path) -> None:
    col = TdxCollateral.from_items(tcb_infos=[(vectors / entry["file"]).read_bytes()], certs=_certs(vectors))
    exp = entry["expected"]
    (items,) = col.tcb_infos.values()
    (verified,) = items
    info: TcbInfo = verified.doc
    assert exp["id"] == "TDX" and exp["version"] == 3 and exp["signature_valid"]
    assert info.fmspc.hex() == exp["fmspc"].lower()
    assert verified.issue_date == datetime.fromisoformat(exp["issueDate"])
    assert verified.next_update == datetime.fromisoformat(exp["nextUpdate"])
    assert verified.number == exp["tcbEvaluationDataNumber"]
    assert len(info.levels) == exp["levels"]
    assert {_cn(s.cert) for s in verified.signers} == {exp["signed_by_cn"]}


def test_qe_identity_file_parses_and_verifies(vectors: Path, manifest: Any) -> None:
    (entry,) = [e for e in manifest if e["kind"] == "qe-identity"]
    col = TdxCollateral.from_items(
        qe_identities=[(vectors / entry["file"]).read_bytes()], certs=_certs(vectors)
    )
    (verified,) = col.qe_identities
    qe: QeIdentity = verified.doc
    exp = entry["expected"]
    assert qe.mrsigner.hex().upper() == exp["mrsigner"] and qe.isvprodid == exp["isvprodid"]
    assert verified.number == exp["tcbEvaluationDataNumber"]
    assert verified.next_update == datetime.fromisoformat(exp["nextUpdate"])


def test_bundle_matches_its_manifest_entry(vectors: Path, manifest: Any) -> None:
    (entry,) = [e for e in manifest if e["file"] == "tdx/v4-dcapqvl.collateral.json"]
    exp = entry["expected"]
    col = parse_collateral_bundle((vectors / entry["file"]).read_bytes())
    (verified,) = col.tcb_infos[bytes.fromhex(exp["tcb_info"]["fmspc"])]
    assert verified.number == exp["tcb_info"]["tcbEvaluationDataNumber"]
    (qe,) = col.qe_identities
    assert qe.next_update == datetime.fromisoformat(exp["qe_identity"]["nextUpdate"])
    signer = verified.signer_at("TCB info", PRODUCTION, datetime(2025, 7, 1, tzinfo=UTC))
    assert [str(signer.cert.not_valid_before_utc), str(signer.cert.not_valid_after_utc)] == (
        exp["tcb_signing_cert_validity"]
    )
    assert [len(c.revoked) for c in col.crls] == [
        exp["pck_crl"]["revoked_count"],
        exp["root_ca_crl"]["revoked_count"],
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [(b'"tcbEvaluationDataNumber":15', b'"tcbEvaluationDataNumber":16'), (b'"pcesvn":11', b'"pcesvn":10')],
)
def test_tampered_tcb_info_is_refused(vectors: Path, old: bytes, new: bytes) -> None:
    raw = _read(vectors, "v4-gotdxguest-spr.tcb_info.json")
    assert old in raw
    tampered = raw.replace(old, new, 1)
    assert _code(TdxCollateral.from_items, tcb_infos=[tampered], certs=_certs(vectors)) is (
        Code.TDX_COLLATERAL_SIGNATURE_INVALID
    )


def test_tampered_qe_identity_and_signature_are_refused(vectors: Path) -> None:
    raw = _read(vectors, "gotdxguest.qe_identity.json")
    tampered = raw.replace(b'"isvprodid":2', b'"isvprodid":3')
    assert _code(TdxCollateral.from_items, qe_identities=[tampered], certs=_certs(vectors)) is (
        Code.TDX_COLLATERAL_SIGNATURE_INVALID
    )
    sig = json.loads(raw)["signature"]
    flipped = raw.replace(sig.encode(), (("1" if sig[0] != "1" else "2") + sig[1:]).encode())
    assert _code(TdxCollateral.from_items, qe_identities=[flipped], certs=_certs(vectors)) is (
        Code.TDX_COLLATERAL_SIGNATURE_INVALID
    )


def test_signature_covers_exact_inner_bytes_not_outer_layout(vectors: Path) -> None:
    raw = _read(vectors, "v4-gotdxguest-spr.tcb_info.json")
    inner = raw[len(b'{"tcbInfo":') : raw.index(b',"signature"')]
    sig = json.loads(raw)["signature"]
    relaid = b'\n{ "signature" : "' + sig.encode() + b'" ,\n  "tcbInfo" :\t' + inner + b"\n}\n"
    col = TdxCollateral.from_items(tcb_infos=[relaid], certs=_certs(vectors))
    assert len(col.tcb_infos) == 1
    # Re-serialising the inner object (even semantically equal) changes the signed bytes.
    reserialised = json.dumps({"tcbInfo": json.loads(inner), "signature": sig}, indent=1).encode()
    assert _code(TdxCollateral.from_items, tcb_infos=[reserialised], certs=_certs(vectors)) is (
        Code.TDX_COLLATERAL_SIGNATURE_INVALID
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"not json",
        b'{"tcbInfo":{}}',
        b'{"tcbInfo":{},"signature":"00","extra":1}',
        b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'","tcbInfo":{}}',
        b'{"tcbInfo":{"id":"TDX","id":"SGX"},"signature":"' + b"00" * 64 + b'"}',
        b'{"tcbInfo":{"id":"SGX","version":3},"signature":"' + b"00" * 64 + b'"}',
        b'{"tcbInfo":[],"signature":"' + b"00" * 64 + b'"}',
        b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'"} trailing',
        b'{"tcbInfo":{},"signature":"zz"}',
        b"\xff\xfe",
    ],
)
def test_malformed_pcs_bodies(vectors: Path, body: bytes) -> None:
    assert (
        _code(TdxCollateral.from_items, tcb_infos=[body], certs=_certs(vectors))
        is Code.TDX_COLLATERAL_INVALID
    )


def test_crl_formats_are_equivalent(vectors: Path) -> None:
    der = _read(vectors, "gotdxguest.pck_crl_platform.der")
    pem = b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(der) + b"-----END X509 CRL-----\n"
    for form in (der, pem, der.hex().encode(), der.hex().upper().encode() + b"\n"):
        (crl,) = TdxCollateral.from_items(crls=[form]).crls
        assert len(crl.revoked) == 44
    assert _code(TdxCollateral.from_items, crls=[b"garbage"]) is Code.TDX_COLLATERAL_INVALID


def test_reissued_tcb_signing_cert_is_used_when_the_old_one_expired(vectors: Path) -> None:
    v5 = _read(vectors, "v5-gotdxguest-sample.tcb_info.json")
    fmspc = bytes.fromhex("90c06f000000")
    old_only = TdxCollateral.from_items(tcb_infos=[v5], certs=_certs(vectors))
    assert _code(old_only.tcb_info, fmspc, PRODUCTION, V5_AT) is Code.TDX_CERT_EXPIRED
    both = old_only.merged(parse_collateral_bundle(_read(vectors, "v4-dcapqvl.collateral.json")))
    verified, signer = both.tcb_info(fmspc, PRODUCTION, V5_AT)
    assert signer.not_after.year == 2032  # the re-issued certificate
    assert len(verified.signers) == 2  # same key, two certificates
    assert merge(old_only, both).tcb_infos.keys() == both.tcb_infos.keys()


def test_outdated_document_is_expired_and_newest_current_wins(vectors: Path) -> None:
    col = TdxCollateral.from_items(
        tcb_infos=[_read(vectors, "v4-gotdxguest-spr.tcb_info.json")], certs=_certs(vectors)
    )
    fmspc = bytes.fromhex("50806f000000")
    assert (
        _code(col.tcb_info, fmspc, PRODUCTION, datetime(2023, 8, 1, tzinfo=UTC))
        is Code.TDX_COLLATERAL_EXPIRED
    )
    assert (
        _code(col.tcb_info, fmspc, PRODUCTION, datetime(2023, 6, 1, tzinfo=UTC))
        is Code.TDX_COLLATERAL_EXPIRED
    )
    assert col.tcb_info(fmspc, PRODUCTION, datetime(2023, 7, 1, tzinfo=UTC))[0].number == 15


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "not an object",
        lambda d: {k: v for k, v in d.items() if k != "pck_crl"},
        lambda d: {**d, "tcb_info_signature": "00"},
        lambda d: {**d, "tcb_info": d["tcb_info"].replace('"version":3', '"version":4')},
        lambda d: {**d, "tcb_info_issuer_chain": 5},
    ],
)
def test_malformed_bundles(vectors: Path, mutate: Any) -> None:
    doc = json.loads(_read(vectors, "v4-dcapqvl.collateral.json"))
    code = _code(parse_collateral_bundle, json.dumps(mutate(doc)).encode())
    assert code in (Code.TDX_COLLATERAL_INVALID, Code.TDX_COLLATERAL_SIGNATURE_INVALID)
    assert _code(parse_collateral_bundle, b"\x00garbage") is Code.TDX_COLLATERAL_INVALID
