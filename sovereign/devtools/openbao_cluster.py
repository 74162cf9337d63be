"""A three-node (or N-node) OpenBao raft cluster on loopback, for integration tests and demos.

Each node is an ``OpenBaoServer`` in raft mode with its own node id, data dir, audit log and ports. The
first node initialises the cluster (one key share); the others join it (``sys/storage/raft/join``) and are
unsealed with the same key. ``leader()`` finds the active node through ``/v1/sys/health`` (200 active,
429 standby). A node's ``stop()``/``start()`` take it down and bring it back (it rejoins from its raft
data and is unsealed again), so tests can force a leader election. Not for production: no TLS
(deploy/openbao/raft-3/ holds the production HCL, which joins with ``retry_join``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from kms.errors import Code, OpenBaoError
from sovereign.devtools.openbao_server import OpenBaoServer, free_port, hcl_string

ACTIVE, STANDBY = 200, 429


class RaftNode(OpenBaoServer):
    """One member of an ``OpenBaoCluster``: joins its peers, and counts as up when active or standby."""

    def __init__(
        self, workdir: Path, *, node_id: str, port: int, join: Sequence[str], bootstrap: bool
    ) -> None:
        super().__init__(workdir, mode="raft", port=port)
        self.node_id = node_id
        self.join = tuple(join)
        self.bootstrap = bootstrap

    def __repr__(self) -> str:
        return f"RaftNode({self.node_id!r}, addr={self.addr!r}, running={self.running})"

    def _config(self) -> str:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        # Every member must declare the same audit device: OpenBao stores the audit table in raft and a
        # member whose HCL differs seals itself. The path is relative to the member's own workdir (cwd).
        return f"""ui = false

storage "raft" {{
  path = {hcl_string(str(self.data_dir))}
  node_id = {hcl_string(self.node_id)}
  performance_multiplier = 1
  # promote joined members to voters within a second or so (defaults: 10 s and 2 s)
  autopilot_reconcile_interval = "500ms"
  autopilot_update_interval = "250ms"
}}

listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  tls_disable = true
}}

api_addr = "{self.addr}"
cluster_addr = "https://127.0.0.1:{self.cluster_port}"

audit "file" "file" {{
  description = "sovereign: every OpenBao request, for reconciliation with the ledger"
  options {{
    file_path = "audit.log"
    mode = "0600"
  }}
}}
"""

    def _init(self) -> None:
        if self.bootstrap:
            super()._init()
        # a joining member is initialised by joining (see unseal)

    def unseal(self) -> None:
        """Join the cluster if this member never did, then submit the key until it is active or standby."""
        if not self.unseal_key:
            raise self._failure("has no unseal key (the cluster was initialised by someone else)")
        if not self.health().initialized:
            self._join()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            health = self.health()
            if health.status in (ACTIVE, STANDBY):
                return
            if health.sealed:
                with contextlib.suppress(OpenBaoError):  # still joining: asked again below
                    self._request("PUT", "/v1/sys/unseal", {"key": self.unseal_key})
            if time.monotonic() > deadline:
                raise self._failure(f"did not join and unseal (last health {health.status})")
            if not self.running:
                raise self._failure("exited while joining the cluster")
            time.sleep(0.05)

    def _join(self) -> None:
        errors: list[str] = []
        for leader in self.join:
            try:
                doc = self._request("PUT", "/v1/sys/storage/raft/join", {"leader_api_addr": leader})
            except OpenBaoError as err:
                errors.append(err.message.split(";", 1)[0])
                continue
            if doc.get("joined"):
                return
        raise self._failure(f"could not join any of {list(self.join)}: {errors}")


class OpenBaoCluster:
    """``size`` raft nodes on loopback joined into one cluster, initialised and unsealed."""

    def __init__(self, workdir: Path, *, size: int = 3, startup_timeout: float = 30.0) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.workdir = Path(workdir).resolve()
        ports = [free_port() for _ in range(size)]
        addrs = [f"http://127.0.0.1:{p}" for p in ports]
        self.nodes = [
            RaftNode(
                self.workdir / f"bao-{i + 1}",
                node_id=f"bao-{i + 1}",
                port=port,
                join=[a for j, a in enumerate(addrs) if j != i] if i else [],
                bootstrap=i == 0,
            )
            for i, port in enumerate(ports)
        ]
        for node in self.nodes:
            node.startup_timeout = startup_timeout

    def __repr__(self) -> str:
        return f"OpenBaoCluster({[n.addr for n in self.nodes]!r})"

    def __enter__(self) -> OpenBaoCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def addresses(self) -> list[str]:
        return [n.addr for n in self.nodes]

    @property
    def addr(self) -> str:
        """All API addresses, comma-separated: the form ``BaoSettings.addr`` accepts for a cluster."""
        return ",".join(self.addresses)

    @property
    def root_token(self) -> str:
        token = self.nodes[0].root_token
        if token is None:
            raise OpenBaoError("the cluster is not initialised", code=Code.KMS_SERVER_START_FAILED)
        return token

    def start(self) -> None:
        """Start the bootstrap node (init + unseal), then the others, joined and unsealed, in parallel."""
        first, rest = self.nodes[0], self.nodes[1:]
        try:
            first.start()
            # autopilot promotes a joined non-voter after this long (default 10 s)
            first._request(
                "POST", "/v1/sys/storage/raft/autopilot/configuration", {"server_stabilization_time": "300ms"}
            )
            for node in rest:
                node.unseal_key, node.root_token = first.unseal_key, first.root_token
            for node in rest:  # each start() returns once the node has joined and is unsealed
                node.start()
            self.wait_for_voters(len(self.nodes))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(timeout=5)

    def leader(self) -> RaftNode:
        """The node that answers health with 200 (active); raises if none does right now."""
        for node in self.nodes:
            if node.running and node.health().status == ACTIVE:
                return node
        raise OpenBaoError(f"no active node in {self!r}", code=Code.KMS_UNAVAILABLE)

    def wait_for_leader(self, *, timeout: float = 30.0, not_: RaftNode | None = None) -> RaftNode:
        """Wait until some running node (other than ``not_``) is active."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node is not not_ and node.running and node.health().status == ACTIVE:
                    return node
            if time.monotonic() > deadline:
                raise OpenBaoError(
                    f"no new leader elected within {timeout:.0f}s in {self!r}",
                    code=Code.KMS_UNAVAILABLE,
                    hint="\n".join(n.log_tail(10) for n in self.nodes if n.running),
                )
            time.sleep(0.1)

    def wait_for_voters(self, count: int, *, timeout: float = 30.0) -> None:
        """Wait until the raft configuration lists ``count`` voters (joins are asynchronous)."""
        deadline = time.monotonic() + timeout
        servers: list[object] = []
        while time.monotonic() < deadline:
            try:
                doc = self.leader()._request("GET", "/v1/sys/storage/raft/configuration", None)
                servers = list(doc.get("data", {}).get("config", {}).get("servers", []))
            except OpenBaoError:
                servers = []
            if sum(1 for s in servers if isinstance(s, dict) and s.get("voter")) >= count:
                return
            time.sleep(0.1)
        raise OpenBaoError(
            f"raft has {len(servers)} members, expected {count} voters", code=Code.KMS_SERVER_START_FAILED
        )

    def standbys(self) -> list[RaftNode]:
        leader = self.leader()
        return [n for n in self.nodes if n is not leader and n.running]
