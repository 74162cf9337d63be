"""The TEE simulator's SEV-SNP side: byte layout, certificate shape, and round trips through the verifier."""

from __future__ import annotations

import hashlib
import struct
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.claims import Claims, SnpTcb
from attestation.errors import AttestationError, Code
from attestation.simulate import Fault, MintedSnp, SimulatedPki, shared_pki
from attestation.snp import SnpCollateral, verify_report
from attestation.trust import PRODUCTION, SIMULATOR_ORGANIZATION, TrustStore

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
AMD_ARC = "1.3.6.1.4.1.3704.1"
PSS48 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
MEASUREMENT = hashlib.sha384(b"image").digest()
REPORT_DATA = hashlib.sha512(b"nonce and keys").digest()
HOST_DATA = hashlib.sha256(b"host").digest()

# (product, report version, signing key): every product, every version, VCEK and VLEK.
CASES = [
    ("Milan", 2, "vcek"),
    ("Milan", 3, "vcek"),
    ("Milan", 5, "vlek"),
    ("Genoa", 3, "vcek"),
    ("Genoa", 5, "vcek"),
    ("Genoa", 3, "vlek"),
    ("Turin", 3, "vcek"),
    ("Turin", 5, "vcek"),
    ("Turin", 5, "vlek"),
]


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(NOW)


def mint(pki: SimulatedPki, product: str, version: int, key: str, **kw: Any) -> MintedSnp:
    return pki.mint_snp_report(
        product=product,
        version=version,
        signing_key=key,  # type: ignore[arg-type]
        measurement=MEASUREMENT,
        report_data=REPORT_DATA,
        host_data=HOST_DATA,
        **kw,
    )


def load(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def amd_exts(cert: x509.Certificate) -> dict[str, bytes]:
    return {
        e.oid.dotted_string.removeprefix(AMD_ARC + "."): e.value.value
        for e in cert.extensions
        if e.oid.dotted_string.startswith(AMD_ARC)
    }


def verify(
    pki: SimulatedPki, minted: MintedSnp, trust: TrustStore | None = None, product: str | None = None
) -> Claims:
    return verify_report(
        minted.report,
        trust=trust or pki.trust_store(),
        collateral=SnpCollateral.from_der(**minted.collateral),
        now=NOW,
        product=product,
    )


# --- bytes and certificates, checked without the verifier ------------------------------------------


@pytest.mark.parametrize(("product", "version", "key"), CASES)
def test_report_layout_and_signature(pki: SimulatedPki, product: str, version: int, key: str) -> None:
    m = mint(pki, product, version, key, vmpl=1)
    r = m.report
    assert len(r) == 0x4A0
    assert struct.unpack_from("<IIQ", r, 0) == (version, 0, 0x30000)
    assert struct.unpack_from("<II", r, 0x30) == (1, 1)  # VMPL, SIGNATURE_ALGO
    assert (struct.unpack_from("<I", r, 0x48)[0] >> 2) & 7 == (1 if key == "vlek" else 0)
    assert (r[0x50:0x90], r[0x90:0xC0], r[0xC0:0xE0]) == (REPORT_DATA, MEASUREMENT, HOST_DATA)
    assert r[0x160:0x180] == b"\xff" * 32
    cpuid = {"Milan": b"\x19\x01\x01", "Genoa": b"\x19\x11\x01", "Turin": b"\x1a\x02\x01"}[product]
    assert r[0x188:0x18B] == (cpuid if version >= 3 else bytes(3))
    assert r[0x1A0:0x1E0] == m.chip_id.ljust(64, b"\0")
    assert len(m.chip_id) == (8 if product == "Turin" else 64)
    assert r[0x38:0x40] == r[0x180:0x188] == r[0x1E0:0x1E8] == r[0x1F0:0x1F8]
    assert not any(r[0x330:])
    sig = encode_dss_signature(
        int.from_bytes(r[0x2A0:0x2E8], "little"), int.from_bytes(r[0x2E8:0x330], "little")
    )
    leaf_key = load(m.leaf_der).public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey) and leaf_key.curve.name == "secp384r1"
    leaf_key.verify(sig, r[:0x2A0], ec.ECDSA(hashes.SHA384()))


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ("Milan", bytes([3, 0, 0, 0, 0, 0, 8, 115])),
        ("Genoa", bytes([10, 0, 0, 0, 0, 0, 25, 84])),
        ("Turin", bytes([7, 1, 2, 3, 0, 0, 0, 72])),  # FMC, BL, TEE, SNP, 0*3, UCODE
    ],
)
def test_tcb_version_byte_order(pki: SimulatedPki, product: str, expected: bytes) -> None:
    tcb = SnpTcb(bootloader=1, tee=2, snp=3, microcode=72, fmc=7) if product == "Turin" else None
    m = pki.mint_snp_report(product=product, tcb=tcb)
    assert m.report[0x180:0x188] == expected


