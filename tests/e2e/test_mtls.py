"""Mutual TLS on KeyRelease against the real server: client certificates bound to the attested node,
another node's certificate refused (and recorded), no or foreign certificates refused by TLS, and the
server certificate replaced on disk without a restart."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from e2e.node_client import NodeClient, mtls_channel, pem_key, rpc_error
from e2e.test_operator_auth import audit_rows, wait_audited
from e2e.world import SNP_MEASUREMENT, ServerProcess
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp
from kms.server.node_certs import identity_of
from kms.server.tls import ensure_dev_tls
from proto.sovereign.v1 import common_pb2, key_release_pb2_grpc

SC = grpc.StatusCode


def attested(server: ServerProcess, pki: SimulatedPki, name: str) -> NodeClient:
    node = NodeClient(server.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name=name)
    assert node.register(requested_groups=["trainers"]).state == common_pb2.NODE_STATE_ATTESTED
    return node


@pytest.fixture(scope="module")
def pair(server: ServerProcess, pki: SimulatedPki) -> tuple[NodeClient, NodeClient]:
    return attested(server, pki, "mtls-a"), attested(server, pki, "mtls-b")


def test_the_certificate_names_the_node_and_its_attested_key(pair: tuple[NodeClient, NodeClient]) -> None:
    a, _ = pair
    cert = x509.load_der_x509_certificate(a.client_certificate)
    peer = identity_of(cert)
    assert peer.node_id == a.node_id and peer.signing_public == a.identity.signing_public
    assert cert.public_key() == a.tls_key.public_key()
    assert len(a.release("dataset/train")[0]) == 32


def test_another_nodes_certificate_is_refused_and_recorded(
    server: ServerProcess, pair: tuple[NodeClient, NodeClient]
) -> None:
    a, b = pair
    stolen = mtls_channel(a.release_address, server.ca.read_bytes(), pem_key(a.tls_key), a.client_certificate)  # type: ignore[union-attr]
    before = len(audit_rows(server, "RELEASE_CLIENT_CERT_MISMATCH"))
    status, reason, _ = rpc_error(
        key_release_pb2_grpc.KeyReleaseStub(stolen).ReleaseKey, b.release_request("dataset/train")
    )
    assert (status, reason) == (SC.PERMISSION_DENIED, "RELEASE_CLIENT_CERT_MISMATCH")
    assert len(wait_audited(server, "RELEASE_CLIENT_CERT_MISMATCH", before + 1)) == before + 1
    assert len(b.release("dataset/train")[0]) == 32  # b with its own certificate is fine


@pytest.mark.parametrize("presented", ["none", "foreign-ca"])
def test_release_without_a_node_certificate_fails_the_handshake(
    server: ServerProcess, pair: tuple[NodeClient, NodeClient], presented: str
) -> None:
    a, _ = pair
    ca = server.ca.read_bytes()  # type: ignore[union-attr]
    if presented == "none":
        channel = grpc.secure_channel(a.release_address, grpc.ssl_channel_credentials(root_certificates=ca))
    else:  # a certificate for the same key, from a CA the server does not trust
        own = ensure_dev_tls(server.workdir / "foreign", datetime.now(UTC))
        channel = grpc.secure_channel(
            a.release_address,
            grpc.ssl_channel_credentials(ca, own.key.read_bytes(), own.cert.read_bytes()),
        )
    status, reason, _ = rpc_error(
        key_release_pb2_grpc.KeyReleaseStub(channel).ReleaseKey, a.release_request("dataset/train")
    )
    assert status == SC.UNAVAILABLE and reason == ""


def test_renewal_issues_a_fresh_certificate(pair: tuple[NodeClient, NodeClient]) -> None:
    a, _ = pair
    first = a.client_certificate
    a.tls_key = ec.generate_private_key(ec.SECP256R1())
    assert a.renew().state == common_pb2.NODE_STATE_ATTESTED
    assert a.client_certificate != first
    assert x509.load_der_x509_certificate(a.client_certificate).public_key() == a.tls_key.public_key()
    # the server's cached node record still shows the old lease: it checks again on fresh reads
    assert len(a.release("dataset/train")[0]) == 32


def test_server_certificate_reloads_without_restart(server: ServerProcess, pki: SimulatedPki) -> None:
    fresh = ensure_dev_tls(server.workdir / "tls-next", datetime.now(UTC))
    tls = server.workdir / "tls"
    shutil.copy(fresh.key, tls / "server-key.pem")  # a half-replaced pair keeps the old one in use
    shutil.copy(fresh.cert, tls / "server.pem")
    old_ca, server.ca = server.ca, fresh.ca  # the module's server keeps the new certificate
    assert old_ca is not None
    node = attested(server, pki, "after-reload")  # new connections, pinning the new CA
    assert len(node.release("dataset/train")[0]) == 32  # the KeyRelease port reloaded too
    operators = server.admin_channel("dave")  # the operator port serves the new certificate too
    from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc

    assert admin_pb2_grpc.AdminStub(operators).GetPolicy(admin_pb2.GetPolicyRequest()).version >= 1
    stale = grpc.secure_channel(
        f"127.0.0.1:{server.port}", grpc.ssl_channel_credentials(root_certificates=old_ca.read_bytes())
    )
    with pytest.raises(grpc.RpcError) as refused:
        HealthStub(stale).Check(HealthCheckRequest(), timeout=5)
    assert refused.value.code() == SC.UNAVAILABLE
