"""Minting SEV-SNP reports with VCEK/VLEK endorsements under simulated AMD roots."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from attestation.claims import SnpTcb
from attestation.simulate._certs import Window, serial_of
from attestation.simulate.amd import CHIP_ID_SIZE, PRODUCTS, AmdProductCa, as_tcb, check_product
from attestation.simulate.faults import SNP_FAULTS, Fault, check_faults
from attestation.simulate.snp_report import (
    DEFAULT_POLICY,
    POLICY_DEBUG,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    SnpReportFields,
    encode_body,
    sign_report,
)

SigningKeyKind = Literal["vcek", "vlek"]


@dataclass(frozen=True, eq=False)
class MintedSnp:
    """A signed report and its endorsements. ``collateral`` fits ``SnpCollateral.from_der(**...)``
    and already reflects the faults (e.g. a CRL revoking the ASK)."""

    report: bytes
    leaf_der: bytes
    chain_der: list[bytes]
    product: str
    chip_id: bytes
    tcb: SnpTcb
    faults: frozenset[Fault]
    collateral: dict[str, list[bytes]] = field(repr=False)

    @property
    def endorsements(self) -> tuple[bytes, ...]:
        """Leaf, ASK/ASVK, ARK: what a guest hands over with its report (e.g. from SNP extended reports)."""
        return (self.leaf_der, *self.chain_der)


def default_chip_id(product: str) -> bytes:
    """A stable, obviously synthetic chip id (64 bytes; Turin uses 8)."""
    return hashlib.sha512(f"sovereign simulated {product} chip".encode()).digest()[: CHIP_ID_SIZE[product]]


def _report_chip_id(product: str, chip_id: bytes) -> bytes:
    size = CHIP_ID_SIZE[product]
    if len(chip_id) != size and not (len(chip_id) == 64 and not any(chip_id[size:])):
        raise ValueError(f"{product} chip id must be {size} bytes")
    return chip_id[:size].ljust(64, b"\0")


class SnpMinting:
    """The SEV-SNP half of ``SimulatedPki``: AMD CAs per product, VCEK/VLEK leaves, reports."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._amd_cas: dict[tuple[str, bool], AmdProductCa] = {}
        self._leaf_keys: dict[tuple[Any, ...], ec.EllipticCurvePrivateKey] = {}
        self._leaves: dict[tuple[Any, ...], bytes] = {}
        self._good_leaves: list[bytes] = []

    def amd_ca(self, product: str, *, foreign: bool = False) -> AmdProductCa:
        """The product's AMD CA (``foreign``: a same-named hierarchy under an unpinned ARK)."""
        check_product(product)
        if (product, foreign) not in self._amd_cas:
            self._amd_cas[(product, foreign)] = AmdProductCa.generate(product, self.now)
        return self._amd_cas[(product, foreign)]

    def amd_arks(self) -> dict[str, bytes]:
        return {p: self.amd_ca(p).ark_der for p in PRODUCTS}

    def _leaf(
        self, product: str, *, vlek: bool, chip: bytes, tcb: SnpTcb, faults: frozenset[Fault]
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes, AmdProductCa]:
        """The signing key, its VCEK/VLEK certificate (as the faults shape it) and the issuing CA."""
        foreign = Fault.FOREIGN_CHAIN in faults
        ca = self.amd_ca(product, foreign=foreign)
        # One key per chip (or per VLEK) and TCB, like AMD's KDS; only the certificate varies by fault.
        key_id = (product, foreign, vlek, b"" if vlek else chip, tcb)
        if key_id not in self._leaf_keys:
            self._leaf_keys[key_id] = ec.generate_private_key(ec.SECP384R1())
        cert_tcb = replace(tcb, snp=(tcb.snp + 1) & 0xFF) if Fault.TCB_MISMATCH in faults else tcb
        hw_id = None if vlek else chip
        if Fault.CHIP_ID_MISMATCH in faults and hw_id is not None:
            hw_id = bytes([hw_id[0] ^ 0xFF]) + hw_id[1:]
        expired = Fault.EXPIRED_CERT in faults
        window = Window.expired(self.now) if expired else Window.around(self.now, days=7 * 365)
        cert_id = (*key_id, cert_tcb, hw_id, window)
        if cert_id not in self._leaves:
            self._leaves[cert_id] = ca.leaf(
                self._leaf_keys[key_id], tcb=cert_tcb, hw_id=hw_id, vlek=vlek, window=window
            )
        return self._leaf_keys[key_id], self._leaves[cert_id], ca

    def mint_snp_report(
        self,
        *,
        product: str = "Milan",
        version: int = 3,
        measurement: bytes = bytes(48),
        report_data: bytes = bytes(64),
        host_data: bytes = bytes(32),
        policy: int = DEFAULT_POLICY,
        debug: bool = False,
        vmpl: int = 0,
        tcb: SnpTcb | Mapping[str, int] | None = None,
        chip_id: bytes | None = None,
        signing_key: SigningKeyKind = "vcek",
        guest_svn: int = 0,
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
        faults: Iterable[Fault] = (),
    ) -> MintedSnp:
        check_product(product)
        chosen = check_faults(faults, SNP_FAULTS, "SEV-SNP")
        if signing_key not in ("vcek", "vlek"):
            raise ValueError("signing_key must be 'vcek' or 'vlek'")
        vlek = signing_key == "vlek"
        if vlek and Fault.CHIP_ID_MISMATCH in chosen:
            raise ValueError("a VLEK has no hwID, so CHIP_ID_MISMATCH does not apply")
        the_tcb = as_tcb(product, tcb)
        if chip_id is None:
            chip_id = bytes(CHIP_ID_SIZE[product]) if vlek else default_chip_id(product)
        report_chip = _report_chip_id(product, chip_id)
        chip = report_chip[: CHIP_ID_SIZE[product]]

        key, leaf, ca = self._leaf(product, vlek=vlek, chip=chip, tcb=the_tcb, faults=chosen)
        fields = SnpReportFields(
            product=product,
            version=version,
            policy=policy | POLICY_DEBUG if debug else policy,
            vmpl=vmpl,
            measurement=measurement,
            report_data=report_data,
            host_data=host_data,
            chip_id=report_chip,
            tcb=the_tcb,
            signing_key=SIGNING_KEY_VLEK if vlek else SIGNING_KEY_VCEK,
            guest_svn=guest_svn,
            family_id=family_id,
            image_id=image_id,
            report_id=secrets.token_bytes(32),
        )
        report = bytearray(sign_report(encode_body(fields), key))
        if Fault.BAD_SIGNATURE in chosen:
            report[0x2A0] ^= 0x01  # R, least significant byte

        _, intermediate = ca.signer(vlek=vlek)
        chain = [intermediate, ca.ark_der]
        revoked = [serial_of(intermediate)] if Fault.REVOKED in chosen else []
        if not chosen and leaf not in self._good_leaves:
            self._good_leaves.append(leaf)
        return MintedSnp(
            report=bytes(report),
            leaf_der=leaf,
            chain_der=chain,
            product=product,
            chip_id=chip,
            tcb=the_tcb,
            faults=chosen,
            collateral={"certs": [leaf, *chain], "crls": [self._crl(ca, revoked, chosen)]},
        )

    def _crl(self, ca: AmdProductCa, revoked: list[int], faults: frozenset[Fault]) -> bytes:
        if Fault.EXPIRED_COLLATERAL in faults:
            return ca.crl(
                revoked_serials=revoked,
                this_update=self.now - timedelta(days=60),
                next_update=self.now - timedelta(days=30),
            )
        return ca.crl(revoked_serials=revoked)

    def snp_collateral_items(self) -> dict[str, list[bytes]]:
        """For ``SnpCollateral.from_der(**items)``: every genuine (non-foreign) AMD certificate made so
        far, leaves of fault-free mints included, and a current, empty ARK CRL for every product (a
        current CRL is required, so a site made from these verifies any product's simulated nodes)."""
        cas = [self.amd_ca(product) for product in PRODUCTS]
        certs = [*self._good_leaves]
        for ca in cas:
            certs.extend([*ca.intermediates(), ca.ark_der])
        return {"certs": certs, "crls": [ca.crl() for ca in cas]}

    def amd_crl(
        self,
        product: str,
        *,
        revoked_serials: Iterable[int] = (),
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """The product ARK's CRL (revoked ASK/ASVK serials)."""
        return self.amd_ca(product).crl(
            revoked_serials=revoked_serials, this_update=this_update, next_update=next_update
        )
