"""Everything a real ``sovereign serve`` process needs, made in a temp dir: a simulated PKI's trust
profile and collateral store, a policy, a bootstrapped OpenBao dev server; and the process itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc

from attestation.collateral import CollateralItem, ItemKind
from attestation.simulate import SimulatedPki
from attestation.store import CollateralStore
from kms.bootstrap import BootstrapReport, bootstrap
from kms.openbao_server import OpenBaoServer, free_port
from sovereign.cli._common import dump_trust

ROOT = Path(__file__).resolve().parents[2]
SNP_MEASUREMENT = b"\x11" * 48  # what the demo policy's trainers group admits
TDX_MRTD = b"\x22" * 48
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


_KINDS = {
    "certs": ItemKind.CERTIFICATE,
    "crls": ItemKind.CRL,
    "tcb_infos": ItemKind.TDX_TCB_INFO,
    "qe_identities": ItemKind.TDX_QE_IDENTITY,
}


@dataclass(frozen=True)
class Inputs:
    trust: Path
    collateral: Path
    policy: Path


def prepare(workdir: Path, pki: SimulatedPki, now: datetime) -> Inputs:
    workdir.mkdir(parents=True, exist_ok=True)
    pki.mint_snp_report(measurement=SNP_MEASUREMENT)  # makes the AMD CA whose CRL goes in the store
    items = [
        (CollateralItem(_KINDS[kind], data), "simulator")
        for group in (pki.snp_collateral_items(), pki.tdx_collateral_items())
        for kind, values in group.items()
        for data in values
    ]
    store = CollateralStore(workdir / "collateral")
    store.import_items(items, trust=pki.trust_store(), now=now)
    trust = workdir / "trust.json"
    trust.write_text(dump_trust(pki.trust_store()))
    policy = workdir / "policy.toml"
    policy.write_text(server_policy())
    return Inputs(trust, workdir / "collateral", policy)


@dataclass
class Bao:
    server: OpenBaoServer
    report: BootstrapReport


def start_bao(workdir: Path) -> Bao:
    server = OpenBaoServer.dev(workdir / "bao")
    try:
        return Bao(server, bootstrap(server.addr, server.root_token or "", workdir / "approle"))
    except BaseException:
        server.stop()
        raise


@dataclass
class ServerProcess:
    workdir: Path
    inputs: Inputs
    bao: Bao
    extra: list[str] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    ca: Path | None = None
    output: list[str] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.workdir / "sovereign.db"

    @property
    def admin_socket(self) -> Path:
        return self.workdir / "run" / "admin.sock"

    def command(self) -> list[str]:
        self.port = self.port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        return [
            sys.executable, "-m", "sovereign", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--dev-tls", str(self.workdir / "tls"),
            "--admin-socket", str(self.admin_socket),
            "--db", str(self.db),
            "--collateral", str(self.inputs.collateral),
            "--policy", str(self.inputs.policy),
            "--trust", str(self.inputs.trust),
            "--bao-addr", self.bao.server.addr,
            "--bao-role-id", self.bao.report.role_id,
            "--bao-secret-id-file", self.bao.report.secret_id_file,
            "--nonce-ttl", "3",
            "--metrics-port", str(self.metrics_port),
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                if line.startswith("dev CA for clients to pin: "):
                    self.ca = Path(line.split(": ", 1)[1].strip())
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or self.ca is None or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("sovereign serve did not start:\n" + "\n".join(self.output[-40:]))
        assert any(re.match(r"listening on 127\.0\.0\.1:\d+ \(TLS\)", line) for line in self.output)
        return self

    def channel(self) -> grpc.Channel:
        assert self.ca is not None
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds)

    def admin_channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.admin_socket}")

    def stop(self) -> int | None:
        if getattr(self, "proc", None) is None or self.proc.poll() is not None:
            return self.proc.returncode if getattr(self, "proc", None) else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
