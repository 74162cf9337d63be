"""The node-client CA: short-lived X.509 client certificates for KeyRelease's mutual TLS.

A node that registers or renews ATTESTED gets a certificate for a TLS key it made in the TEE. gRPC's
TLS stack (BoringSSL) refuses Ed25519 client certificates (NO_COMMON_SIGNATURE_ALGORITHMS: it does not
offer Ed25519 for CertificateVerify), so the certificate's key is an ECDSA P-256 key and the binding to
the attested Ed25519 key is twofold: the node signs the P-256 key with its Ed25519 key (checked here
before issuing, over this request's nonce), and the certificate carries the Ed25519 public key in a
non-critical extension (``NODE_KEY_OID``) next to the node id (URI SAN ``urn:sovereign:node:<id>``).
ReleaseKey then requires that the TLS peer's certificate names the node of the signed body and carries
the key that verifies its signature.

The CA (P-256) lives in a directory shared by every replica: ``node-ca.pem`` and ``node-ca-key.pem``
(0600), made on first start. Certificates live at most until the node's lease ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms.errors import Code, KmsError
from proto.contract import tls_key_proof_message

# A private OID under the UUID arc (ITU-T X.667): the node's attested Ed25519 public key (OCTET STRING).
NODE_KEY_OID = x509.ObjectIdentifier("2.25.247961541402307345870436406934516069131")
URI_PREFIX = "urn:sovereign:node:"
NONCE_BYTES = 32
MAX_SPKI = 256
BACKDATE = timedelta(minutes=1)
CA_LIFETIME = timedelta(days=3650)

_CERT_HINT = "register or renew with the node's own client TLS key, then call ReleaseKey over mutual TLS"


def _octet_string(data: bytes) -> bytes:
    assert len(data) < 128
    return bytes((0x04, len(data))) + data


def _from_octet_string(der: bytes) -> bytes:
    if len(der) < 2 or der[0] != 0x04 or der[1] != len(der) - 2 or der[1] >= 128:
        raise ValueError("not a short OCTET STRING")
    return der[2:]


def check_tls_key(
    signing_public: bytes, nonce: bytes, spki: bytes, signature: bytes
) -> ec.EllipticCurvePublicKey:
    """The node's P-256 TLS key, if its Ed25519 key signed it for this nonce; NODE_TLS_KEY_INVALID otherwise."""

    def bad(what: str) -> KmsError:
        return KmsError(
            f"client_tls_key: {what}",
            code=Code.NODE_TLS_KEY_INVALID,
            hint="send an ECDSA P-256 SubjectPublicKeyInfo signed by the node's Ed25519 key over this nonce",
        )

    if len(nonce) != NONCE_BYTES or not 0 < len(spki) <= MAX_SPKI:
        raise bad("the public key or nonce has the wrong size")
    try:
        key = serialization.load_der_public_key(spki)
    except ValueError:
        raise bad("the public key is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise bad("the public key is not ECDSA P-256")
    if key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != spki:
        raise bad("the public key is not in canonical DER")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(signing_public).verify(
            signature, tls_key_proof_message(nonce, spki)
        )
    except (InvalidSignature, ValueError):
        raise bad("the signature does not verify with the node's attested Ed25519 key") from None
    return key


@dataclass(frozen=True)
class PeerIdentity:
    """Who a verified client certificate names."""

    node_id: str
    signing_public: bytes


def identity_of(cert: x509.Certificate) -> PeerIdentity:
    """Node id and Ed25519 key of a node client certificate; ValueError if it is not one."""
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    ids = [u[len(URI_PREFIX) :] for u in uris if u.startswith(URI_PREFIX)]
    if len(ids) != 1 or not ids[0]:
        raise ValueError("no single node id")
    ext = cert.extensions.get_extension_for_oid(NODE_KEY_OID).value
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ValueError("node key extension")
    key = _from_octet_string(ext.value)
    if len(key) != 32:
        raise ValueError("node key size")
    return PeerIdentity(ids[0], key)


def peer_identity(auth_context: Any) -> PeerIdentity:
    """The node named by the TLS peer's certificate (already verified against the node CA by TLS)."""
    pems = (auth_context or {}).get("x509_pem_cert") or []
    if not pems:
        raise KmsError(
            "the call did not present a node client certificate",
            code=Code.RELEASE_CLIENT_CERT_MISSING,
            hint=_CERT_HINT,
        )
    try:
        return identity_of(x509.load_pem_x509_certificate(pems[0]))
    except (ValueError, x509.InvalidVersion, x509.ExtensionNotFound):
        raise KmsError(
            "the client certificate is not a node client certificate",
            code=Code.RELEASE_CLIENT_CERT_MISSING,
            hint=_CERT_HINT,
        ) from None


class NodeCa:
    """Issues node client certificates; the CA files are made on first use."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self._key = key

    def __repr__(self) -> str:
        return f"NodeCa(subject={self.cert.subject.rfc4514_string()!r})"

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, directory: Path, now: datetime) -> NodeCa:
        cert_path, key_path = directory / "node-ca.pem", directory / "node-ca-key.pem"
        if not key_path.exists():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create(cert_path, key_path, now)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, x509.InvalidVersion) as exc:
            raise KmsError(
                f"cannot load the node CA from {directory}: {exc}", code=Code.SERVER_CONFIG_INVALID
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise KmsError(
                f"the node CA key in {directory} does not match its certificate",
                code=Code.SERVER_CONFIG_INVALID,
            )
        return cls(cert, key)

    def issue(
        self,
        node_id: str,
        signing_public: bytes,
        tls_key: ec.EllipticCurvePublicKey,
        *,
        now: datetime,
        not_after: datetime,
    ) -> bytes:
        """A client certificate (DER) for ``tls_key`` naming ``node_id`` and its Ed25519 key."""
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(tls_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(not_after, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(URI_PREFIX + node_id)]),
                critical=False,
            )
            .add_extension(
                x509.UnrecognizedExtension(NODE_KEY_OID, _octet_string(signing_public)), critical=False
            )
            .sign(self._key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )


def _create(cert_path: Path, key_path: Path, now: datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sovereign node client CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The certificate first, the key last: a key file is the sign that both are complete.
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(f"{key_path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    os.replace(f"{key_path}.tmp", key_path)
