"""The TEE simulator's TDX side: quote layout, PCK certificate and PCS collateral shape, round trips."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.claims import Claims, TcbStatus
from attestation.errors import AttestationError, Code
from attestation.simulate import Fault, MintedTdx, SimulatedPki, TdxTcbLevel, shared_pki
from attestation.tdx import TdxCollateral, verify_quote, verify_quote_signatures
from attestation.trust import PRODUCTION, SIMULATOR_ORGANIZATION, TrustStore

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SGX_OID = "1.2.840.113741.1.13.1"
MRTD = hashlib.sha384(b"td image").digest()
RTMRS = tuple(hashlib.sha384(bytes([i])).digest() for i in range(4))
REPORT_DATA = hashlib.sha512(b"nonce and keys").digest()
MRCONFIGID = hashlib.sha384(b"config").digest()
SHAPES = [(4, 2), (5, 2), (5, 3)]  # (quote version, body type)


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(NOW)


def mint(pki: SimulatedPki, version: int = 4, body_type: int = 2, **kw: Any) -> MintedTdx:
    return pki.mint_tdx_quote(
        version=version,
        body_type=body_type,
        mrtd=MRTD,
        rtmrs=RTMRS,
        report_data=REPORT_DATA,
        mrconfigid=MRCONFIGID,
        **kw,
    )


def verify(pki: SimulatedPki, m: MintedTdx, trust: TrustStore | None = None) -> Claims:
    collateral = TdxCollateral.from_items(**m.collateral)
    return verify_quote(m.quote, trust=trust or pki.trust_store(), collateral=collateral, now=NOW)


def raw_sig(sig: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def tlv_tree(data: bytes) -> list[Any]:
    """A DER value as nested (tag, children | length) lists: structure without the values."""
    out: list[Any] = []
    i = 0
    while i < len(data):
        tag, n = data[i], data[i + 1]
        i += 2
        if n & 0x80:
            size = n & 0x7F
            n = int.from_bytes(data[i : i + size], "big")
            i += size
        content = data[i : i + n]
        i += n
        out.append((tag, tlv_tree(content) if tag == 0x30 else (content if tag == 0x06 else n)))
    return out


# --- bytes and certificates, checked without the verifier ------------------------------------------


@pytest.mark.parametrize(("version", "body_type"), SHAPES)
def test_quote_layout_signatures_and_binding(pki: SimulatedPki, version: int, body_type: int) -> None:
    m = mint(pki, version, body_type)
    q = m.quote
    assert struct.unpack_from("<HHI", q) == (version, 2, 0x81)
    assert q[12:28] == bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
    start, size = (48, 584) if version == 4 else (54, 584 if body_type == 2 else 648)
    if version == 5:
        assert struct.unpack_from("<HI", q, 48) == (body_type, size)
    body = q[start : start + size]
    assert body[136:184] == MRTD and body[184:232] == MRCONFIGID and body[520:584] == REPORT_DATA
    assert tuple(body[328 + 48 * i : 376 + 48 * i] for i in range(4)) == RTMRS
    assert body[64:120] == bytes(56)  # MRSIGNERSEAM, SEAM_ATTRIBUTES: an Intel-signed module
    (sig_len,) = struct.unpack_from("<I", q, start + size)
    sig_data = q[start + size + 4 :]
    assert len(sig_data) == sig_len
    att_xy = sig_data[64:128]
    att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + att_xy)
    att_key.verify(raw_sig(sig_data[:64]), q[: start + size], ec.ECDSA(hashes.SHA256()))
    cert_type, cert_len = struct.unpack_from("<HI", sig_data, 128)
    cert_data = sig_data[134:]
    assert (cert_type, cert_len) == (6, len(cert_data))
    qe_report, qe_sig = cert_data[:384], cert_data[384:448]
    (auth_len,) = struct.unpack_from("<H", cert_data, 448)
    auth = cert_data[450 : 450 + auth_len]
    inner_type, inner_len = struct.unpack_from("<HI", cert_data, 450 + auth_len)
    pem = cert_data[456 + auth_len :]
    assert (inner_type, inner_len) == (5, len(pem)) and pem.endswith(b"\0")
    leaf, platform_ca, root = x509.load_pem_x509_certificates(pem[:-1])
    assert [
        c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in (leaf, platform_ca, root)
    ] == [
        "Intel SGX PCK Certificate",
        "Intel SGX PCK Platform CA",
        "Intel SGX Root CA",
    ]
    assert (
        root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == SIMULATOR_ORGANIZATION
    )
    leaf.verify_directly_issued_by(platform_ca)
    platform_ca.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    leaf_key = leaf.public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    leaf_key.verify(raw_sig(qe_sig), qe_report, ec.ECDSA(hashes.SHA256()))
    assert qe_report[320:384] == hashlib.sha256(att_xy + auth).digest() + bytes(32)
    assert struct.unpack_from("<HH", qe_report, 256) == (2, 8)  # ISVPRODID, ISVSVN


def test_pck_sgx_extension_has_the_real_structure(pki: SimulatedPki, vectors: Path) -> None:
    real_pem = (vectors / "tdx/v4-dcapqvl.pck_chain.pem").read_bytes().rstrip(b"\0")
    real = x509.load_pem_x509_certificates(real_pem)[0]
    simulated = x509.load_der_x509_certificate(mint(pki).pck_chain_der[0])
    oid = x509.ObjectIdentifier(SGX_OID)
    real_ext = real.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
    sim_ext = simulated.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
    assert tlv_tree(sim_ext) == tlv_tree(real_ext)  # same OIDs, tags and lengths, in the same order
    assert [e.oid for e in simulated.extensions if e.critical] == [
        e.oid for e in real.extensions if e.critical
    ]


def test_pcs_documents_are_signed_over_their_exact_inner_bytes(pki: SimulatedPki) -> None:
    items = pki.tdx_collateral_items()
    tcb_signing = x509.load_der_x509_certificate(items["certs"][2])
    key = tcb_signing.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    for raw, member, ident in (
        (items["tcb_infos"][0], b"tcbInfo", "TDX"),
        (items["qe_identities"][0], b"enclaveIdentity", "TD_QE"),
    ):
        prefix = b'{"' + member + b'":'
        assert raw.startswith(prefix)
        inner = raw[len(prefix) : raw.rindex(b',"signature":')]
        key.verify(raw_sig(bytes.fromhex(json.loads(raw)["signature"])), inner, ec.ECDSA(hashes.SHA256()))
        assert json.loads(inner)["id"] == ident


def test_tcb_info_has_the_pcs_v3_shape(pki: SimulatedPki) -> None:
    info = json.loads(pki.tdx_tcb_info())["tcbInfo"]
    assert list(info) == [
        "id",
        "version",
        "issueDate",
        "nextUpdate",
        "fmspc",
        "pceId",
        "tcbType",
        "tcbEvaluationDataNumber",
        "tdxModule",
        "tdxModuleIdentities",
        "tcbLevels",
    ]
    assert (info["id"], info["version"]) == ("TDX", 3)
    level = info["tcbLevels"][0]
    assert len(level["tcb"]["sgxtcbcomponents"]) == len(level["tcb"]["tdxtcbcomponents"]) == 16
    assert level["tcbStatus"] == "UpToDate"
    assert info["tdxModuleIdentities"][0]["id"] == "TDX_01"


def test_bad_inputs_are_refused(pki: SimulatedPki) -> None:
    with pytest.raises(ValueError, match="type 2"):
        pki.mint_tdx_quote(version=4, body_type=3)
    with pytest.raises(ValueError, match="mrtd"):
        pki.mint_tdx_quote(mrtd=b"short")
    with pytest.raises(ValueError, match="not applicable"):
        pki.mint_tdx_quote(faults=[Fault.CHIP_ID_MISMATCH])


# --- round trips through attestation.tdx ---------------------------------------------------------


@pytest.mark.parametrize(("version", "body_type"), SHAPES)
def test_round_trip_verifies_under_simulation_trust(pki: SimulatedPki, version: int, body_type: int) -> None:
    m = mint(pki, version, body_type)
    claims = verify(pki, m)
    assert (claims.version, claims.measurement, claims.report_data) == (version, MRTD, REPORT_DATA)
    assert (claims.host_data, claims.rtmrs) == (MRCONFIGID, RTMRS)
    assert claims.tcb_status is TcbStatus.UP_TO_DATE
    assert claims.platform_id == m.platform.fmspc
    assert claims.details["body_type"] == body_type
    assert claims.simulated is True and claims.debug is False


@pytest.mark.parametrize(("version", "body_type"), SHAPES)
def test_production_trust_refuses_simulated_roots(pki: SimulatedPki, version: int, body_type: int) -> None:
    m = mint(pki, version, body_type)
    with pytest.raises(AttestationError) as err:
        verify(pki, m, trust=PRODUCTION)
    assert err.value.code is Code.TEST_ROOT_IN_PRODUCTION
    with pytest.raises(AttestationError) as err:
        verify_quote_signatures(m.quote, trust=PRODUCTION, now=NOW)
    assert err.value.code is Code.TEST_ROOT_IN_PRODUCTION


def test_signatures_only_path_and_pki_collateral(pki: SimulatedPki) -> None:
    m = mint(pki, 5, 3)
    assert verify_quote_signatures(m.quote, trust=pki.trust_store(), now=NOW).tcb_status is TcbStatus.UNKNOWN
    collateral = TdxCollateral.from_items(**pki.tdx_collateral_items())
    claims = verify_quote(m.quote, trust=pki.trust_store(), collateral=collateral, now=NOW)
    assert claims.tcb_status is TcbStatus.UP_TO_DATE


def test_debug_sets_td_attributes_bit_0(pki: SimulatedPki) -> None:
    claims = verify(pki, mint(pki, debug=True))
    assert claims.debug is True and claims.policy & 1


def test_module_without_major_version_needs_no_module_identity(pki: SimulatedPki) -> None:
    m = mint(pki, tee_tcb_svn=bytes([4, 0, 2]) + bytes(13))
    assert json.loads(m.collateral["tcb_infos"][0])["tcbInfo"]["tdxModuleIdentities"] == []
    assert verify(pki, m).tcb_status is TcbStatus.UP_TO_DATE


def test_custom_tcb_levels_and_crls(pki: SimulatedPki) -> None:
    m = mint(pki)
    p = m.platform
    below = TdxTcbLevel(
        sgx_svns=p.pck.sgx_svns,
        pcesvn=p.pck.pcesvn,
        tdx_svns=(p.tee_tcb_svn[0], 0, *p.tee_tcb_svn[2:]),
        date=NOW - timedelta(days=90),
        status="SWHardeningNeeded",
        advisory_ids=("INTEL-SA-00615",),
    )
    items = dict(m.collateral, tcb_infos=[pki.tdx_tcb_info(levels=[below])])
    claims = verify_quote(
        m.quote, trust=pki.trust_store(), collateral=TdxCollateral.from_items(**items), now=NOW
    )
    assert claims.tcb_status is TcbStatus.SW_HARDENING_NEEDED
    assert claims.details["advisory_ids"] == ["INTEL-SA-00615"]

    serial = x509.load_der_x509_certificate(m.pck_chain_der[0]).serial_number
    items = dict(m.collateral, crls=[pki.pck_crl(revoked_serials=[serial]), pki.root_crl()])
    with pytest.raises(AttestationError) as err:
        verify_quote(m.quote, trust=pki.trust_store(), collateral=TdxCollateral.from_items(**items), now=NOW)
    assert err.value.code is Code.TDX_CERT_REVOKED


FAULT_CODES = [
    (Fault.BAD_SIGNATURE, Code.TDX_SIGNATURE_INVALID),
    (Fault.FOREIGN_CHAIN, Code.UNTRUSTED_ROOT),
    (Fault.EXPIRED_CERT, Code.TDX_CERT_EXPIRED),
    (Fault.REVOKED, Code.TDX_CERT_REVOKED),
    (Fault.QE_REPORT_SIGNATURE, Code.TDX_QE_REPORT_SIGNATURE_INVALID),
    (Fault.QE_BINDING, Code.TDX_QE_BINDING_INVALID),
    (Fault.QE_IDENTITY_MISMATCH, Code.TDX_QE_IDENTITY_MISMATCH),
    (Fault.EXPIRED_COLLATERAL, Code.TDX_COLLATERAL_EXPIRED),
    (Fault.COLLATERAL_SIGNATURE, Code.TDX_COLLATERAL_SIGNATURE_INVALID),
    (Fault.TCB_NOT_MATCHED, Code.TDX_TCB_NOT_MATCHED),
    (Fault.TCB_REVOKED, Code.TDX_TCB_REVOKED),
]


@pytest.mark.parametrize(("fault", "code"), FAULT_CODES, ids=[f.value for f, _ in FAULT_CODES])
@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 3)])
def test_each_fault_raises_its_code(
    pki: SimulatedPki, fault: Fault, code: Code, version: int, body_type: int
) -> None:
    m = mint(pki, version, body_type, faults=[fault])
    assert m.faults == {fault}
    with pytest.raises(AttestationError) as err:
        verify(pki, m)
    assert err.value.code is code


def test_out_of_date_level_is_a_status_not_an_error(pki: SimulatedPki) -> None:
    claims = verify(pki, mint(pki, faults=[Fault.TCB_OUT_OF_DATE]))
    assert claims.tcb_status is TcbStatus.OUT_OF_DATE
    assert claims.details["advisory_ids"]


def test_collateral_expires_relative_to_now(pki: SimulatedPki) -> None:
    m = mint(pki)
    later = NOW + timedelta(days=31)
    with pytest.raises(AttestationError) as err:
        verify_quote(
            m.quote, trust=pki.trust_store(), collateral=TdxCollateral.from_items(**m.collateral), now=later
        )
    assert err.value.code is Code.TDX_COLLATERAL_EXPIRED
