"""The server's TLS files: anything unusable (an encrypted key, a certificate cryptography cannot read)
stops the start with SERVER_CONFIG_INVALID naming the files, never a traceback."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.errors import KmsError
from kms.server.tls import ReloadingCertificate, TlsFiles, ensure_dev_tls

V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2: X.509 v3
V11 = bytes.fromhex("a00302010a")  # [0] EXPLICIT INTEGER 10: no such version


def _dev(tmp_path: Path) -> TlsFiles:
    return ensure_dev_tls(tmp_path / "tls", datetime.now(UTC))


def _refused(files: TlsFiles) -> KmsError:
    with pytest.raises(KmsError) as info:
        ReloadingCertificate(files.cert, files.key)
    assert info.value.code.value == "SERVER_CONFIG_INVALID" and str(files.cert) in info.value.message
    return info.value


def test_the_dev_pair_loads(tmp_path: Path) -> None:
    files = _dev(tmp_path)
    ReloadingCertificate(files.cert, files.key).credentials()


def test_an_encrypted_key_is_a_config_error(tmp_path: Path) -> None:
    files = _dev(tmp_path)
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"not-for-logs"),
        )
    )
    err = _refused(files)
    assert "not-for-logs" not in err.message and "encrypted" in err.message


def test_a_certificate_with_an_invalid_version_is_a_config_error(tmp_path: Path) -> None:
    files = _dev(tmp_path)
    leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert der.count(V3) == 1
    files.cert.write_bytes(
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(der.replace(V3, V11))
        + b"-----END CERTIFICATE-----\n"
    )
    _refused(files)
