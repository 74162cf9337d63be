"""The soak's actors and what they record: simulated SNP and TDX nodes (in-process ``NodeAgent``s, as the
demo runs them) registering, renewing and releasing; operators revoking, suspending and approving nodes
and changing the policy (held for a second operator: alice proposes, bob approves); a data owner sealing;
an auditor exporting and verifying the ledger.

Every release a node makes carries a request id chosen here, so the client's record of a received key
(or of a refusal and its code) can be matched with the ledger. Received plaintext keys stay in memory
(``Recorder.keys``) for the key-material scan; they are never written anywhere.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc

from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient, ControlPlaneError, NodeState
from enclave.errors import NodeError
from enclave.identity import NodeIdentity
from enclave.providers.gpu import SimulatedGpus
from enclave.providers.simulated import simulated_snp, simulated_tdx
from enclave.release_request import REQUEST_ID_LEN, ReleaseFields, open_grant, sign_release
from kms.audit.checkpoint import AuditKeys
from kms.audit.errors import AuditError
from kms.audit.export import read_lines, write_items
from kms.audit.verify import verify_export
from kms.domain.catalogue import Catalogue, KeyKind
from kms.envelope.files import encrypt_file
from kms.envelope.names import format_key_ref
from kms.errors import KmsError
from kms.openbao.vault import BaoSettings, OpenBaoTransit, TokenAuth
from kms.sql import open_store
from kms.sql.keys import SqlKeyStore
from proto.contract import parse_error_detail
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, common_pb2
from sovereign.client.audit import checkpoint_in
from sovereign.demo.site import SNP_MEASUREMENT, TDX_MRTD
from sovereign.soak.checker import Violation, check
from sovereign.soak.history import ClientHistory, Received, Refusal
from sovereign.soak.replicas import ReplicaStack
from sovereign.soak.stack import Stack

AnyStack = Stack | ReplicaStack

KEYS = {"dataset/train": common_pb2.KEY_KIND_DATASET, "model/main": common_pb2.KEY_KIND_MODEL}
GROUPS = ["trainers"]
# refusals after which a node re-attests before its next release
RENEW_AFTER = frozenset(
    {"RELEASE_NODE_NOT_ATTESTED", "RELEASE_NODE_CHANGED", "NODE_NOT_ATTESTED", "RELEASE_LEASE_EXPIRED"}
)
# every GPU_EVERY-th SNP node registers with GPU_COUNT simulated H100s; the demo policy's [appraisal.gpu]
# (min_count 0) verifies and appraises them, so they join the same group as the nodes without GPUs
GPU_EVERY = 2
GPU_COUNT = 1
# a node re-attests before a release when its last attestation is older than this: the demo policy's
# leases last 300 s (a node agent's background renewal does the same; here it is part of the load)
RENEW_EVERY = 120.0


@dataclass(frozen=True)
class OpRecord:
    at: float  # seconds since the run started
    op: str
    ok: bool
    code: str  # "ok", a server reason code, or a gRPC status name when the server gave none
    latency: float


@dataclass
class Recorder:
    started: float = field(default_factory=time.monotonic)
    ops: list[OpRecord] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set, repr=False)  # memory only: for the key-material scan
    export_failures: list[str] = field(default_factory=list)
    # the checker on the auditor's exports during the run
    midrun_violations: list[Violation] = field(default_factory=list)
    midrun_checks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started

    def op(self, name: str, began: float, code: str = "ok") -> bool:
        end = self.now()
        with self.lock:
            self.ops.append(OpRecord(round(began, 3), name, code == "ok", code, round(end - began, 3)))
        return code == "ok"

    def got(self, received: Received, key: bytes) -> None:
        with self.lock:
            self.received.append(received)
            self.keys.add(key)

    def refused(self, refusal: Refusal) -> None:
        with self.lock:
            self.refusals.append(refusal)

    def key(self, plaintext: bytes) -> None:
        with self.lock:
            self.keys.add(plaintext)


def rpc_code(err: grpc.RpcError) -> str:
    call = cast(grpc.Call, err)
    detail = parse_error_detail(cast(Iterable[tuple[str, str | bytes]], call.trailing_metadata()))
    return detail.reason if detail is not None else call.code().name


def node_code(err: NodeError) -> tuple[str, bool]:
    """The code a node saw, and whether the server decided it (an ErrorDetail reason)."""
    if isinstance(err, ControlPlaneError):
        return (err.reason, True) if err.reason else (err.status or err.code.value, False)
    return err.code.value, False


@dataclass
class Node:
    agent: NodeAgent
    tee: str
    gpus: int = 0  # simulated GPUs it presents at registration and renewal
    state: str = "new"
    attested_at: float = 0.0
    needs_renew: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # one renewal at a time
    # operations using the node's client now, and whether the node was dropped (revoked, failed to
    # register): its client closes when the last of them ends, never under one (an RPC on a closed
    # channel raises grpc's ValueError, which the driver counted as DRIVER_ValueError)
    users: int = 0
    dropped: bool = False
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def due(self) -> bool:
        return self.needs_renew or time.monotonic() - self.attested_at > RENEW_EVERY

    @contextmanager
    def in_use(self) -> Iterator[bool]:
        """Hold the node's client open for one operation; yields False if the node was dropped."""
        with self._guard:
            usable = not self.dropped
            self.users += usable
        try:
            yield usable
        finally:
            if usable:
                with self._guard:
                    self.users -= 1
                    last = self.dropped and self.users == 0
                if last:
                    self.agent.client.close()

    def close(self) -> None:
        """Drop the node: its client closes now, or when the operation still using it ends."""
        with self._guard:
            if self.dropped:
                return
            self.dropped = True
            idle = self.users == 0
        if idle:
            self.agent.client.close()


