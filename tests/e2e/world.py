"""Everything a real ``sovereign serve`` process needs, made in a temp dir: a simulated PKI's trust
profile and collateral store, a policy, a bootstrapped OpenBao dev server, the operators' realm; and the
process itself.

The realm is anything with ``issuer``, ``jwks_file`` and ``token(username)``: the Keycloak stand-in
(``e2e.operators.StandinRealm``, what the e2e tests use) or ``OfflineRealm`` below (a realm key made
here and handed to the server as a JWKS file, the air-gapped set-up; for the network-namespace test,
where no identity provider runs). Users and roles follow deploy/dev-realm/keycloak_standin.mjs."""

from __future__ import annotations

import base64
import json
import re
import secrets
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attestation.simulate import SimulatedPki
from sovereign.demo.site import (  # noqa: F401 (re-exported to the tests)
    SNP_MEASUREMENT,
    TDX_MRTD,
    Bao,
    Inputs,
    launch_serve,
    prepare_inputs,
    start_bao,
    stop_process,
    wait_for_line,
)
from sovereign.devtools.openbao_server import free_port

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"dataset/train": "dataset", "dataset/other": "dataset", "model/main": "model"}

# Single-segment names from before keys could have '/' segments; tests/e2e/test_node_agent.py uses them.
LEGACY_KEYS = {"ds-train": "dataset", "ds-other": "dataset", "model-main": "model"}


def server_policy() -> str:
    """The shipped demo policy (admits the simulator's demo images, grants dataset/* and model/*), its
    rules widened to the legacy single-segment names."""
    demo = (ROOT / "policies" / "defaults" / "demo.toml").read_text()
    return demo.replace('keys = ["dataset/*"]', 'keys = ["dataset/*", "ds-train", "ds-other"]').replace(
        'keys = ["model/*"]', 'keys = ["model/*", "model-main"]'
    )


def prepare(workdir: Path, pki: SimulatedPki, now: datetime) -> Inputs:
    """The demo site's inputs (``sovereign.demo.site``) with the widened test policy."""
    return prepare_inputs(workdir, pki, now, server_policy())


REALM_ROLES = {
    "alice": ["sovereign-admin", "sovereign-key-custodian"],
    "bob": ["sovereign-admin", "sovereign-key-custodian"],
    "carol": ["sovereign-auditor"],
    "dave": ["sovereign-operator"],
    "erin": [],
}
ADMIN_USER = "alice"  # admin + key custodian: what the fixtures use for set-up
CLIENT_ID = "sovereign"


class Realm(Protocol):
    @property
    def issuer(self) -> str: ...

    @property
    def jwks_file(self) -> Path | None: ...

    def token(self, username: str) -> str: ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OfflineRealm:
    """A realm signing key made here; the server gets its JWKS as a file (no identity provider)."""

    def __init__(self, directory: Path, issuer: str = "https://keycloak.invalid/realms/sovereign") -> None:
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(8)
        numbers = self._key.public_key().public_numbers()
        jwk = {
            "kty": "RSA", "kid": self._kid, "alg": "RS256", "use": "sig",
            "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64(numbers.e.to_bytes(3, "big")),
        }  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        self.jwks_file: Path | None = directory / "realm-jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}))

    def token(self, username: str) -> str:
        now = datetime.now(UTC)
        claims = {
            "iss": self.issuer, "sub": f"sub-{username}", "aud": "account", "azp": CLIENT_ID, "typ": "Bearer",
            "exp": int((now + timedelta(minutes=5)).timestamp()), "iat": int(now.timestamp()),
            "jti": secrets.token_hex(8), "preferred_username": username,
            "realm_access": {"roles": REALM_ROLES[username]},
        }  # fmt: skip
        header = {"alg": "RS256", "typ": "JWT", "kid": self._kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


@dataclass
class ServerProcess:
    workdir: Path
    inputs: Inputs
    bao: Bao
    realm: Realm | None = None  # None: an OfflineRealm in workdir/realm, made by command()
    extra: list[str] = field(default_factory=list)
    db_url: str = ""  # a database URL (PostgreSQL) instead of workdir/sovereign.db
    bao_addrs: str = ""  # a comma-separated OpenBao member list instead of the bao server's address
    port: int = 0
    release_port: int = 0
    admin_port: int = 0
    metrics_port: int = 0
    # Off by default: tests and benchmarks register hundreds of nodes from the one loopback address.
    node_rate_limit: float = 0.0
    ca: Path | None = None
    output: list[str] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.workdir / "sovereign.db"

    def operators(self) -> Realm:
        if self.realm is None:
            self.realm = OfflineRealm(self.workdir / "realm")
        return self.realm

    @property
    def node_ca(self) -> Path:
        return self.workdir / "node-ca"

    def command(self) -> list[str]:
        self.port = self.port or free_port()
        self.release_port = self.release_port or free_port()
        self.admin_port = self.admin_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        realm = self.operators()
        jwks = ["--oidc-jwks-file", str(realm.jwks_file)] if realm.jwks_file else []
        return [
            sys.executable, "-m", "sovereign", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--release-listen", f"127.0.0.1:{self.release_port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--node-ca-dir", str(self.node_ca),
            "--oidc-issuer", realm.issuer,
            *jwks,
            "--dev-tls", str(self.workdir / "tls"),
            "--db", self.db_url or str(self.db),
            "--collateral", str(self.inputs.collateral),
            "--policy", str(self.inputs.policy),
            "--trust", str(self.inputs.trust),
            "--dev-trust",
            "--bao-addr", self.bao_addrs or self.bao.server.addr,
            "--bao-role-id", self.bao.report.role_id,
            "--bao-secret-id-file", self.bao.report.secret_id_file,
            "--nonce-ttl", "3",
            "--metrics-port", str(self.metrics_port),
            "--node-rate-limit", str(self.node_rate_limit),
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.proc, self.ca = launch_serve(self.command(), self.output, timeout=timeout, cwd=ROOT)
        assert any(re.match(r"listening on 127\.0\.0\.1:\d+ \(TLS\)", line) for line in self.output)
        return self

    def announced(self, prefix: str, timeout: float = 15.0) -> str:
        """The address serve printed on its line starting with ``prefix`` (e.g. ``console on``), waited for."""
        return wait_for_line(self.output, prefix, timeout).split()[-1]

    def channel(self) -> grpc.Channel:
        assert self.ca is not None
        ca = self.ca.read_bytes()
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.port}", grpc.ssl_channel_credentials(root_certificates=ca)
        )
        channel.sovereign_ca = ca  # type: ignore[attr-defined]  # e2e.node_client pins it for KeyRelease
        return channel

    def operator_channel(self, token: str | None) -> grpc.Channel:
        """TLS to the operator port (CA pinned), sending ``token`` as the bearer token if given."""
        assert self.ca is not None
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        if token is not None:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(f"127.0.0.1:{self.admin_port}", creds)

    def admin_channel(self, username: str = ADMIN_USER) -> grpc.Channel:
        """An operator channel signed in as ``username`` (default: admin + key custodian)."""
        return self.operator_channel(self.operators().token(username))

    def stop(self) -> int | None:
        return stop_process(getattr(self, "proc", None))
