"""The replicas topology: two ``sovereign serve`` processes on one PostgreSQL database over a three-member
OpenBao raft cluster, on loopback. Replica A runs in the root network namespace; replica B runs in a
namespace of its own (``sovereign.soak.netns``) so its paths to PostgreSQL and to OpenBao can be cut.

The replicas share the dev TLS identity and the node client CA folder (as a deployment shares its
certificate and CA files) and the operators' realm; everything else is in PostgreSQL and OpenBao.
PostgreSQL is the throwaway server the test suite uses too (``sovereign.devtools.postgres``).

Each replica gets its own ``--dev-clock-file`` so a clock-step fault can shift one server's clock.
"""

from __future__ import annotations

import json
import secrets
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import hvac

from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from kms.audit.checkpoint import AuditKeys, load_audit_keys
from kms.domain.transit import AUDIT_KEY_NAME
from kms.openbao.bootstrap import bootstrap
from sovereign.demo.site import Bao, ControlPlane, Inputs, prepare_inputs
from sovereign.devtools.openbao_cluster import OpenBaoCluster, RaftNode
from sovereign.devtools.openbao_server import free_port
from sovereign.devtools.postgres import PostgresServer, PostgresUnavailable
from sovereign.soak.netns import ReplicaNetns
from sovereign.soak.stack import OfflineRealm


class ReplicaStackError(RuntimeError):
    pass


