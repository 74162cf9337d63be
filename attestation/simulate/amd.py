"""Simulated AMD key distribution: ARK -> ASK/ASVK -> VCEK/VLEK, shaped like AMD's KDS certificates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.claims import SnpTcb
from attestation.simulate import _der
from attestation.simulate._certs import Issuer, Window, amd_name, ca_extensions, crl, issue, rsa4096

PRODUCTS = ("Milan", "Genoa", "Turin")
_ARC = "1.3.6.1.4.1.3704.1"
# productName as AMD's KDS writes it: the Milan VCEK carries the stepping, the VLEKs never do.
VCEK_PRODUCT_NAME: Mapping[str, str] = {"Milan": "Milan-B0", "Genoa": "Genoa", "Turin": "Turin"}
_STRUCT_VERSION: Mapping[str, int] = {"Milan": 0, "Genoa": 0, "Turin": 1}
CHIP_ID_SIZE: Mapping[str, int] = {"Milan": 64, "Genoa": 64, "Turin": 8}
DEFAULT_TCB: Mapping[str, SnpTcb] = {
    "Milan": SnpTcb(bootloader=3, tee=0, snp=8, microcode=115),
    "Genoa": SnpTcb(bootloader=10, tee=0, snp=25, microcode=84),
    "Turin": SnpTcb(bootloader=1, tee=1, snp=1, microcode=72, fmc=1),
}
SIMULATED_CSP_ID = "CN=sovereign-simulator.invalid"


def check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise ValueError(f"unknown SNP product {product!r}; expected one of {PRODUCTS}")


def as_tcb(product: str, tcb: SnpTcb | Mapping[str, int] | None) -> SnpTcb:
    """Normalise a TCB given as ``SnpTcb``, a dict of its field names, or None (product default)."""
    if tcb is None:
        return DEFAULT_TCB[product]
    if isinstance(tcb, SnpTcb):
        value = tcb
    else:
        value = SnpTcb(
            bootloader=tcb["bootloader"],
            tee=tcb["tee"],
            snp=tcb["snp"],
            microcode=tcb["microcode"],
            fmc=tcb.get("fmc"),
        )
    if product == "Turin" and value.fmc is None:
        value = SnpTcb(value.bootloader, value.tee, value.snp, value.microcode, fmc=0)
    if product != "Turin" and value.fmc is not None:
        raise ValueError(f"{product} TCB has no FMC component")
    for part in (value.bootloader, value.tee, value.snp, value.microcode, value.fmc or 0):
        if not 0 <= part <= 0xFF:
            raise ValueError(f"TCB component {part} does not fit in a byte")
    return value


def _ext(suffix: str, value: bytes) -> tuple[x509.ExtensionType, bool]:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{_ARC}.{suffix}"), value), False


def leaf_extensions(
    product: str, *, tcb: SnpTcb, hw_id: bytes | None, vlek: bool
) -> list[tuple[x509.ExtensionType, bool]]:
    """The VCEK/VLEK extensions in KDS order; hwID is the raw chip id (not DER-wrapped)."""
    name = product if vlek else VCEK_PRODUCT_NAME[product]
    exts = [
        _ext("1", _der.integer(_STRUCT_VERSION[product])),
        _ext("2", _der.ia5_string(name)),
        _ext("3.1", _der.integer(tcb.bootloader)),
        _ext("3.2", _der.integer(tcb.tee)),
        *(_ext(f"3.{n}", _der.integer(0)) for n in (4, 5, 6, 7)),
        _ext("3.3", _der.integer(tcb.snp)),
        _ext("3.8", _der.integer(tcb.microcode)),
    ]
    if tcb.fmc is not None:
        exts.append(_ext("3.9", _der.integer(tcb.fmc)))
    if hw_id is not None:
        exts.append(_ext("4", hw_id))
    if vlek:
        exts.append(_ext("5", _der.ia5_string(SIMULATED_CSP_ID)))
    return exts


@dataclass
class AmdProductCa:
    """ARK of one product, with its ASK and ASVK made on first use (RSA-4096 takes a while)."""

    product: str
    now: datetime
    ark: Issuer
    ark_der: bytes
    _signers: dict[bool, tuple[Issuer, bytes]] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, product: str, now: datetime) -> AmdProductCa:
        check_product(product)
        ark = Issuer(amd_name(f"ARK-{product}"), rsa4096())
        ark_der = issue(
            ark,
            subject=ark.name,
            public_key=_rsa_pub(ark),
            window=Window.around(now, days=25 * 365),
            extensions=ca_extensions(None),
        )
        return cls(product, now, ark, ark_der)

    def signer(self, *, vlek: bool) -> tuple[Issuer, bytes]:
        """The ASK (``SEV-<Product>``) or, for VLEKs, the ASVK (``SEV-VLEK-<Product>``)."""
        if vlek not in self._signers:
            name = f"SEV-VLEK-{self.product}" if vlek else f"SEV-{self.product}"
            ca = Issuer(amd_name(name), rsa4096())
            der = issue(
                self.ark,
                subject=ca.name,
                public_key=_rsa_pub(ca),
                window=Window.around(self.now, days=25 * 365),
                extensions=ca_extensions(0),
            )
            self._signers[vlek] = (ca, der)
        return self._signers[vlek]

    def intermediates(self) -> list[bytes]:
        """The ASK/ASVK certificates made so far."""
        return [der for _, der in self._signers.values()]

    def leaf(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        tcb: SnpTcb,
        hw_id: bytes | None,
        vlek: bool,
        window: Window,
    ) -> bytes:
        issuer, _ = self.signer(vlek=vlek)
        return issue(
            issuer,
            subject=amd_name("SEV-VLEK" if vlek else "SEV-VCEK"),
            public_key=key.public_key(),
            window=window,
            extensions=leaf_extensions(self.product, tcb=tcb, hw_id=hw_id, vlek=vlek),
            key_ids=False,
        )

    def crl(
        self,
        *,
        revoked_serials: Iterable[int] = (),
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """The ARK's CRL (AMD KDS `/vcek/v1/<product>/crl`), listing revoked ASK/ASVK serials."""
        this = this_update if this_update is not None else self.now - timedelta(days=1)
        nxt = next_update if next_update is not None else self.now + timedelta(days=30)
        return crl(self.ark, revoked_serials=revoked_serials, this_update=this, next_update=nxt)


def _rsa_pub(issuer: Issuer) -> rsa.RSAPublicKey:
    pub = issuer.key.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    return pub
