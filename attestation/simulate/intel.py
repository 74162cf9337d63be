"""Simulated Intel SGX/TDX provisioning PKI: Root CA -> PCK Platform CA -> PCK leaf, and TCB Signing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.simulate import _der
from attestation.simulate._certs import (
    Issuer,
    Window,
    ca_extensions,
    crl,
    ec_key,
    intel_name,
    issue,
    self_signed,
    signer_extensions,
)

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
SGX_TYPE_SCALABLE = 1


@dataclass(frozen=True)
class PckTcb:
    """What the PCK certificate's TCB extension states: 16 SGX component SVNs, PCESVN, CPUSVN."""

    sgx_svns: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes

    def __post_init__(self) -> None:
        if len(self.sgx_svns) != 16 or any(not 0 <= v <= 0xFF for v in self.sgx_svns):
            raise ValueError("sgx_comp_svns must be 16 values in 0..255")
        if not 0 <= self.pcesvn <= 0xFFFF:
            raise ValueError("pce_svn must fit in 16 bits")
        if len(self.cpusvn) != 16:
            raise ValueError("cpusvn must be 16 bytes")


def _pair(suffix: str, value: bytes) -> bytes:
    return _der.sequence(_der.oid(f"{SGX_EXTENSION_OID}.{suffix}"), value)


def sgx_extension(
    *, ppid: bytes, tcb: PckTcb, pce_id: bytes, fmspc: bytes, platform_instance_id: bytes
) -> bytes:
    """The SGX extension of a Platform-CA-issued PCK certificate, in Intel's element order."""
    comps = [_pair(f"2.{i + 1}", _der.integer(svn)) for i, svn in enumerate(tcb.sgx_svns)]
    tcb_seq = _der.sequence(
        *comps,
        _pair("2.17", _der.integer(tcb.pcesvn)),
        _pair("2.18", _der.octet_string(tcb.cpusvn)),
    )
    configuration = _der.sequence(
        *(_pair(f"7.{i}", _der.boolean(flag)) for i, flag in ((1, False), (2, False), (3, True)))
    )
    return _der.sequence(
        _pair("1", _der.octet_string(ppid)),
        _pair("2", tcb_seq),
        _pair("3", _der.octet_string(pce_id)),
        _pair("4", _der.octet_string(fmspc)),
        _pair("5", _der.enumerated(SGX_TYPE_SCALABLE)),
        _pair("6", _der.octet_string(platform_instance_id)),
        _pair("7", configuration),
    )


@dataclass(frozen=True)
class IntelCa:
    """Root CA, PCK Platform CA and TCB Signing certificate (all ECDSA P-256, like Intel's)."""

    now: datetime
    root: Issuer
    root_der: bytes
    platform: Issuer
    platform_der: bytes
    tcb_signing: Issuer
    tcb_signing_der: bytes

    @classmethod
    def generate(cls, now: datetime) -> IntelCa:
        root = Issuer(intel_name("Intel SGX Root CA"), ec_key(ec.SECP256R1()))
        root_der = self_signed(root.name, root.key, Window.around(now, days=30 * 365), path_length=1)
        platform, platform_der = _issued(root, "Intel SGX PCK Platform CA", now, ca=True)
        tcb_signing, tcb_signing_der = _issued(root, "Intel SGX TCB Signing", now, ca=False)
        return cls(now, root, root_der, platform, platform_der, tcb_signing, tcb_signing_der)

    def pck(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        tcb: PckTcb,
        fmspc: bytes,
        pce_id: bytes,
        ppid: bytes,
        platform_instance_id: bytes,
        window: Window,
    ) -> bytes:
        ext = sgx_extension(
            ppid=ppid, tcb=tcb, pce_id=pce_id, fmspc=fmspc, platform_instance_id=platform_instance_id
        )
        return issue(
            self.platform,
            subject=intel_name("Intel SGX PCK Certificate"),
            public_key=key.public_key(),
            window=window,
            extensions=[
                *signer_extensions(),
                (x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), ext), False),
            ],
        )

    def pck_crl(
        self,
        *,
        revoked_serials: Iterable[int] = (),
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        return self._crl(self.platform, revoked_serials, this_update, next_update)

    def root_crl(
        self,
        *,
        revoked_serials: Iterable[int] = (),
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        return self._crl(self.root, revoked_serials, this_update, next_update)

    def _crl(
        self,
        issuer: Issuer,
        revoked: Iterable[int],
        this_update: datetime | None,
        next_update: datetime | None,
    ) -> bytes:
        this = this_update if this_update is not None else self.now - timedelta(days=1)
        nxt = next_update if next_update is not None else self.now + timedelta(days=30)
        return crl(issuer, revoked_serials=revoked, this_update=this, next_update=nxt)


def _issued(root: Issuer, name: str, now: datetime, *, ca: bool) -> tuple[Issuer, bytes]:
    issuer = Issuer(intel_name(name), ec_key(ec.SECP256R1()))
    der = issue(
        root,
        subject=issuer.name,
        public_key=issuer.key.public_key(),
        window=Window.around(now, days=15 * 365),
        extensions=ca_extensions(0) if ca else signer_extensions(),
    )
    return issuer, der


def pem_chain(ders: Sequence[bytes]) -> bytes:
    """PEM certificates concatenated, as the quote's type-5 certification data carries them."""
    return b"".join(x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in ders)
