"""A call that never reaches the control plane's services is a coded error with a hint, in the operator
CLI (a subprocess, as users run it) and in the node client: connection refused, a CA file that is not PEM,
a server certificate from another CA, a plaintext port, and the wrong port (UNIMPLEMENTED). gRPC's C-core
log lines never reach the terminal.

The server is a real gRPC server with TLS that serves only the health service, like the node port does
for operator calls."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2_grpc

from enclave.client import ControlPlaneClient, ControlPlaneError
from enclave.errors import NodeCode
from kms.oidc.cache import CachedToken, save_token

# glog-style lines of gRPC's C core: "E1203 11:45:52.396983   19103 ssl_transport_security.cc:1517] ..."
C_CORE_LINE = re.compile(r"^[EWIF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]", re.MULTILINE)


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class World:
    tls: str  # TLS port serving health only
    plain: str  # plaintext port
    closed: str  # nothing listens
    ca: Path
    other_ca: Path
    not_pem: Path
    cache: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("transport")
    cert, key = _self_signed("server")
    other, _ = _self_signed("someone-else")
    (tmp / "ca.pem").write_bytes(cert)
    (tmp / "other.pem").write_bytes(other)
    (tmp / "not-pem.pem").write_text("this is not a certificate\n")
    now = datetime.now(UTC)
    cache = tmp / "token.json"
    save_token(CachedToken("http://idp.invalid/", "r", "c", "a.b.c", now + timedelta(hours=1), now), cache)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    tls = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    plain = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield World(
            f"127.0.0.1:{tls}",
            f"127.0.0.1:{plain}",
            f"127.0.0.1:{_free_port()}",
            tmp / "ca.pem",
            tmp / "other.pem",
            tmp / "not-pem.pem",
            cache,
        )
    finally:
        server.stop(None)


def _cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "SOVEREIGN_"))}
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args, "--token-cache", str(world.cache)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("server", "ca", "code", "hint_says"),
    [
        ("closed", "ca", "SERVER_UNREACHABLE", "--admin-listen"),
        ("tls", "not_pem", "TLS_CA_INVALID", "PEM"),
        ("tls", "other_ca", "TLS_UNTRUSTED", "--tls-ca"),
        ("plain", "ca", "TLS_NOT_SPOKEN", "--insecure"),
        ("tls", "ca", "WRONG_ENDPOINT", "--admin-listen"),
    ],
)
def test_operator_cli_transport_failures_are_coded_with_a_hint(
    world: World, server: str, ca: str, code: str, hint_says: str
) -> None:
    target, ca_file = getattr(world, server), getattr(world, ca)
    done = _cli(world, "admin", "nodes", "list", "--server", target, "--ca", str(ca_file))
    assert done.returncode == 1, done.stderr
    assert f"error: {code}: " in done.stderr
    hint = next(line for line in done.stderr.splitlines() if line.startswith("hint: "))
    assert hint_says in hint
    assert not C_CORE_LINE.search(done.stderr), done.stderr
    assert "ssl_transport_security" not in done.stderr and "Traceback" not in done.stderr


def test_the_audit_commands_read_the_same_way(world: World) -> None:
    done = _cli(world, "audit", "tail", "--server", world.tls, "--ca", str(world.other_ca), "--json")
    assert done.returncode == 1
    assert '"code": "TLS_UNTRUSTED"' in done.stdout
    assert not C_CORE_LINE.search(done.stderr), done.stderr


def test_the_node_client_shares_the_reading(world: World) -> None:
    unimplemented = ControlPlaneClient(world.tls, ca_pem=world.ca.read_bytes(), timeout=20)
    with pytest.raises(ControlPlaneError) as wrong:
        unimplemented.challenge("trainer-1")
    assert wrong.value.code is NodeCode.REQUEST_REFUSED
    assert wrong.value.metadata["transport"] == "WRONG_ENDPOINT"
    assert wrong.value.hint and "--listen" in wrong.value.hint
    untrusted = ControlPlaneClient(world.tls, ca_pem=world.other_ca.read_bytes(), timeout=20)
    with pytest.raises(ControlPlaneError) as tls:
        untrusted.challenge("trainer-1")
    assert tls.value.code is NodeCode.CONTROL_PLANE_UNAVAILABLE
    assert tls.value.metadata["transport"] == "TLS_UNTRUSTED" and tls.value.hint
    closed = ControlPlaneClient(world.closed, ca_pem=world.ca.read_bytes(), timeout=20)
    with pytest.raises(ControlPlaneError) as down:
        closed.challenge("trainer-1")
    assert down.value.metadata["transport"] == "SERVER_UNREACHABLE"
    assert "connection refused" in down.value.message