@pytest.mark.parametrize(("product", "version", "key"), CASES)
def test_amd_chain_has_kds_shape(pki: SimulatedPki, product: str, version: int, key: str) -> None:
    m = mint(pki, product, version, key)
    leaf, middle, ark = (load(d) for d in (m.leaf_der, *m.chain_der))
    vlek = key == "vlek"
    assert (cn(leaf), cn(middle), cn(ark)) == (
        "SEV-VLEK" if vlek else "SEV-VCEK",
        f"SEV-VLEK-{product}" if vlek else f"SEV-{product}",
        f"ARK-{product}",
    )
    assert (
        ark.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == SIMULATOR_ORGANIZATION
    )
    for child, parent in ((leaf, middle), (middle, ark), (ark, ark)):
        key_ = parent.public_key()
        assert isinstance(key_, rsa.RSAPublicKey) and key_.key_size == 4096
        key_.verify(child.signature, child.tbs_certificate_bytes, PSS48, hashes.SHA384())  # salt must be 48
        assert child.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
    exts = amd_exts(leaf)
    assert exts["1"] == (b"\x02\x01\x01" if product == "Turin" else b"\x02\x01\x00")
    name = product if vlek else {"Milan": "Milan-B0"}.get(product, product)
    assert exts["2"] == b"\x16" + bytes([len(name)]) + name.encode()
    assert exts["3.3"] == b"\x02\x01" + bytes([m.tcb.snp])
    assert ("3.9" in exts) == (product == "Turin")
    if vlek:
        assert "4" not in exts and exts["5"].startswith(b"\x16")
    else:
        assert exts["4"] == m.chip_id  # raw bytes, not DER-wrapped
        assert "5" not in exts


@pytest.mark.parametrize(
    ("vector", "product", "key"),
    [("snp/genoa-v5-oak.vcek.der", "Genoa", "vcek"), ("snp/milan-v3-trustee-vlek.vlek.der", "Milan", "vlek")],
)
def test_leaf_extensions_match_real_kds_certificate(
    pki: SimulatedPki, vectors: Path, vector: str, product: str, key: str
) -> None:
    real = load((vectors / vector).read_bytes())
    simulated = load(mint(pki, product, 3, key).leaf_der)
    assert list(amd_exts(simulated)) == list(amd_exts(real))
    assert [e.critical for e in simulated.extensions] == [e.critical for e in real.extensions]


def test_debug_sets_policy_bit_19(pki: SimulatedPki) -> None:
    m = mint(pki, "Milan", 3, "vcek", debug=True)
    assert struct.unpack_from("<Q", m.report, 8)[0] == 0x30000 | 1 << 19
    claims = verify(pki, m)
    assert claims.debug is True


