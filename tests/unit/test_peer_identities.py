"""The release servicer's memo of parsed node client certificates: keyed by the exact PEM bytes only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kms.errors import KmsError
from kms.server.node_certs import NodeCa
from kms.server.node_servicers import PeerIdentities

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _pem(ca: NodeCa, node_id: str) -> tuple[bytes, bytes]:
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    tls_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = ca.issue(node_id, public, tls_key, now=NOW, not_after=NOW + timedelta(hours=1))
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM), public


def test_each_certificate_keeps_its_own_identity(tmp_path: Path) -> None:
    ca = NodeCa.load_or_create(tmp_path / "ca", NOW)
    peers = PeerIdentities(max_entries=2)
    certs = [_pem(ca, f"n-{i}") for i in range(3)]  # three certificates: the memo is emptied once
    for _ in range(2):
        for i, (pem, public) in enumerate(certs):
            peer = peers.of({"x509_pem_cert": [pem]})
            assert (peer.node_id, peer.signing_public) == (f"n-{i}", public)


def test_no_or_a_foreign_certificate_is_refused_every_time(tmp_path: Path) -> None:
    peers = PeerIdentities()
    foreign = NodeCa.load_or_create(tmp_path / "ca", NOW).pem  # a CA certificate names no node
    for context in ({}, {"x509_pem_cert": [foreign]}, {}, {"x509_pem_cert": [foreign]}):
        with pytest.raises(KmsError) as refused:
            peers.of(context)
        assert refused.value.code.value == "RELEASE_CLIENT_CERT_MISSING"
