"""Paths the real vectors cannot reach (CRLs, Turin, mismatching extensions, test roots), on a small
AMD-shaped chain minted here: RSA-PSS SHA-384 CA certificates, a P-384 VCEK with the AMD extensions,
and reports signed with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from attestation.claims import Claims
from attestation.errors import AttestationError, Code
from attestation.snp import SnpCollateral, parse_certificate, parse_report, verify_report
from attestation.snp.verify import Leaf, check_leaf_matches_report
from attestation.trust import SIMULATOR_ORGANIZATION, TrustStore, fingerprint

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
T0 = datetime(2030, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=10)
CHIP = bytes(range(64))
TURIN_CHIP = bytes(range(1, 9))


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def _int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _name(cn: str, org: str = "Advanced Micro Devices") -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    )


@dataclass
class Minted:
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    vcek_key: ec.EllipticCurvePrivateKey
    ark: x509.Certificate
    ask: x509.Certificate
    product: str
    org: str

    def der(self, cert: x509.Certificate) -> bytes:
        return cert.public_bytes(Encoding.DER)

    def trust(self) -> TrustStore:
        return TrustStore(
            "minted", {self.product: fingerprint(self.der(self.ark))}, frozenset(), allow_simulated=True
        )

    def vcek(self, tcb: dict[str, int], hwid: bytes, product_name: str, *, days: int = 365) -> bytes:
        a = "1.3.6.1.4.1.3704.1"
        exts = [
            _ext(f"{a}.1", _int(1 if self.product == "Turin" else 0)),
            _ext(f"{a}.2", b"\x16" + bytes([len(product_name)]) + product_name.encode()),
            _ext(f"{a}.3.1", _int(tcb["bl"])),
            _ext(f"{a}.3.2", _int(tcb["tee"])),
            _ext(f"{a}.3.3", _int(tcb["snp"])),
            _ext(f"{a}.3.8", _int(tcb["ucode"])),
            _ext(f"{a}.4", hwid),
        ]
        if "fmc" in tcb:
            exts.append(_ext(f"{a}.3.9", _int(tcb["fmc"])))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK", self.org))
            .issuer_name(self.ask.subject)
            .public_key(self.vcek_key.public_key())
            .serial_number(1)
            .not_valid_before(T0)
            .not_valid_after(T0 + timedelta(days=days))
        )
        for e in exts:
            builder = builder.add_extension(e, critical=False)
        return self.der(builder.sign(self.ask_key, hashes.SHA384(), rsa_padding=PSS))

    def crl(
        self,
        revoked: list[int],
        *,
        key: rsa.RSAPrivateKey | None = None,
        days: int = 30,
        start: datetime = T0,
    ) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(start)
            .next_update(start + timedelta(days=days))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(T0).build()
            )
        return builder.sign(key or self.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(Encoding.DER)

    def report(
        self, *, tcb_raw: bytes, chip: bytes, cpuid: tuple[int, int, int], policy: int = 0x30000
    ) -> bytes:
        data = bytearray(0x4A0)
        data[0:4] = (3).to_bytes(4, "little")
        data[0x08:0x10] = policy.to_bytes(8, "little")
        data[0x34:0x38] = (1).to_bytes(4, "little")
        data[0x38:0x40] = tcb_raw
        data[0x50:0x90] = b"\x11" * 64
        data[0x90:0xC0] = b"\x22" * 48
        data[0x180:0x188] = tcb_raw
        data[0x188:0x18B] = bytes(cpuid)
        data[0x1A0 : 0x1A0 + len(chip)] = chip
        data[0x1E0:0x1E8] = tcb_raw
        data[0x1F0:0x1F8] = tcb_raw
        r, s = decode_dss_signature(self.vcek_key.sign(bytes(data[:0x2A0]), ec.ECDSA(hashes.SHA384())))
        data[0x2A0:0x2E8] = r.to_bytes(72, "little")
        data[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(data)


def mint(product: str, org: str = "Advanced Micro Devices", *, ask_is_ca: bool = True) -> Minted:
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)

    def ca(subject: str, issuer: x509.Name, key: rsa.RSAPublicKey, signer: rsa.RSAPrivateKey, serial: int, is_ca: bool) -> x509.Certificate:  # fmt: skip
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject, org))
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(serial)
            .not_valid_before(T0 - timedelta(days=1))
            .not_valid_after(T0 + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA384(), rsa_padding=PSS)
        )

    ark = ca(f"ARK-{product}", _name(f"ARK-{product}", org), ark_key.public_key(), ark_key, 0x10000, True)
    ask = ca(f"SEV-{product}", ark.subject, ask_key.public_key(), ark_key, 0x10001, ask_is_ca)
    return Minted(ark_key, ask_key, ec.generate_private_key(ec.SECP384R1()), ark, ask, product, org)


MILAN_TCB = {"bl": 4, "tee": 1, "snp": 24, "ucode": 219}
MILAN_RAW = bytes([4, 1, 0, 0, 0, 0, 24, 219])
TURIN_TCB = {"fmc": 1, "bl": 2, "tee": 3, "snp": 4, "ucode": 77}
TURIN_RAW = bytes([1, 2, 3, 4, 0, 0, 0, 77])


@pytest.fixture(scope="module")
def milan() -> Minted:
    return mint("Milan")


def _verify(
    m: Minted,
    report: bytes,
    certs: list[bytes],
    crls: Sequence[bytes] | None = None,
    *,
    trust: TrustStore | None = None,
) -> Claims:
    """``crls`` default: one current, empty ARK CRL (a current CRL is required)."""
    crls = [m.crl([])] if crls is None else crls
    collateral = SnpCollateral.from_der([*certs, m.der(m.ask), m.der(m.ark)], crls)
    return verify_report(report, trust=trust or m.trust(), collateral=collateral, now=NOW)


def _code(
    m: Minted,
    report: bytes,
    certs: list[bytes],
    crls: Sequence[bytes] | None = None,
    *,
    trust: TrustStore | None = None,
) -> Code:
    with pytest.raises(AttestationError) as info:
        _verify(m, report, certs, crls, trust=trust)
    return info.value.code


def test_minted_milan_chain_verifies(milan: Minted) -> None:
    vcek = milan.vcek(MILAN_TCB, CHIP, "Milan-B0")
    report = milan.report(tcb_raw=MILAN_RAW, chip=CHIP, cpuid=(0x19, 0x01, 0x01))
    claims = _verify(milan, report, [vcek])
    assert claims.product == "Milan" and claims.simulated is True


def test_turin_layout_fmc_and_short_hwid() -> None:
    turin = mint("Turin")
    vcek = turin.vcek(TURIN_TCB, TURIN_CHIP, "Turin")
    report = turin.report(tcb_raw=TURIN_RAW, chip=TURIN_CHIP, cpuid=(0x1A, 0x02, 0x00))
    claims = _verify(turin, report, [vcek])
    assert claims.tcb == {
        "fmc": 1,
        "bootloader": 2,
        "tee": 3,
        "snp": 4,
        "microcode": 77,
        "raw": TURIN_RAW.hex(),
    }
    assert claims.platform_id == TURIN_CHIP
    # A Turin VCEK without fmcSPL does not match a Turin REPORTED_TCB.
    no_fmc = turin.vcek({k: v for k, v in TURIN_TCB.items() if k != "fmc"}, TURIN_CHIP, "Turin")
    assert _code(turin, report, [no_fmc]) is Code.SNP_TCB_MISMATCH


def test_crl_revokes_the_ask(milan: Minted) -> None:
    vcek = milan.vcek(MILAN_TCB, CHIP, "Milan-B0")
    report = milan.report(tcb_raw=MILAN_RAW, chip=CHIP, cpuid=(0x19, 0x01, 0x01))
    assert _verify(milan, report, [vcek], [milan.crl([0x5])])
    assert _code(milan, report, [vcek], [milan.crl([milan.ask.serial_number])]) is Code.SNP_CERT_REVOKED
    # Revocation fails closed: no ARK CRL, or none current at `now`, is refused with its own code.
    assert _code(milan, report, [vcek], []) is Code.SNP_CRL_MISSING
    assert _code(milan, report, [vcek], [milan.crl([], days=5)]) is Code.SNP_CRL_EXPIRED
    assert (
        _code(milan, report, [vcek], [milan.crl([], start=NOW + timedelta(days=1))]) is Code.SNP_CRL_EXPIRED
    )
    # A superseded CRL does not fail the chain, but its revocations still count.
    old = milan.crl([], days=5, start=T0 - timedelta(days=20))
    assert _verify(milan, report, [vcek], [old, milan.crl([0x5])])
    old_revoking = milan.crl([milan.ask.serial_number], days=5, start=T0 - timedelta(days=20))
    assert _code(milan, report, [vcek], [old_revoking, milan.crl([])]) is Code.SNP_CERT_REVOKED
    forged = milan.crl([], key=rsa.generate_private_key(65537, 2048))
    assert _code(milan, report, [vcek], [forged]) is Code.SNP_CHAIN_INVALID


def test_leaf_extension_mismatches_have_their_own_codes(milan: Minted) -> None:
    report = parse_report(milan.report(tcb_raw=MILAN_RAW, chip=CHIP, cpuid=(0x19, 0x01, 0x01)))

    def leaf(tcb: dict[str, int], hwid: bytes, name: str) -> Leaf:
        cert = parse_certificate(milan.vcek(tcb, hwid, name))
        ext = cert.amd_extensions()
        return Leaf(cert, ext, (ext.product_name or "").split("-")[0] or None)

    from attestation.snp.certs import Role

    def code(lf: Leaf) -> Code:
        with pytest.raises(AttestationError) as info:
            check_leaf_matches_report(lf, report, Role.VCEK)
        return info.value.code

    assert check_leaf_matches_report(leaf(MILAN_TCB, CHIP, "Milan-B0"), report, Role.VCEK)[1] == "Milan"
    assert code(leaf({**MILAN_TCB, "snp": 23}, CHIP, "Milan-B0")) is Code.SNP_TCB_MISMATCH
    assert code(leaf(MILAN_TCB, CHIP[::-1], "Milan-B0")) is Code.SNP_CHIP_ID_MISMATCH
    assert code(leaf(MILAN_TCB, CHIP, "Genoa")) is Code.SNP_PRODUCT_MISMATCH
    assert code(Leaf(leaf(MILAN_TCB, CHIP, "Venice").cert, leaf(MILAN_TCB, CHIP, "Venice").ext, None)) is (
        Code.SNP_PRODUCT_MISMATCH
    )
    with pytest.raises(AttestationError) as info:
        check_leaf_matches_report(leaf(MILAN_TCB, CHIP, "Milan-B0"), report, Role.VLEK)
    assert info.value.code is Code.SNP_SIGNING_KEY_MISMATCH


def test_cross_product_vcek_is_product_mismatch(milan: Minted) -> None:
    """A Genoa CPUID report whose chip id/TCB match a Milan VCEK is refused on the product."""
    vcek = milan.vcek(MILAN_TCB, CHIP, "Milan-B0")
    report = milan.report(tcb_raw=MILAN_RAW, chip=CHIP, cpuid=(0x19, 0x11, 0x01))
    assert _code(milan, report, [vcek]) is Code.SNP_PRODUCT_MISMATCH


def test_simulator_root_is_refused_by_production() -> None:
    from attestation.trust import PRODUCTION

    sim = mint("Genoa", SIMULATOR_ORGANIZATION)
    vcek = sim.vcek({"bl": 1, "tee": 0, "snp": 2, "ucode": 3}, CHIP, "Genoa")
    report = sim.report(tcb_raw=bytes([1, 0, 0, 0, 0, 0, 2, 3]), chip=CHIP, cpuid=(0x19, 0x11, 0x01))
    assert _verify(sim, report, [vcek])
    assert _code(sim, report, [vcek], trust=PRODUCTION) is Code.TEST_ROOT_IN_PRODUCTION


def test_ask_must_be_a_ca_and_leaf_expiry() -> None:
    m = mint("Milan", ask_is_ca=False)
    vcek = m.vcek(MILAN_TCB, CHIP, "Milan-B0")
    report = m.report(tcb_raw=MILAN_RAW, chip=CHIP, cpuid=(0x19, 0x01, 0x01))
    assert _code(m, report, [vcek]) is Code.SNP_CHAIN_INVALID
    good = mint("Milan")
    short = good.vcek(MILAN_TCB, CHIP, "Milan-B0", days=5)
    assert _code(good, good.report(tcb_raw=MILAN_RAW, chip=CHIP, cpuid=(0x19, 0x01, 0x01)), [short]) is (
        Code.SNP_CERT_EXPIRED
    )