def test_bad_inputs_are_refused(pki: SimulatedPki) -> None:
    with pytest.raises(ValueError, match="measurement"):
        pki.mint_snp_report(measurement=b"short")
    with pytest.raises(ValueError, match="product"):
        pki.mint_snp_report(product="Naples")
    with pytest.raises(ValueError, match="VLEK"):
        pki.mint_snp_report(signing_key="vlek", faults=[Fault.CHIP_ID_MISMATCH])
    with pytest.raises(ValueError, match="not applicable"):
        pki.mint_snp_report(faults=[Fault.QE_BINDING])
    with pytest.raises(ValueError, match="timezone"):
        SimulatedPki.generate(datetime(2026, 1, 1))


# --- round trips through attestation.snp ---------------------------------------------------------


@pytest.mark.parametrize(("product", "version", "key"), CASES)
def test_round_trip_verifies_under_simulation_trust(
    pki: SimulatedPki, product: str, version: int, key: str
) -> None:
    m = mint(pki, product, version, key)
    claims = verify(pki, m, product=product if version == 2 else None)
    assert (claims.product, claims.version) == (product, version)
    assert (claims.measurement, claims.report_data, claims.host_data) == (MEASUREMENT, REPORT_DATA, HOST_DATA)
    assert claims.tcb["snp"] == m.tcb.snp and claims.tcb.get("fmc") == m.tcb.fmc
    assert claims.platform_id == (b"" if key == "vlek" else m.chip_id)
    assert claims.details["signing_key"] == key
    assert claims.simulated is True and claims.debug is False


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_production_trust_refuses_simulated_roots(pki: SimulatedPki, product: str) -> None:
    m = mint(pki, product, 3, "vcek")
    with pytest.raises(AttestationError) as err:
        verify(pki, m, trust=PRODUCTION)
    assert err.value.code is Code.TEST_ROOT_IN_PRODUCTION


def test_endorsements_sent_with_the_evidence_suffice(pki: SimulatedPki) -> None:
    """The certificates may all come with the evidence; the ARK's CRL cannot (it is collateral)."""
    m = mint(pki, "Genoa", 5, "vcek")
    claims = verify_report(
        m.report,
        trust=pki.trust_store(),
        collateral=SnpCollateral.from_der([], m.collateral["crls"]),
        now=NOW,
        endorsements=m.endorsements,
    )
    assert claims.product == "Genoa" and claims.revocation_checked is True
    with pytest.raises(AttestationError) as err:
        verify_report(
            m.report,
            trust=pki.trust_store(),
            collateral=SnpCollateral.empty(),
            now=NOW,
            endorsements=m.endorsements,
        )
    assert err.value.code is Code.SNP_CRL_MISSING


def test_pki_collateral_items_hold_minted_leaves(pki: SimulatedPki) -> None:
    m = mint(pki, "Milan", 3, "vcek")
    collateral = SnpCollateral.from_der(**pki.snp_collateral_items())
    assert verify_report(m.report, trust=pki.trust_store(), collateral=collateral, now=NOW).product == "Milan"


def test_pki_collateral_items_carry_a_current_crl_for_every_product() -> None:
    """A site seeded with ``snp_collateral_items`` before any Genoa or Turin mint still verifies their
    nodes, whose certificates come with the evidence: the ARK CRLs are collateral, and now required."""
    fresh = SimulatedPki.generate(NOW)
    items = fresh.snp_collateral_items()
    issuers = {x509.load_der_x509_crl(crl).issuer.rfc4514_string() for crl in items["crls"]}
    assert len(issuers) == 3 and all(f"CN=ARK-{p}" in " ".join(issuers) for p in ("Milan", "Genoa", "Turin"))
    m = fresh.mint_snp_report(product="Turin", version=5, signing_key="vlek")
    claims = verify_report(
        m.report,
        trust=fresh.trust_store(),
        collateral=SnpCollateral.from_der(**items),
        now=NOW,
        endorsements=m.endorsements,
    )
    assert claims.product == "Turin" and claims.revocation_checked is True


