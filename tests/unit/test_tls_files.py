"""The server's TLS files: anything unusable (an encrypted key, a certificate cryptography cannot read,
a key of another certificate) stops the start with SERVER_CONFIG_INVALID and says which files."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kms.errors import KmsError
from kms.server.tls import ReloadingCertificate


def _pair() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sovereign test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _write(tmp_path: Path, key_pem: bytes, cert_pem: bytes) -> tuple[Path, Path]:
    (tmp_path / "server.pem").write_bytes(cert_pem)
    (tmp_path / "server-key.pem").write_bytes(key_pem)
    return tmp_path / "server.pem", tmp_path / "server-key.pem"


def _refused(cert: Path, key: Path) -> KmsError:
    with pytest.raises(KmsError) as info:
        ReloadingCertificate(cert, key)
    assert info.value.code.value == "SERVER_CONFIG_INVALID" and str(cert) in info.value.message
    return info.value


def test_a_usable_pair_loads(tmp_path: Path) -> None:
    key, cert_pem = _pair()
    plain = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ReloadingCertificate(*_write(tmp_path, plain, cert_pem)).credentials()


def test_an_encrypted_key_is_a_config_error(tmp_path: Path) -> None:
    key, cert_pem = _pair()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"not-for-logs"),
    )
    err = _refused(*_write(tmp_path, encrypted, cert_pem))
    assert "not-for-logs" not in err.message and "encrypted" in err.message


def test_a_certificate_with_an_invalid_version_is_a_config_error(tmp_path: Path) -> None:
    key, cert_pem = _pair()
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    assert der.count(bytes.fromhex("a003020102")) == 1
    broken = der.replace(bytes.fromhex("a003020102"), bytes.fromhex("a00302010a"))
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(broken) + b"-----END CERTIFICATE-----\n"
    plain = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _refused(*_write(tmp_path, plain, pem))