@dataclass
class ReplicaStack:
    workdir: Path
    replicas: int = 2
    pki: SimulatedPki = field(init=False)
    gpus: GpuSimulator = field(init=False)  # the simulated NVIDIA roots, pinned; GPU nodes' devices
    inputs: Inputs = field(init=False)
    realm: OfflineRealm = field(init=False)
    cluster: OpenBaoCluster = field(init=False)
    bao: Bao = field(init=False)
    pg: Any = None
    db_url: str = ""
    planes: list[ControlPlane] = field(default_factory=list)
    netns: ReplicaNetns | None = None
    ca: bytes = b""

    @property
    def plane(self) -> ControlPlane:
        return self.planes[0]

    @property
    def plane_dir(self) -> Path:
        return self.workdir / "plane"

    def clock_file(self, i: int) -> Path:
        return self.workdir / f"clock-{i}"

    def start(self) -> ReplicaStack:
        now = datetime.now(UTC)
        self.pki = SimulatedPki.generate(now)
        self.gpus = GpuSimulator(now)
        self.inputs = prepare_inputs(self.workdir / "site", self.pki, now, gpus=self.gpus)
        self.realm = OfflineRealm(self.workdir / "realm")
        self.cluster = OpenBaoCluster(self.workdir / "raft")
        self.cluster.start()
        leader = self.cluster.leader()
        self.bao = Bao(leader, bootstrap(leader.addr, self.cluster.root_token, self.workdir / "approle"))
        try:
            self.pg = PostgresServer.start()
        except PostgresUnavailable as exc:
            raise ReplicaStackError(f"the soak's PostgreSQL did not start: {str(exc)[:500]}") from None
        self.db_url = self.pg.create_database(f"soak_{secrets.token_hex(4)}")
        self.netns = ReplicaNetns().create()
        for i in range(self.replicas):
            self.planes.append(self._plane(i))
        for plane in self.planes:  # one at a time: the first makes the shared dev TLS files
            plane.start(timeout=90)
        assert self.plane.ca is not None
        self.ca = self.plane.ca.read_bytes()
        return self

    def _plane(self, i: int) -> ControlPlane:
        self.clock_file(i).write_text("0\n")
        common = [
            "--oidc-jwks-file", str(self.realm.jwks_file), "--failover-budget", "5",
            "--dev-clock-file", str(self.clock_file(i)),
        ]  # fmt: skip
        if i == 0:
            extra = [*common, "--db", self.db_url, "--bao-addr", self.cluster.addr]
            cwd = self.workdir / "cores" / "serve-0"
            return ControlPlane(
                self.plane_dir, self.inputs, self.bao, self.realm.issuer, extra=extra, cwd=cwd
            )
        ns = self.netns
        assert ns is not None
        # PostgreSQL and OpenBao through the namespace's upstream addresses (cut by a partition)
        ns.forward((ns.pg_ip, self.pg.port), ("127.0.0.1", self.pg.port))
        for node in self.cluster.nodes:
            ns.forward((ns.bao_ip, node.port), ("127.0.0.1", node.port))
        db = self.db_url.replace(f"@127.0.0.1:{self.pg.port}/", f"@{ns.pg_ip}:{self.pg.port}/")
        baos = ",".join(f"http://{ns.bao_ip}:{n.port}" for n in self.cluster.nodes)
        plane = NamespacedPlane(self.plane_dir, self.inputs, self.bao, self.realm.issuer, netns=ns)
        plane.cwd = self.workdir / "cores" / f"serve-{i}"
        plane.port, plane.release_port, plane.admin_port = free_port(), free_port(), free_port()
        plane.extra = [
            *common, "--db", db, "--bao-addr", baos,
            "--listen", f"{ns.ns_ip}:{plane.port}", "--release-listen", f"{ns.ns_ip}:{plane.release_port}",
            "--admin-listen", f"{ns.ns_ip}:{plane.admin_port}",
        ]  # fmt: skip
        for port in (plane.port, plane.release_port, plane.admin_port):  # the clients' way in
            ns.forward(("127.0.0.1", port), (ns.ns_ip, port))
        return plane

    # -- what the workload and the driver ask of a stack (the single Stack answers the same)

    def node_target(self, i: int) -> str:
        return self.planes[i % len(self.planes)].target

    def operator_channel(self, i: int = 0) -> grpc.Channel:
        target = self.planes[i % len(self.planes)].admin_target
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=self.ca))

    @property
    def bao_addr(self) -> str:
        return self.cluster.addr

    @property
    def root_token(self) -> str:
        return self.cluster.root_token

    @property
    def db_target(self) -> str:
        return str(self.db_url)

    def root_client(self) -> hvac.Client:
        return hvac.Client(url=self.cluster.wait_for_leader().addr, token=self.root_token)

    def audit_keys(self) -> AuditKeys:
        key = self.root_client().secrets.transit.read_key(AUDIT_KEY_NAME)
        return load_audit_keys(json.dumps(key).encode())

    def bao_nodes(self) -> list[RaftNode]:
        return list(self.cluster.nodes)

    def bao_audit_lines(self) -> list[bytes]:
        """Every member's audit log: a decrypt is logged by the member that was active then."""
        lines: list[bytes] = []
        for node in self.cluster.nodes:
            if node.audit_log is not None and node.audit_log.exists():
                lines += node.audit_log.read_bytes().splitlines(keepends=True)
        return lines

    def scan_roots(self) -> list[Path]:
        return [self.workdir, Path(self.pg.root)] if self.pg is not None else [self.workdir]

    def pg_start(self) -> None:
        """Start PostgreSQL again on its data (after ``pg.stop()``, immediate mode: crash recovery)."""
        self.pg.start_again()

    def pg_pid(self) -> int | None:
        try:
            return int((Path(self.pg.data_dir) / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def serve_pid(self, i: int = 0) -> int | None:
        proc = self.planes[i].proc if i < len(self.planes) else None
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self) -> None:
        try:
            for plane in self.planes:
                if plane.proc is not None and plane.proc.poll() is None:
                    plane.proc.send_signal(signal.SIGCONT)
                plane.stop()
        finally:
            try:
                if getattr(self, "cluster", None) is not None:
                    self.cluster.stop()
            finally:
                if self.netns is not None:
                    self.netns.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.pg is not None:
                self.pg.destroy()  # after the driver's scan of its data folder


@dataclass
class NamespacedPlane(ControlPlane):
    """A ``serve`` replica started inside ``netns``; its listen flags come from ``extra`` (the last wins)."""

    netns: ReplicaNetns | None = None

    def command(self) -> list[str]:
        assert self.netns is not None
        return [*self.netns.prefix(), *super().command()]
