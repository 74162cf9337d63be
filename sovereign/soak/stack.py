"""The real stack a soak runs against, on loopback: OpenBao with integrated storage (raft, one member, so
it can be sealed, killed and restarted on its data), the real ``sovereign serve`` process on SQLite with
its folder on a small tmpfs (so the ledger's filesystem can be filled), and an operators' realm whose
signing key is made here and handed to the server as a JWKS file (the air-gapped set-up; no identity
provider process).

Built from the demo's pieces (``sovereign.demo.site``): the same inputs, bootstrap and process launcher.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import hvac
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from kms.audit.checkpoint import AuditKeys, load_audit_keys
from kms.domain.transit import AUDIT_KEY_NAME
from kms.openbao.bootstrap import bootstrap
from sovereign.demo.site import Bao, ControlPlane, Inputs, prepare_inputs
from sovereign.devtools.openbao_server import OpenBaoServer

REALM_ROLES = {
    "alice": ["sovereign-admin", "sovereign-key-custodian"],
    "bob": ["sovereign-admin", "sovereign-key-custodian"],
    "carol": ["sovereign-auditor"],
}
CLIENT_ID = "sovereign"
TOKEN_LIFETIME = timedelta(minutes=5)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OfflineRealm:
    """A realm signing key made here; the server gets its public half as a JWKS file."""

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
        self.jwks_file = directory / "realm-jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}))

    def __repr__(self) -> str:
        return f"OfflineRealm(issuer={self.issuer!r})"

    def token(self, username: str, now: datetime) -> str:
        claims = {
            "iss": self.issuer, "sub": f"sub-{username}", "aud": "account", "azp": CLIENT_ID, "typ": "Bearer",
            "exp": int((now + TOKEN_LIFETIME).timestamp()), "iat": int(now.timestamp()),
            "jti": secrets.token_hex(8), "preferred_username": username,
            "realm_access": {"roles": REALM_ROLES[username]},
        }  # fmt: skip
        header = {"alg": "RS256", "typ": "JWT", "kid": self._kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


class MountError(RuntimeError):
    pass


def mount_tmpfs(path: Path, size_mib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise MountError(
            f"cannot mount a {size_mib} MiB tmpfs at {path} for the ledger's folder "
            f"({done.stderr.strip() or done.returncode}); the disk-full fault needs root (CAP_SYS_ADMIN)"
        )


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@dataclass
class Stack:
    """Everything under ``workdir``; ``close()`` stops the processes and unmounts the tmpfs."""

    workdir: Path
    db_fs_mib: int = 64
    pki: SimulatedPki = field(init=False)
    gpus: GpuSimulator = field(init=False)  # the simulated NVIDIA roots, pinned; GPU nodes' devices
    inputs: Inputs = field(init=False)
    bao: Bao = field(init=False)
    realm: OfflineRealm = field(init=False)
    plane: ControlPlane = field(init=False)
    ca: bytes = b""
    mounted: bool = False

    @property
    def plane_dir(self) -> Path:
        """The serve process's folder (SQLite database with the ledger, TLS, node CA): the tmpfs."""
        return self.workdir / "plane"

    def start(self) -> Stack:
        now = datetime.now(UTC)
        self.pki = SimulatedPki.generate(now)
        self.gpus = GpuSimulator(now)
        self.inputs = prepare_inputs(self.workdir / "site", self.pki, now, gpus=self.gpus)
        self.realm = OfflineRealm(self.workdir / "realm")
        server = OpenBaoServer.raft(self.workdir / "bao")
        try:
            self.bao = Bao(server, bootstrap(server.addr, server.root_token or "", self.workdir / "approle"))
        except BaseException:
            server.stop()
            raise
        mount_tmpfs(self.plane_dir, self.db_fs_mib)
        self.mounted = True
        self.clock_file(0).write_text("0\n")
        jwks = ["--oidc-jwks-file", str(self.realm.jwks_file), "--dev-clock-file", str(self.clock_file(0))]
        self.plane = ControlPlane(
            self.plane_dir,
            self.inputs,
            self.bao,
            self.realm.issuer,
            extra=jwks,
            cwd=self.workdir / "cores" / "serve-0",
        )
        self.plane.start(timeout=60)
        assert self.plane.ca is not None
        self.ca = self.plane.ca.read_bytes()
        return self

    # -- what the workload and the driver ask of a stack (the replicas' stack answers the same)

    replicas = 1

    @property
    def planes(self) -> list[ControlPlane]:
        return [self.plane]

    def clock_file(self, i: int) -> Path:
        return self.workdir / "clock-0"

    def node_target(self, i: int) -> str:
        return self.plane.target

    @property
    def bao_addr(self) -> str:
        return self.bao.server.addr

    @property
    def root_token(self) -> str:
        return self.bao.server.root_token or ""

    @property
    def db_target(self) -> str:
        return str(self.plane.db)

    def bao_audit_lines(self) -> list[bytes]:
        log = self.bao.server.audit_log
        return log.read_bytes().splitlines(keepends=True) if log is not None and log.exists() else []

    def scan_roots(self) -> list[Path]:
        return [self.workdir]

    def root_client(self) -> hvac.Client:
        return hvac.Client(url=self.bao.server.addr, token=self.bao.server.root_token)

    def audit_keys(self) -> AuditKeys:
        """The public half of the transit audit key: all the offline verifier needs."""
        key = self.root_client().secrets.transit.read_key(AUDIT_KEY_NAME)
        return load_audit_keys(json.dumps(key).encode())

    def operator_channel(self, i: int = 0) -> grpc.Channel:
        """TLS to the operator port, CA pinned; callers send a bearer token per call."""
        return grpc.secure_channel(
            self.plane.admin_target, grpc.ssl_channel_credentials(root_certificates=self.ca)
        )

    def serve_pid(self, i: int = 0) -> int | None:
        proc = self.plane.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self) -> None:
        """Stop serve (SIGTERM) and OpenBao; the tmpfs stays mounted for the key-material scan."""
        try:
            if getattr(self, "plane", None) is not None:
                proc = self.plane.proc
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)  # a stalled process cannot act on SIGTERM
                self.plane.stop()
        finally:
            if getattr(self, "bao", None) is not None:
                self.bao.server.stop()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.mounted:
                unmount(self.plane_dir)
                self.mounted = False


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)
