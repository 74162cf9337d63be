"""Server TLS: certificate reload without restart, and a development CA (``sovereign serve --dev-tls DIR``).

``ReloadingCertificate`` gives gRPC dynamic credentials that look at the certificate and key files at
every new handshake (two ``stat`` calls) and switch to a replaced pair once both files parse and match;
a half-written pair keeps the previous one in use. Connections already open keep their session.

The development CA is made once into DIR (kept if present): ``ca.pem`` (clients pin it), ``server.pem``
and ``server-key.pem`` (0600). The CA key is not kept: nothing else is ever signed with it. Never for
production.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms.errors import Code, KmsError

log = logging.getLogger("sovereign.server")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def dev_tls_files(directory: Path) -> TlsFiles:
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")


def ensure_dev_tls(directory: Path, now: datetime, hosts: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    files = dev_tls_files(directory)
    if files.ca.exists() and files.cert.exists() and files.key.exists():
        return files
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sovereign dev CA (NOT FOR PRODUCTION)")])
    start, end = now - timedelta(minutes=5), now + timedelta(days=365)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sovereign dev server")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), 0o600)  # fmt: skip
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.ca, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def load_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """(key PEM, certificate chain PEM), checked to belong together."""
    key_pem, cert_pem = key.read_bytes(), cert.read_bytes()
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except (TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:  # e.g. an encrypted key
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    if private.public_key() != leaf.public_key():
        raise ValueError("the private key does not belong to the certificate")
    return key_pem, cert_pem


class ReloadingCertificate:
    """Server credentials over a certificate/key file pair that follow replacements of the files.

    ``client_ca`` (PEM) makes the credentials require and verify a client certificate issued by it.
    """

    def __init__(self, cert: Path, key: Path, *, client_ca: bytes | None = None) -> None:
        self.cert, self.key, self._client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        try:
            self._stamps = (_stamp(cert), _stamp(key))
            self._pair = load_pair(cert, key)
        except (OSError, ValueError) as exc:
            raise KmsError(
                f"cannot use TLS files {cert}, {key}: {exc}", code=Code.SERVER_CONFIG_INVALID
            ) from None
        self.reloads = 0

    def _config(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([self._pair], root_certificates=self._client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config(),
            self._fetch,  # type: ignore[arg-type]  # gRPC documents None as "no change"
            require_client_authentication=self._client_ca is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration if the files changed, else None."""
        with self._lock:
            try:
                stamps = (_stamp(self.cert), _stamp(self.key))
                if stamps == self._stamps:
                    return None
                pair = load_pair(self.cert, self.key)
            except (OSError, ValueError) as exc:
                log.warning(
                    "TLS files %s, %s not reloaded (keeping the previous pair): %s", self.cert, self.key, exc
                )
                return None
            self._stamps, self._pair = stamps, pair
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self.cert)
            return self._config()
