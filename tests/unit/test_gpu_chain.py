"""The NVIDIA chain walk on hand-made chains: links, CA flags, critical extensions, pin and windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation.errors import AttestationError, ChainInvalid, Code
from attestation.gpu.chain import ChainCache, verify_chain
from attestation.trust import fingerprint

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def _cert(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *, ca: bool, critical_unknown: bool = False, days: int = 30,
) -> x509.Certificate:  # fmt: skip
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if critical_unknown:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            critical=True,
        )
    return builder.sign(signer, hashes.SHA384())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _chain(**leaf: bool) -> tuple[list[bytes], bytes]:
    root_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = _cert("root", root_key, None, ca=True)
    issued = _cert("leaf", leaf_key, (root.subject, root_key), ca=False, **leaf)
    return [_der(issued), _der(root)], _der(root)


def _pin(root: bytes):  # type: ignore[no-untyped-def]
    def check(der: bytes) -> None:
        if fingerprint(der) != fingerprint(root):
            raise ChainInvalid("not pinned", code=Code.UNTRUSTED_ROOT)

    return check


def _verify(ders: list[bytes], root: bytes, now: datetime = NOW, cache: ChainCache | None = None) -> None:
    verify_chain(
        ders, check_root=_pin(root), now=now, code=Code.GPU_CHAIN_UNTRUSTED,
        expired_code=Code.GPU_CERT_EXPIRED, what="test", cache=cache,
    )  # fmt: skip


def _code(fn) -> Code:  # type: ignore[no-untyped-def]
    with pytest.raises(AttestationError) as info:
        fn()
    return info.value.code


def test_good_chain_and_its_windows() -> None:
    ders, root = _chain()
    cache = ChainCache()
    _verify(ders, root, cache=cache)
    assert _code(lambda: _verify(ders, root, NOW + timedelta(days=90), cache)) == Code.GPU_CERT_EXPIRED
    assert (
        _code(lambda: _verify(ders, _chain()[1], cache=cache)) == Code.GPU_CHAIN_UNTRUSTED
    )  # pin re-checked


def test_unknown_critical_extension_is_refused() -> None:
    ders, root = _chain(critical_unknown=True)
    assert _code(lambda: _verify(ders, root)) == Code.GPU_CHAIN_UNTRUSTED


def test_issuer_must_be_a_ca_and_the_signer() -> None:
    ders, root = _chain()
    other, _ = _chain()
    assert _code(lambda: _verify([other[0], ders[1]], root)) == Code.GPU_CHAIN_UNTRUSTED  # wrong issuer
    assert _code(lambda: _verify([ders[0], ders[0]], ders[0])) == Code.GPU_CHAIN_UNTRUSTED  # leaf as CA
    assert _code(lambda: _verify([], root)) == Code.GPU_CHAIN_UNTRUSTED
    assert _code(lambda: _verify([b"not DER", root], root)) == Code.GPU_CHAIN_UNTRUSTED
