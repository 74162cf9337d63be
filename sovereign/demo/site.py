"""A throwaway site for demos: a simulated PKI's trust profile and collateral, a policy, a bootstrapped
OpenBao dev server (file audit device on), and a real ``sovereign serve`` process on loopback over TLS.

Everything lives under one work directory; ``Site.close()`` stops the processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path

from attestation.collateral import CollateralItem, ItemKind
from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from attestation.simulate.gpu_persist import gpu_collateral, pin_gpu_roots
from attestation.store import CollateralStore
from kms.openbao.bootstrap import BootstrapReport, bootstrap
from sovereign.cli._common import dump_trust
from sovereign.devtools.openbao_server import OpenBaoServer, free_port

SNP_MEASUREMENT = b"\x11" * 48  # what the demo policy's "trainers" group admits
TDX_MRTD = b"\x22" * 48

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


def prepare_inputs(
    workdir: Path,
    pki: SimulatedPki,
    now: datetime,
    policy_text: str | None = None,
    gpus: GpuSimulator | None = None,
) -> Inputs:
    """The simulation trust profile, a collateral store holding the PKI's collateral, and a policy; with
    ``gpus``, the simulated NVIDIA roots pinned too and their RIMs, OCSP responses and CRLs in the store."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki.mint_snp_report(measurement=SNP_MEASUREMENT)  # its VCEK goes in the store with every ARK CRL
    items = [
        (CollateralItem(_KINDS[kind], data), "simulator")
        for group in (pki.snp_collateral_items(), pki.tdx_collateral_items())
        for kind, values in group.items()
        for data in values
    ]
    trust_store = pki.trust_store()
    if gpus is not None:
        trust_store = pin_gpu_roots(trust_store, gpus)
        items += gpu_collateral(gpus).items()
    CollateralStore(workdir / "collateral").import_items(items, trust=trust_store, now=now)
    trust = workdir / "trust.json"
    trust.write_text(dump_trust(trust_store))
    policy = workdir / "policy.toml"
    if policy_text is None:
        policy_text = resources.files("policies.defaults").joinpath("demo.toml").read_text()
    policy.write_text(policy_text)
    return Inputs(trust, workdir / "collateral", policy)


@dataclass
class Bao:
    server: OpenBaoServer
    report: BootstrapReport


def start_bao(workdir: Path) -> Bao:
    """A real OpenBao dev server (file audit device declared in its config), bootstrapped."""
    server = OpenBaoServer.dev(workdir / "bao")
    try:
        return Bao(server, bootstrap(server.addr, server.root_token or "", workdir / "approle"))
    except BaseException:
        server.stop()
        raise


@dataclass
class ControlPlane:
    """``sovereign serve`` as a child process; ``start()`` returns once it listens.

    Ports: nodes attest on ``port``, release over mutual TLS on ``release_port``; operators (Admin,
    Audit; TLS + a bearer token from ``oidc_issuer``) use ``admin_port``.
    """

    workdir: Path
    inputs: Inputs
    bao: Bao
    oidc_issuer: str
    extra: list[str] = field(default_factory=list)
    port: int = 0
    release_port: int = 0
    admin_port: int = 0
    ca: Path | None = None
    output: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    cwd: Path | None = None  # where serve runs (and the kernel writes its core dump, if any); None: ours

    @property
    def db(self) -> Path:
        return self.workdir / "sovereign.db"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_target(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def command(self) -> list[str]:
        self.port = self.port or free_port()
        self.release_port = self.release_port or free_port()
        self.admin_port = self.admin_port or free_port()
        return [
            sys.executable, "-m", "sovereign", "serve",
            "--listen", self.target,
            "--release-listen", f"127.0.0.1:{self.release_port}",
            "--admin-listen", self.admin_target,
            "--node-ca-dir", str(self.workdir / "node-ca"),
            "--oidc-issuer", self.oidc_issuer,
            "--dev-tls", str(self.workdir / "tls"),
            "--db", str(self.db),
            "--collateral", str(self.inputs.collateral),
            "--policy", str(self.inputs.policy),
            "--trust", str(self.inputs.trust),
            "--dev-trust",
            "--bao-addr", self.bao.server.addr,
            "--bao-role-id", self.bao.report.role_id,
            "--bao-secret-id-file", self.bao.report.secret_id_file,
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> ControlPlane:
        if self.cwd is not None:
            self.cwd.mkdir(parents=True, exist_ok=True)
        self.proc, self.ca = launch_serve(self.command(), self.output, timeout=timeout, cwd=self.cwd)
        return self

    def stop(self) -> int | None:
        return stop_process(self.proc)

    def announced(self, prefix: str, timeout: float = 15.0) -> str:
        """The last word of the first output line starting with ``prefix`` (an address serve prints after
        it is ready, e.g. ``console on``), waiting for it up to ``timeout`` seconds."""
        return wait_for_line(self.output, prefix, timeout).split()[-1]


def launch_serve(
    command: list[str], output: list[str], *, timeout: float = 30.0, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """Start a ``sovereign serve`` command (no inherited SOVEREIGN_* settings); collect its output lines
    into ``output`` and return once it prints the dev CA it listens with, or raise with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ready = threading.Event()
    found: list[Path] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line.rstrip())
            if line.startswith("dev CA for clients to pin: "):
                found.append(Path(line.split(": ", 1)[1].strip()))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not found or proc.poll() is not None:
        stop_process(proc)
        raise RuntimeError("sovereign serve did not start:\n" + "\n".join(output[-40:]))
    return proc, found[0]


def wait_for_line(output: list[str], prefix: str, timeout: float) -> str:
    """The first line of ``output`` (filled by a reader thread) that starts with ``prefix``; serve prints its
    listening lines one after another, so a line after the one ``launch_serve`` waits for may still be coming."""
    deadline = time.monotonic() + timeout
    while True:
        line = next((line for line in list(output) if line.startswith(prefix)), None)
        if line is not None:
            return line
        if time.monotonic() > deadline:
            raise RuntimeError(f"sovereign serve never printed {prefix!r}:\n" + "\n".join(output[-40:]))
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[str] | None) -> int | None:
    """SIGTERM (graceful stop), then SIGKILL after 15 s; the exit code, or None if never started."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
