"""TDX verification with the real vectors: signatures, PCK chain, Intel collateral and TCB status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from vectorlib import manifest_entries

from attestation.claims import TcbStatus, Tee
from attestation.errors import AttestationError, Code
from attestation.simulate import shared_pki
from attestation.tdx import (
    TdxCollateral,
    parse_collateral_bundle,
    parse_quote,
    verify_quote,
    verify_quote_signatures,
)
from attestation.tdx.collateral import SignedItem
from attestation.tdx.pck import load_pck_chain
from attestation.trust import PRODUCTION, TrustStore

QUOTES = manifest_entries("tdx-quote")
DCAPQVL_WINDOW = (datetime(2025, 6, 19, 10, 32, 27, tzinfo=UTC), datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC))
DCAPQVL_AT = datetime(2025, 7, 1, tzinfo=UTC)
GOTDXGUEST_AT = datetime(2023, 7, 1, 1, tzinfo=UTC)  # inside 2023-06-18 .. 2023-07-08, as go-tdx-guest uses

# Offsets in a v4 quote (signature data starts at 636).
MRTD = 48 + 136
QUOTE_SIG = 636
ATT_KEY = 636 + 64
QE_REPORT = 636 + 134
QE_AUTH = QE_REPORT + 384 + 64 + 2


def _read(vectors: Path, name: str) -> bytes:
    return (vectors / "tdx" / name).read_bytes()


def _inside_chain(data: bytes) -> datetime:
    chain = load_pck_chain(parse_quote(data).pck_chain_pem)
    return chain.not_before + timedelta(days=1)


@pytest.fixture(scope="module")
def dcapqvl(vectors: Path) -> bytes:
    return _read(vectors, "v4-dcapqvl.quote.bin")


@pytest.fixture(scope="module")
def bundle(vectors: Path) -> TdxCollateral:
    return parse_collateral_bundle(_read(vectors, "v4-dcapqvl.collateral.json"))


def gotdxguest_collateral(vectors: Path, **replace: bytes) -> TdxCollateral:
    files = {
        "tcb_spr": "v4-gotdxguest-spr.tcb_info.json",
        "tcb_v5": "v5-gotdxguest-sample.tcb_info.json",
        "qe": "gotdxguest.qe_identity.json",
        "pck_crl": "gotdxguest.pck_crl_platform.der",
        "root_crl": "gotdxguest.root_ca_crl.der",
        "signing": "gotdxguest.tcb_signing_chain.pem",
        "crl_chain": "gotdxguest.pck_crl_issuer_chain.pem",
    }
    raw = {k: replace.get(k, _read(vectors, f)) for k, f in files.items()}
    return TdxCollateral.from_items(
        tcb_infos=[raw["tcb_spr"], raw["tcb_v5"]],
        qe_identities=[raw["qe"]],
        crls=[raw["pck_crl"], raw["root_crl"]],
        certs=[raw["signing"], raw["crl_chain"]],
    )


@pytest.fixture(scope="module")
def gotdxguest(vectors: Path) -> TdxCollateral:
    return gotdxguest_collateral(vectors)


def _code(fn: Any, *args: Any, **kwargs: Any) -> Code:
    with pytest.raises(AttestationError) as exc:
        fn(*args, **kwargs)
    assert exc.value.hint, "every error carries a hint"
    return exc.value.code


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@pytest.mark.parametrize("entry", QUOTES, ids=lambda e: e["file"])
def test_every_quote_passes_signature_verification(entry: dict[str, Any], vectors: Path) -> None:
    data = (vectors / entry["file"]).read_bytes()
    exp = entry["expected"]
    claims = verify_quote_signatures(data, trust=PRODUCTION, now=_inside_chain(data))
    assert exp["quote_signature_valid"] and exp["qe_report_signature_valid"]
    assert exp["qe_report_data_binding_valid"] and exp["pck_chain_valid_to_intel_root"]
    assert claims.tee is Tee.TDX and claims.product == "TDX"
    assert claims.tcb_status is TcbStatus.UNKNOWN
    assert claims.version == exp["version"]
    assert claims.measurement.hex() == exp["mrtd"]
    assert [r.hex() for r in claims.rtmrs] == [exp[f"rtmr{i}"] for i in range(4)]
    assert claims.report_data.hex() == exp["report_data"]
    assert claims.host_data.hex() == exp["mrconfigid"]
    assert claims.debug is exp["td_attributes_decoded"]["debug"]
    assert hex(claims.policy) == exp["td_attributes_decoded"]["value_u64"]
    assert claims.platform_id.hex() == exp["pck_leaf"]["sgx_ext"]["fmspc"]
    assert claims.tcb["sgx_components"] == exp["pck_leaf"]["sgx_ext"]["comp_svns"]
    assert claims.tcb["pcesvn"] == exp["pck_leaf"]["sgx_ext"]["pcesvn"]
    assert claims.details["td_attributes"] == {
        k: v for k, v in exp["td_attributes_decoded"].items() if k != "value_u64"
    }
    assert claims.details.get("mrservicetd") == exp.get("mrservicetd")
    assert claims.simulated is False
    claims.to_dict()  # JSON-compatible


def test_dcapqvl_full_verification_is_up_to_date(
    dcapqvl: bytes, bundle: TdxCollateral, manifest: Any
) -> None:
    (entry,) = [e for e in manifest if e["file"] == "tdx/v4-dcapqvl.quote.bin"]
    source = entry["expected"]["tcb_status_asserted_by_source"]
    for now in (DCAPQVL_WINDOW[0], DCAPQVL_AT, DCAPQVL_WINDOW[1]):
        claims = verify_quote(dcapqvl, trust=PRODUCTION, collateral=bundle, now=now)
        assert claims.tcb_status.value == source["status"]
        assert claims.details["advisory_ids"] == source["advisory_ids"]
    assert claims.details["qe_tcb_status"] == "UpToDate"
    assert claims.details["fmspc"] == "b0c06f000000" and claims.details["pce_id"] == "0000"
    assert claims.tcb["tcb_evaluation_data_number"] == 17
    assert claims.details["collateral_expires"] == "2025-07-19T10:00:35+00:00"


def test_gotdxguest_spr_is_below_every_tcb_level(vectors: Path, gotdxguest: TdxCollateral) -> None:
    # Intel's rule: a TCB level matches only if all 16 SGX component SVNs and PCESVN of the PCK
    # certificate are >= the level's. This PCK certificate (issued 2022-09) states SGX SVNs
    # 3,3,2,2,2,1,0,2 but both levels of the 2023-06 TCB info need 5,5,2,2,3,1,0,3, so Intel's QVL
    # returns STATUS_TCB_NOT_SUPPORTED: the decided outcome is TDX_TCB_NOT_MATCHED.
    data = _read(vectors, "v4-gotdxguest-spr.quote.bin")
    assert _code(verify_quote, data, trust=PRODUCTION, collateral=gotdxguest, now=GOTDXGUEST_AT) is (
        Code.TDX_TCB_NOT_MATCHED
    )


def test_debug_td_verifies_up_to_date_with_debug_claim(vectors: Path, gotdxguest: TdxCollateral) -> None:
    # Same FMSPC as the SPR quote; its PCK states SGX SVNs 5,5,13,2,3,1,0,3 and PCESVN 11 and its
    # TEE_TCB_SVN is 03 00 05: the first level (UpToDate) matches, the module major version is 0 (TDX 1.0
    # rules, all TDX components compared) and QE ISVSVN 4 is UpToDate.
    data = _read(vectors, "v4-trustee-debugtd.quote.bin")
    claims = verify_quote(data, trust=PRODUCTION, collateral=gotdxguest, now=GOTDXGUEST_AT)
    assert claims.debug is True and claims.details["td_attributes"]["debug"] is True
    assert claims.tcb_status is TcbStatus.UP_TO_DATE
    assert claims.tcb["tcb_date"] == "2023-02-15T00:00:00Z"


def test_v5_sample_has_no_time_with_all_collateral_current(vectors: Path, gotdxguest: TdxCollateral) -> None:
    # Its PCK leaf is valid only from 2026-01-27 and its TCB info from 2026-02-01, but every QE identity
    # and PCK CRL shipped expired in 2023/2025: the full check cannot pass at any time. The TCB status
    # itself is decided in test_tdx_tcb.py from the signed TCB info.
    data = _read(vectors, "v5-gotdxguest-sample.quote.bin")
    assert _code(verify_quote, data, trust=PRODUCTION, collateral=gotdxguest, now=GOTDXGUEST_AT) is (
        Code.TDX_CERT_EXPIRED
    )
    merged = gotdxguest.merged(parse_collateral_bundle(_read(vectors, "v4-dcapqvl.collateral.json")))
    at = datetime(2026, 2, 3, 1, tzinfo=UTC)
    assert (
        _code(verify_quote, data, trust=PRODUCTION, collateral=merged, now=at) is Code.TDX_COLLATERAL_EXPIRED
    )


def test_wrong_time(dcapqvl: bytes, bundle: TdxCollateral) -> None:
    before_pck = datetime(2020, 1, 1, tzinfo=UTC)
    assert (
        _code(verify_quote, dcapqvl, trust=PRODUCTION, collateral=bundle, now=before_pck)
        is Code.TDX_CERT_EXPIRED
    )
    assert _code(verify_quote_signatures, dcapqvl, trust=PRODUCTION, now=before_pck) is Code.TDX_CERT_EXPIRED
    after_pck = datetime(2040, 1, 1, tzinfo=UTC)
    assert _code(verify_quote_signatures, dcapqvl, trust=PRODUCTION, now=after_pck) is Code.TDX_CERT_EXPIRED
    for now in (DCAPQVL_WINDOW[0] - timedelta(seconds=1), DCAPQVL_WINDOW[1] + timedelta(seconds=1)):
        assert _code(verify_quote, dcapqvl, trust=PRODUCTION, collateral=bundle, now=now) is (
            Code.TDX_COLLATERAL_EXPIRED
        )


def test_naive_now_is_utc(dcapqvl: bytes, bundle: TdxCollateral) -> None:
    claims = verify_quote(dcapqvl, trust=PRODUCTION, collateral=bundle, now=DCAPQVL_AT.replace(tzinfo=None))
    assert claims.tcb_status is TcbStatus.UP_TO_DATE


def test_another_vectors_collateral(vectors: Path, dcapqvl: bytes, bundle: TdxCollateral) -> None:
    debugtd = _read(vectors, "v4-trustee-debugtd.quote.bin")
    assert _code(verify_quote, debugtd, trust=PRODUCTION, collateral=bundle, now=DCAPQVL_AT) is (
        Code.TDX_COLLATERAL_MISSING
    )
    assert _code(verify_quote, dcapqvl, trust=PRODUCTION, collateral=TdxCollateral(), now=DCAPQVL_AT) is (
        Code.TDX_COLLATERAL_MISSING
    )
    # The bundle's TCB info is for b0c06f000000; relabelled for another FMSPC its signature breaks.
    raw = _read(vectors, "v4-dcapqvl.collateral.json").replace(b"B0C06F000000", b"50806F000000")
    assert _code(parse_collateral_bundle, raw) is Code.TDX_COLLATERAL_SIGNATURE_INVALID


def pcs_body(item: SignedItem) -> bytes:
    """A PCS response around the exact signed bytes (what Intel serves)."""
    return (
        b'{"'
        + item.kind.encode()
        + b'":'
        + item.body
        + b',"signature":"'
        + item.signature.hex().encode()
        + b'"}'
    )


def test_missing_crls_or_qe_identity(dcapqvl: bytes, bundle: TdxCollateral) -> None:
    tcb_info, qe_identity = bundle.signed_items
    pck_crl, root_crl = bundle.crl_ders
    parts: dict[str, Any] = {
        "tcb_infos": [pcs_body(tcb_info)],
        "qe_identities": [pcs_body(qe_identity)],
        "crls": [pck_crl, root_crl],
        "certs": list(bundle.cert_ders),
    }
    full = TdxCollateral.from_items(**parts)
    assert verify_quote(dcapqvl, trust=PRODUCTION, collateral=full, now=DCAPQVL_AT).tcb_status is (
        TcbStatus.UP_TO_DATE
    )
    for key, value in [
        ("qe_identities", []),
        ("crls", [pck_crl]),
        ("crls", [root_crl]),
        ("tcb_infos", []),
    ]:
        partial = TdxCollateral.from_items(**{**parts, key: value})
        assert _code(verify_quote, dcapqvl, trust=PRODUCTION, collateral=partial, now=DCAPQVL_AT) is (
            Code.TDX_COLLATERAL_MISSING
        ), key
    # Documents without any TCB Signing chain are kept but unusable: missing, and the message says why.
    unsigned = TdxCollateral.from_items(**{**parts, "certs": []})
    with pytest.raises(AttestationError) as exc:
        verify_quote(dcapqvl, trust=PRODUCTION, collateral=unsigned, now=DCAPQVL_AT)
    assert exc.value.code is Code.TDX_COLLATERAL_MISSING and "TCB Signing" in exc.value.message
    assert (
        verify_quote(dcapqvl, trust=PRODUCTION, collateral=unsigned.merged(full), now=DCAPQVL_AT).tcb_status
        is TcbStatus.UP_TO_DATE
    )


def test_tampered_crl_is_a_collateral_signature_error(dcapqvl: bytes, bundle: TdxCollateral) -> None:
    tcb_info, qe_identity = bundle.signed_items
    pck_crl, root_crl = bundle.crl_ders
    for index in (0, 1):
        crls = [pck_crl, root_crl]
        der = crls[index]
        crls[index] = der[:-10] + bytes([der[-10] ^ 1]) + der[-9:]  # inside the signature value
        bad = TdxCollateral.from_items(
            tcb_infos=[pcs_body(tcb_info)],
            qe_identities=[pcs_body(qe_identity)],
            crls=crls,
            certs=list(bundle.cert_ders),
        )
        assert _code(verify_quote, dcapqvl, trust=PRODUCTION, collateral=bad, now=DCAPQVL_AT) is (
            Code.TDX_COLLATERAL_SIGNATURE_INVALID
        )


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (MRTD, Code.TDX_SIGNATURE_INVALID),
        (30, Code.TDX_SIGNATURE_INVALID),  # header user data
        (QUOTE_SIG, Code.TDX_SIGNATURE_INVALID),
        (QUOTE_SIG + 40, Code.TDX_SIGNATURE_INVALID),
        (ATT_KEY, Code.TDX_QE_BINDING_INVALID),  # checked before the key is even used
        (QE_REPORT + 64, Code.TDX_QE_REPORT_SIGNATURE_INVALID),
        (QE_REPORT + 320, Code.TDX_QE_REPORT_SIGNATURE_INVALID),
        (QE_REPORT + 384, Code.TDX_QE_REPORT_SIGNATURE_INVALID),  # the QE report signature itself
        (QE_AUTH, Code.TDX_QE_BINDING_INVALID),
    ],
)
def test_flipped_byte_gives_specific_code(
    dcapqvl: bytes, bundle: TdxCollateral, offset: int, code: Code
) -> None:
    bad = _flip(dcapqvl, offset)
    assert _code(verify_quote, bad, trust=PRODUCTION, collateral=bundle, now=DCAPQVL_AT) is code
    assert _code(verify_quote_signatures, bad, trust=PRODUCTION, now=DCAPQVL_AT) is code


def test_flipped_pck_chain_is_a_chain_error(dcapqvl: bytes) -> None:
    q = parse_quote(dcapqvl)
    start = dcapqvl.index(q.pck_chain_pem)
    leaf_body = start + 200  # inside the leaf's base64
    bad = (
        dcapqvl[:leaf_body]
        + (b"B" if dcapqvl[leaf_body : leaf_body + 1] != b"B" else b"C")
        + dcapqvl[leaf_body + 1 :]
    )
    assert _code(verify_quote_signatures, bad, trust=PRODUCTION, now=DCAPQVL_AT) in (
        Code.TDX_PCK_CHAIN_INVALID,
        Code.TDX_QE_REPORT_SIGNATURE_INVALID,
    )


def test_trailing_bytes_do_not_matter(dcapqvl: bytes, bundle: TdxCollateral) -> None:
    base = verify_quote(dcapqvl, trust=PRODUCTION, collateral=bundle, now=DCAPQVL_AT).to_dict()
    end = len(dcapqvl) - parse_quote(dcapqvl).trailing_bytes
    for tail in (b"", b"\nextra bytes\n", b"\xff" * 100):
        got = verify_quote(dcapqvl[:end] + tail, trust=PRODUCTION, collateral=bundle, now=DCAPQVL_AT)
        assert got.to_dict() == base


def test_trust_store_without_intel_root(dcapqvl: bytes, bundle: TdxCollateral) -> None:
    empty = TrustStore(name="empty", amd_arks={}, intel_roots=frozenset())
    assert _code(verify_quote_signatures, dcapqvl, trust=empty, now=DCAPQVL_AT) is Code.UNTRUSTED_ROOT
    assert _code(verify_quote, dcapqvl, trust=empty, collateral=bundle, now=DCAPQVL_AT) is Code.UNTRUSTED_ROOT


def test_simulated_comes_from_the_root_not_from_the_trust_store(dcapqvl: bytes) -> None:
    """A profile that calls itself simulated does not make Intel's real root simulated (and one that calls
    itself production does not make a simulator root real: test_simulate_evidence.py)."""
    sim = TrustStore(name="sim", amd_arks={}, intel_roots=PRODUCTION.intel_roots, allow_simulated=True)
    assert verify_quote_signatures(dcapqvl, trust=sim, now=DCAPQVL_AT).simulated is False


def test_root_crl_revokes_pck_ca_and_tcb_signing_cert() -> None:
    # Real Intel CRLs revoke nothing we hold, so this uses the simulator's test PKI (same formats).
    now = datetime(2026, 1, 15, 12, tzinfo=UTC)
    pki = shared_pki(now)
    minted = pki.mint_tdx_quote()
    trust = pki.trust_store()
    assert verify_quote(
        minted.quote, trust=trust, collateral=TdxCollateral.from_items(**minted.collateral), now=now
    )
    pck_ca = x509.load_der_x509_certificate(minted.pck_chain_der[1]).serial_number
    signing = pki.intel_ca().tcb_signing_der
    for serial in (pck_ca, x509.load_der_x509_certificate(signing).serial_number):
        items = dict(minted.collateral, crls=[pki.pck_crl(), pki.root_crl(revoked_serials=[serial])])
        collateral = TdxCollateral.from_items(**items)
        assert (
            _code(verify_quote, minted.quote, trust=trust, collateral=collateral, now=now)
            is Code.TDX_CERT_REVOKED
        )