def test_amd_crl_revoking_the_ask_is_enforced(pki: SimulatedPki) -> None:
    m = mint(pki, "Milan", 3, "vcek")
    ask_serial = load(m.chain_der[0]).serial_number
    crl = pki.amd_crl("Milan", revoked_serials=[ask_serial])
    collateral = SnpCollateral.from_der(m.collateral["certs"], [crl])
    with pytest.raises(AttestationError) as err:
        verify_report(m.report, trust=pki.trust_store(), collateral=collateral, now=NOW)
    assert err.value.code is Code.SNP_CERT_REVOKED


def test_certificates_expire_relative_to_now(pki: SimulatedPki) -> None:
    m = mint(pki, "Milan", 3, "vcek")
    with pytest.raises(AttestationError) as err:
        verify_report(
            m.report,
            trust=pki.trust_store(),
            collateral=SnpCollateral.from_der(**m.collateral),
            now=NOW + timedelta(days=8 * 365),
        )
    assert err.value.code is Code.SNP_CERT_EXPIRED


# A VCEK for this chip but another TCB is SNP_TCB_MISMATCH. A VCEK for another chip cannot be linked to
# the report from the collateral store (that is "not found"); presented *with* the evidence, as an
# extended report's certificate table would, it is SNP_CHIP_ID_MISMATCH (see the test below).
FAULT_CODES = [
    (Fault.BAD_SIGNATURE, Code.SNP_SIGNATURE_INVALID),
    (Fault.FOREIGN_CHAIN, Code.UNTRUSTED_ROOT),
    (Fault.EXPIRED_CERT, Code.SNP_CERT_EXPIRED),
    (Fault.REVOKED, Code.SNP_CERT_REVOKED),
    (Fault.EXPIRED_COLLATERAL, Code.SNP_CRL_EXPIRED),  # the ARK's CRL is past nextUpdate
    (Fault.TCB_MISMATCH, Code.SNP_TCB_MISMATCH),
    (Fault.CHIP_ID_MISMATCH, Code.SNP_ENDORSEMENT_NOT_FOUND),
]


def test_chip_id_mismatch_presented_with_the_evidence(pki: SimulatedPki) -> None:
    m = mint(pki, "Milan", 3, "vcek", faults=[Fault.CHIP_ID_MISMATCH])
    chain_only = {
        "certs": [c for c in m.collateral["certs"] if c != m.leaf_der],
        "crls": m.collateral["crls"],
    }
    with pytest.raises(AttestationError) as err:
        verify_report(
            m.report,
            trust=pki.trust_store(),
            collateral=SnpCollateral.from_der(**chain_only),
            now=NOW,
            endorsements=m.endorsements,
        )
    assert err.value.code is Code.SNP_CHIP_ID_MISMATCH


FAULT_CASES = [
    pytest.param(fault, code, key, id=f"{fault.value}-{key}")
    for fault, code in FAULT_CODES
    for key in ("vcek", "vlek")
    if not (key == "vlek" and fault is Fault.CHIP_ID_MISMATCH)  # a VLEK has no hwID
]


@pytest.mark.parametrize(("fault", "code", "key"), FAULT_CASES)
def test_each_fault_raises_its_code(pki: SimulatedPki, fault: Fault, code: Code, key: str) -> None:
    m = mint(pki, "Milan", 3, key, faults=[fault])
    assert m.faults == {fault}
    with pytest.raises(AttestationError) as err:
        verify(pki, m)
    assert err.value.code is code


def test_fault_free_twin_of_each_fault_verifies(pki: SimulatedPki) -> None:
    """The faults change only what they name: the same inputs without the fault verify."""
    for fault in (Fault.TCB_MISMATCH, Fault.CHIP_ID_MISMATCH, Fault.EXPIRED_CERT):
        faulty, good = mint(pki, "Milan", 3, "vcek", faults=[fault]), mint(pki, "Milan", 3, "vcek")
        assert faulty.leaf_der != good.leaf_der
        assert load(faulty.leaf_der).public_key() == load(good.leaf_der).public_key()
        verify(pki, good)
