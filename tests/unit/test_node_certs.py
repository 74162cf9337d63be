"""Node client certificates: the TLS key proof, what a certificate names, and the peer check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kms.errors import KmsError
from kms.server.node_certs import NodeCa, check_tls_key, identity_of, peer_identity
from kms.usecases.release import check_client_certificate
from proto.contract import tls_key_proof_message

NOW = datetime(2025, 6, 1, tzinfo=UTC)
NONCE = b"\x07" * 32


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed(nonce: bytes = NONCE) -> tuple[ed25519.Ed25519PrivateKey, bytes, bytes, bytes]:
    node = ed25519.Ed25519PrivateKey.generate()
    public = node.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    spki = _spki(ec.generate_private_key(ec.SECP256R1()))
    return node, public, spki, node.sign(tls_key_proof_message(nonce, spki))


def test_a_proven_key_is_accepted_and_certified(tmp_path: Path) -> None:
    _, public, spki, signature = _signed()
    key = check_tls_key(public, NONCE, spki, signature)
    ca = NodeCa.load_or_create(tmp_path / "ca", NOW)
    der = ca.issue("n-1", public, key, now=NOW, not_after=NOW + timedelta(hours=1))
    cert = x509.load_der_x509_certificate(der)
    cert.verify_directly_issued_by(ca.cert)
    assert identity_of(cert).node_id == "n-1" and identity_of(cert).signing_public == public
    assert cert.not_valid_after_utc == NOW + timedelta(hours=1)
    assert NodeCa.load_or_create(tmp_path / "ca", NOW).cert == ca.cert  # kept, not remade
    assert oct((tmp_path / "ca" / "node-ca-key.pem").stat().st_mode & 0o777) == "0o600"
    peer = peer_identity({"x509_pem_cert": [cert.public_bytes(serialization.Encoding.PEM)]})
    assert check_client_certificate(peer, "n-1", public) is None
    other = check_client_certificate(peer, "n-2", public)
    assert other is not None and other.code == "RELEASE_CLIENT_CERT_MISMATCH"
    keys = check_client_certificate(peer, "n-1", b"\x01" * 32)
    assert keys is not None and keys.code == "RELEASE_CLIENT_CERT_MISMATCH"


@pytest.mark.parametrize("fault", ["other-nonce", "other-signer", "rsa-key", "truncated"])
def test_an_unproven_key_is_refused(fault: str) -> None:
    _, public, spki, signature = _signed()
    if fault == "other-nonce":
        signature = _signed(b"\x08" * 32)[3]
    elif fault == "other-signer":
        public = _signed()[1]
    elif fault == "rsa-key":
        spki = bytes.fromhex("3018300d06092a864886f70d0101010500030700300402010302")  # not P-256
    else:
        spki = spki[:-1]
    with pytest.raises(KmsError) as refused:
        check_tls_key(public, NONCE, spki, signature)
    assert refused.value.code.value == "NODE_TLS_KEY_INVALID"


def test_no_certificate_is_unauthenticated() -> None:
    with pytest.raises(KmsError) as missing:
        peer_identity({})
    assert missing.value.code.value == "RELEASE_CLIENT_CERT_MISSING"