class Operator:
    """Admin and Audit calls as one realm user, a fresh bearer token per call (tokens live 5 minutes)."""

    def __init__(self, stack: AnyStack, username: str, timeout: float, replica: int = 0) -> None:
        self._stack = stack
        self.username = username
        self.timeout = timeout
        self._channel = stack.operator_channel(replica)
        self.admin = admin_pb2_grpc.AdminStub(self._channel)
        self.audit = audit_pb2_grpc.AuditStub(self._channel)

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return (("authorization", f"Bearer {self._stack.realm.token(self.username, datetime.now(UTC))}"),)

    def close(self) -> None:
        self._channel.close()


class Workload:
    """The operations the driver schedules; each records its outcome and returns whether it succeeded."""

    def __init__(self, stack: AnyStack, recorder: Recorder, *, timeout: float, max_nodes: int) -> None:
        self.stack = stack
        self.rec = recorder
        self.timeout = timeout
        self.max_nodes = max_nodes
        self.nodes: list[Node] = []
        self._nodes_lock = threading.Lock()
        self._operator_lock = threading.Lock()  # operators act one at a time, as people would
        self._owner_lock = threading.Lock()
        self._auditor_lock = threading.Lock()
        self._made = 0
        self._snp_made = 0
        self.gpu_nodes_attested = 0  # GPU nodes that registered ATTESTED (their GPUs verified)
        self.gpu_releases = 0  # keys GPU nodes received
        self._revision = 0
        self._sealed = 0
        # with two replicas the operators spread over both: alice on A, bob and the auditor on B
        self.alice = Operator(stack, "alice", timeout, 0)
        self.bob = Operator(stack, "bob", timeout, 1)
        self.carol = Operator(stack, "carol", timeout, 1)
        self._audit_keys: AuditKeys | None = None
        self._owner: Catalogue | None = None
        self.probes: list[Node] = []  # one per replica: recovery is measured on the replica a fault hit

    def node_counts(self) -> dict[str, int]:
        """For the report: nodes made, GPU nodes attested and the keys they received."""
        return {
            "made": self._made,
            "gpu_nodes_attested": self.gpu_nodes_attested,
            "gpus_per_gpu_node": GPU_COUNT,
            "gpu_node_releases": self.gpu_releases,
        }

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for probe in self.probes:
            probe.close()
        for op in (self.alice, self.bob, self.carol):
            op.close()

    # -- set-up

    def create_keys(self) -> None:
        for name, kind in KEYS.items():
            self.alice.admin.CreateKey(
                admin_pb2.CreateKeyRequest(name=name, kind=kind), timeout=30, metadata=self.alice.metadata()
            )

    def audit_keys(self) -> AuditKeys:
        if self._audit_keys is None:
            self._audit_keys = self.stack.audit_keys()
        return self._audit_keys

    def new_node(self, tee: str, replica: int | None = None, *, gpus: bool | None = None) -> Node:
        """A node talking to one replica (in turn, unless ``replica`` says which); an SNP node comes with
        simulated GPUs every ``GPU_EVERY``-th time unless ``gpus`` says whether."""
        self._made += 1
        if tee == "snp":
            self._snp_made += 1
        with_gpus = tee == "snp" and (self._snp_made % GPU_EVERY == 0 if gpus is None else gpus)
        source = (
            SimulatedGpus(self.stack.gpus, GPU_COUNT, seed=f"soak-gpu-{self._made}") if with_gpus else None
        )
        pki = self.stack.pki
        provider = (
            simulated_snp(pki, measurement=SNP_MEASUREMENT)
            if tee == "snp"
            else simulated_tdx(pki, mrtd=TDX_MRTD)
        )
        target = self.stack.node_target(self._made if replica is None else replica)
        client = ControlPlaneClient(target, ca_pem=self.stack.ca, timeout=self.timeout)
        name = f"soak-{tee}{'-gpu' if source else ''}-{self._made}"
        agent = NodeAgent(
            client, provider, NodeIdentity.generate(), node_name=name, groups=GROUPS, gpus=source
        )
        return Node(agent, tee, gpus=GPU_COUNT if source else 0)

    def make_probes(self) -> None:
        """The nodes that measure recovery, one per replica: never revoked or suspended."""
        for i in range(self.stack.replicas):
            probe = self.new_node("snp", replica=i, gpus=False)
            if not self._attest(probe, "probe-register", probe.agent.register):
                raise RuntimeError(f"the probe node of replica {i} did not register ATTESTED")
            self.probes.append(probe)

    # -- picking nodes

    def live(self) -> list[Node]:
        with self._nodes_lock:
            return [n for n in self.nodes if n.state == "attested"]

    def _take(self, pick: Callable[[list[Node]], Node | None]) -> Node | None:
        with self._nodes_lock:
            return pick([n for n in self.nodes if n.state == "attested"])

    def _drop(self, node: Node) -> None:
        with self._nodes_lock:
            if node in self.nodes:
                self.nodes.remove(node)
        node.close()

    # -- node operations

    def _attest(self, node: Node, name: str, call: Callable[[], Any]) -> bool:
        """Register or renew ``node`` (``call``); a node dropped meanwhile is skipped, not counted."""
        with node.in_use() as usable:
            if not usable:
                return False
            began = self.rec.now()
            try:
                result = call()
            except NodeError as err:
                return self.rec.op(name, began, node_code(err)[0])
        if result.state is NodeState.ATTESTED:
            node.state, node.attested_at, node.needs_renew = "attested", time.monotonic(), False
            return self.rec.op(name, began)
        codes = [r.code for r in result.reasons] or [result.state.value]
        if result.state is NodeState.REJECTED:
            node.state = "rejected"
        return self.rec.op(name, began, codes[0])

    def register(self, tee: str) -> bool:
        with self._nodes_lock:
            alive = [n for n in self.nodes if n.state in ("attested", "new")]
            if len(alive) >= self.max_nodes:
                return False
        node = self.new_node(tee)
        with self._nodes_lock:
            self.nodes.append(node)
        ok = self._attest(node, "register", node.agent.register)
        if ok and node.gpus:
            with self._nodes_lock:
                self.gpu_nodes_attested += 1
        if not ok and node.state != "attested":
            self._drop(node)
        return ok

    def renew_oldest(self) -> bool:
        with self._nodes_lock:
            candidates = [n for n in self.nodes if n.state == "attested" or n.needs_renew]
            node = min(candidates, key=lambda n: (not n.needs_renew, n.attested_at), default=None)
        if node is None:
            return False
        with node.lock:
            return self._attest(node, "renew", node.agent.renew)

    def release(self, node: Node, key_name: str, purpose: str, op: str = "release") -> bool:
        agent = node.agent
        with node.in_use() as usable:
            if not usable:
                return False  # revoked and dropped by another worker since it was picked
            fields = ReleaseFields(
                node_id=agent.node_id,
                key_name=key_name,
                purpose=purpose,
                request_id=secrets.token_bytes(REQUEST_ID_LEN),
                timestamp=datetime.now(UTC),
                key_version=0,
            )
            began = self.rec.now()
            try:
                grant = agent.client.release_key(sign_release(agent.identity, fields))
                released = open_grant(agent.identity.kem_private_key(), fields, grant)
            except NodeError as err:
                code, coded = node_code(err)
                self.rec.refused(
                    Refusal(datetime.now(UTC), fields.node_id, fields.request_id.hex(), key_name, code, coded)
                )
                if code in RENEW_AFTER:
                    node.needs_renew = True
                return self.rec.op(op, began, code)
        received = Received(
            datetime.now(UTC), fields.node_id, fields.request_id.hex(), released.key_name,
            released.key_version, released.purpose, released.audit_sequence,
        )  # fmt: skip
        self.rec.got(received, released.key)
        if node.gpus:
            with self._nodes_lock:
                self.gpu_releases += 1
        return self.rec.op(op, began)

    def release_random(
        self, choose: Callable[[list[Node]], Node | None], key_name: str, purpose: str
    ) -> bool:
        node = self._take(choose)
        if node is None:
            return False
        if node.due():
            with node.lock:
                self._attest(node, "renew", node.agent.renew)
        return self.release(node, key_name, purpose, "release" if purpose == "read" else "release-write")

    def renew_probe(self, replica: int = 0) -> None:
        self.probes[replica].needs_renew = True

    def probe_release(self, replica: int = 0) -> bool:
        probe = self.probes[replica]
        if probe.due():
            with probe.lock:
                self._attest(probe, "probe-renew", probe.agent.renew)
        return self.release(probe, "dataset/train", "read", "probe-release")

    # -- operators

    @contextmanager
    def _operator(self, name: str) -> Iterator[list[str]]:
        """Run an operator action; the yielded list takes the outcome code (default ok)."""
        outcome: list[str] = []
        with self._operator_lock:
            began = self.rec.now()
            try:
                yield outcome
            except grpc.RpcError as err:
                outcome[:] = [rpc_code(err)]
            self.rec.op(name, began, outcome[0] if outcome else "ok")

    def revoke(self, choose: Callable[[list[Node]], Node | None]) -> None:
        node = self._take(choose)
        if node is None:
            return
        with self._operator("revoke") as out:
            self.alice.admin.RevokeNode(
                admin_pb2.RevokeNodeRequest(node_id=node.agent.node_id, reason="soak: decommissioned"),
                timeout=self.timeout,
                metadata=self.alice.metadata(),
            )
            node.state = "revoked"
        if not out:
            self.release(node, "dataset/train", "read", "release-after-revoke")
            self._drop(node)

    def suspend_and_approve(self, choose: Callable[[list[Node]], Node | None]) -> None:
        node = self._take(choose)
        if node is None:
            return
        node_id = node.agent.node_id
        with self._operator("suspend") as out:
            self.alice.admin.SuspendNode(
                admin_pb2.SuspendNodeRequest(node_id=node_id, reason="soak: maintenance"),
                timeout=self.timeout,
                metadata=self.alice.metadata(),
            )
            node.state = "suspended"
        if out:
            return
        self.release(node, "dataset/train", "read", "release-while-suspended")
        with self._operator("approve") as out:
            reply = self.alice.admin.ApproveNode(
                admin_pb2.ApproveNodeRequest(node_id=node_id, groups=GROUPS, comment="soak: back"),
                timeout=self.timeout,
                metadata=self.alice.metadata(),
            )
            if reply.HasField("pending_change"):  # approval held for a second operator
                self.bob.admin.ApprovePendingChange(
                    admin_pb2.ApprovePendingChangeRequest(
                        change_id=reply.pending_change.change_id, comment="soak"
                    ),
                    timeout=self.timeout,
                    metadata=self.bob.metadata(),
                )
            node.state, node.needs_renew = "attested", True
        if out:
            # approval failed: the node stays suspended and can neither renew nor release; kept, it would
            # be the renewal every renew picks first (it needs one) and is refused, forever
            self._drop(node)

    def change_policy(self) -> None:
        with self._operator("policy-change") as out:
            active = self.alice.admin.GetPolicy(
                admin_pb2.GetPolicyRequest(), timeout=self.timeout, metadata=self.alice.metadata()
            )
            self._revision += 1
            toml = active.toml.split("\n# soak revision")[0] + f"\n# soak revision {self._revision}\n"
            reply = self.alice.admin.PutPolicy(
                admin_pb2.PutPolicyRequest(toml=toml, expected_version=active.version),
                timeout=self.timeout,
                metadata=self.alice.metadata(),
            )
            if reply.HasField("pending_change"):
                self.bob.admin.ApprovePendingChange(
                    admin_pb2.ApprovePendingChangeRequest(
                        change_id=reply.pending_change.change_id, comment="soak"
                    ),
                    timeout=self.timeout,
                    metadata=self.bob.metadata(),
                )
            out.append("ok")

    # -- data owner and auditor

    def seal(self, folder: Path) -> bool:
        """The data owner seals a small dataset with the key's current version (own OpenBao credentials)."""
        began = self.rec.now()
        with self._owner_lock:
            try:
                if self._owner is None:
                    settings = BaoSettings(addr=self.stack.bao_addr, auth=TokenAuth(self.stack.root_token))
                    self._owner = Catalogue(
                        SqlKeyStore(open_store(self.stack.db_target)),
                        OpenBaoTransit(settings),
                        lambda: datetime.now(UTC),
                    )
                key = self._owner.unwrap("dataset/train", kind=KeyKind.DATASET)
                self.rec.key(key.plaintext)
                folder.mkdir(parents=True, exist_ok=True)
                plain = folder / "plain.bin"
                plain.write_bytes(os.urandom(16 << 10))
                self._sealed += 1
                sealed = folder / f"sealed-{self._sealed % 3}.bin"
                encrypt_file(key.plaintext, plain, sealed, key_ref=format_key_ref(key.name, key.version))
                del key
            except (KmsError, OSError) as err:
                return self.rec.op(
                    "seal", began, str(err.code) if isinstance(err, KmsError) else type(err).__name__
                )
        return self.rec.op("seal", began)

    def export(self, path: Path, *, op: str = "export") -> int | None:
        """The auditor exports the ledger over the Audit RPC and verifies it offline; the entry count.
        One auditor, one export at a time: two writing the same file would interleave their lines."""
        with self._auditor_lock:
            return self._export(path, op)

    def _export(self, path: Path, op: str) -> int | None:
        began = self.rec.now()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stream = self.carol.audit.Export(
                audit_pb2.ExportRequest(start_sequence=0, end_sequence=0),
                timeout=max(self.timeout, 30),
                metadata=self.carol.metadata(),
            )
            items = (
                checkpoint_in(i.checkpoint) if i.HasField("checkpoint") else bytes(i.entry.canonical)
                for i in stream
            )
            with path.open("wb") as out, tempfile.TemporaryFile() as spool:
                final = write_items(out, items, spool)
        except grpc.RpcError as err:
            self.rec.op(op, began, rpc_code(err))
            return None
        except AuditError as err:
            self.rec.op(op, began, err.code.value)
            return None
        try:
            with path.open("rb") as f:
                verify_export(read_lines(f), self.audit_keys())
        except AuditError as err:
            self.rec.export_failures.append(f"{err.code.value}: {err.message}")
            self.rec.op(op, began, err.code.value)
            return None
        self.rec.op(op, began)
        if op == "export":
            self._check_midrun(path, final.size)
        return final.size

    def _check_midrun(self, path: Path, size: int) -> None:
        """The ledger-side invariants on this export, against the keys received with a grant inside it."""
        with self.rec.lock:
            received = [r for r in self.rec.received if r.audit_sequence < size]
            refusals = list(self.rec.refusals)
        history = ClientHistory(received, refusals, [])
        lines = path.read_bytes().splitlines(keepends=True)
        report = check(history, lines, self.audit_keys(), None, role_name="", decrypt_path="")
        with self.rec.lock:
            self.rec.midrun_checks += 1
            self.rec.midrun_violations += report.violations
