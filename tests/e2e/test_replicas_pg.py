"""Two separate ``sovereign serve`` replicas (own processes, own ports) on one PostgreSQL database and a
three-member OpenBao raft cluster given as an address list: a node registers through replica A and gets
keys through replica B; a nonce or a release request id is accepted once whichever replica sees it; both
replicas export the same ledger, which verifies offline; SIGKILL of A during a release storm, with clients
retrying the same request on B, loses and doubles no grant; stopping the OpenBao leader during releases
fails requests closed with UNAVAILABLE (no grant recorded) until a new leader is elected."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from e2e.conftest import KIND
from e2e.node_client import NodeClient, mtls_channel, pem_key, rpc_error
from e2e.test_audit_ledger import cli_token, public_key_file, sovereign, wait_for_checkpoint
from e2e.world import SNP_MEASUREMENT, Bao, ServerProcess, prepare
from pg.server import PostgresServer
from sqlalchemy.engine import make_url

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp
from kms.audit.checkpoint import LocalSigner, load_audit_keys
from kms.audit.draft import SYSTEM, Draft
from kms.audit.entry import Entry, Kind
from kms.audit.errors import AuditError
from kms.audit.verify import verify_export
from kms.openbao.bootstrap import bootstrap
from kms.sql import open_store
from kms.sql.audit_append import AuditLedger
from kms.sql.audit_checkpointer import Checkpointer
from kms.sql.audit_ledger import checkpoints_between
from kms.sql.audit_reader import LedgerReader, recover
from kms.sql.group_commit import GroupCommit
from kms.sql.store import Store
from proto.contract import parse_error_detail
from proto.sovereign.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2_grpc,
    common_pb2,
    key_release_pb2,
    key_release_pb2_grpc,
)
from sovereign.devtools.openbao_cluster import OpenBaoCluster

KEY = "dataset/train"
SIGNER = LocalSigner(key_id="sovereign-audit", version=1)


@dataclass
class Replicas:
    a: ServerProcess
    b: ServerProcess
    cluster: OpenBaoCluster
    bao: Bao

    def current_bao(self) -> Bao:
        return Bao(self.cluster.wait_for_leader(), self.bao.report)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, pg_server: PostgresServer
) -> Iterator[Replicas]:
    workdir: Path = tmp_path_factory.mktemp("replicas-pg")
    cluster = OpenBaoCluster(workdir / "raft")
    cluster.start()
    procs: list[ServerProcess] = []
    try:
        bao = Bao(cluster.leader(), bootstrap(cluster.leader().addr, cluster.root_token, workdir / "approle"))
        url = pg_server.create_database(f"replicas_{secrets.token_hex(4)}")
        inputs = prepare(workdir, pki, datetime.now(UTC))
        # one workdir: the replicas share the dev TLS identity and the node client CA, as a deployment
        # shares its certificate and CA files; everything else is in PostgreSQL and OpenBao
        extra = ["--failover-budget", "3"]
        a = ServerProcess(workdir, inputs, bao, extra=extra, db_url=url, bao_addrs=cluster.addr).start()
        procs.append(a)
        with a.admin_channel() as channel:
            admin_pb2_grpc.AdminStub(channel).CreateKey(
                admin_pb2.CreateKeyRequest(name=KEY, kind=KIND["dataset"])
            )
        b = ServerProcess(
            workdir, inputs, bao, realm=a.operators(), extra=extra, db_url=url, bao_addrs=cluster.addr
        ).start()
        procs.append(b)
        yield Replicas(a, b, cluster, bao)
    finally:
        codes = [p.stop() for p in procs]
        cluster.stop()
    assert codes == [0, 0], "a replica did not stop cleanly on SIGTERM"


def release_stub(proc: ServerProcess, node: NodeClient) -> key_release_pb2_grpc.KeyReleaseStub:
    """``proc``'s KeyRelease for ``node``: the client certificate any replica issued works on every one."""
    assert proc.ca is not None
    channel = mtls_channel(
        f"127.0.0.1:{proc.release_port}", proc.ca.read_bytes(), pem_key(node.tls_key), node.client_certificate
    )
    return key_release_pb2_grpc.KeyReleaseStub(channel)


def registered(proc: ServerProcess, pki: SimulatedPki, name: str) -> NodeClient:
    node = NodeClient(proc.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name=name)
    assert node.register().state == common_pb2.NODE_STATE_ATTESTED
    return node


def exported(proc: ServerProcess, bao: Bao, tmp_path: Path, name: str) -> list[bytes]:
    """The ledger exported over ``proc``'s Audit RPCs by the CLI, verified offline with the public key."""
    out, key = tmp_path / f"{name}.jsonl", public_key_file(bao, tmp_path / f"{name}-key.json")
    result = sovereign("audit", "export", "-o", str(out), *cli_token(proc, tmp_path / f"{name}-token.json"))
    assert result.returncode == 0, result.stderr
    lines = out.read_bytes().splitlines(keepends=True)
    verify_export(lines, load_audit_keys(key.read_bytes()))
    return lines


def entries(lines: list[bytes]) -> list[Entry]:
    return [Entry.decode(line[9:-2]) for line in lines if line.startswith(b'{"entry":')]


def grants_by_request(lines: list[bytes]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in entries(lines):
        if e.kind is Kind.RELEASE_GRANT:
            out.setdefault(str(e.fields["request_id"]), []).append(e.seq)
    return out


def settle(proc: ServerProcess) -> None:
    """Wait until the latest checkpoint covers every entry (no traffic is running)."""
    stub = audit_pb2_grpc.AuditStub(proc.admin_channel("carol"))
    for _ in range(3):  # the tail may still be growing by a server.start or a denial
        size = wait_for_checkpoint(stub, 1).tree_size
        time.sleep(1.2)
        if wait_for_checkpoint(stub, size).tree_size == size:
            return
    raise AssertionError("the ledger kept growing with no traffic")


def test_register_on_a_release_on_b_one_nonce_one_grant_one_ledger(
    replicas: Replicas, pki: SimulatedPki, tmp_path: Path
) -> None:
    a, b = replicas.a, replicas.b
    node = registered(a, pki, "pg-1")
    node.release_stub = release_stub(b, node)
    key, reply = node.release(KEY)
    node.release_stub = release_stub(a, node)
    again, _ = node.release(KEY)
    assert key == again and reply.key_name == KEY

    # a nonce issued by A is good once, on B; then refused on both
    other = NodeClient(a.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="pg-2")
    request = other.register_request(other.challenge())
    on_b = NodeClient(b.channel(), other.provider, name="pg-2")
    assert on_b.attestation.Register(request).state == common_pb2.NODE_STATE_ATTESTED
    for proc in (a, b):
        stub = NodeClient(proc.channel(), other.provider).attestation
        replayed = stub.Register(request)
        assert replayed.state == common_pb2.NODE_STATE_REJECTED and not replayed.node_id
        assert [r.code for r in replayed.reasons] == ["NONCE_REPLAYED"]

    # a release request id granted by A is a replay on B
    release = node.release_request(KEY)
    release_stub(a, node).ReleaseKey(release)
    assert rpc_error(release_stub(b, node).ReleaseKey, release)[1] == "REQUEST_REPLAYED"

    settle(a)
    bao = replicas.current_bao()
    from_a, from_b = exported(a, bao, tmp_path, "a"), exported(b, bao, tmp_path, "b")
    assert from_a == from_b
    assert [e.seq for e in entries(from_a)] == list(range(len(entries(from_a))))
    assert all(len(seqs) == 1 for seqs in grants_by_request(from_a).values())
    starts = [e.fields["address"] for e in entries(from_a) if e.kind is Kind.SERVER_START]
    assert f"127.0.0.1:{a.port}" in starts and f"127.0.0.1:{b.port}" in starts


@dataclass
class Outcome:
    node_id: str
    request_id: str
    seq: int = -1  # the grant's audit sequence when the client received a key
    code: grpc.StatusCode | None = None
    reason: str = ""


def send(
    stub: key_release_pb2_grpc.KeyReleaseStub, request: key_release_pb2.ReleaseRequest, o: Outcome
) -> bool:
    """One attempt; True when the outcome is final (a key, or a refusal that is not about availability)."""
    try:
        o.seq, o.code, o.reason = stub.ReleaseKey(request, timeout=10).audit_sequence, grpc.StatusCode.OK, ""
        return True
    except grpc.RpcError as err:
        detail = parse_error_detail(err.trailing_metadata())
        o.code, o.reason = err.code(), detail.reason if detail else ""
        return o.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_sigkill_of_a_during_a_storm_with_retries_on_b_loses_and_doubles_nothing(
    replicas: Replicas, pki: SimulatedPki, tmp_path: Path
) -> None:
    a, b = replicas.a, replicas.b
    nodes = [registered(a, pki, f"storm-{i}") for i in range(2)]
    stubs = {n.node_id: (release_stub(a, n), release_stub(b, n)) for n in nodes}
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(node: NodeClient) -> None:
        on_a, on_b = stubs[node.node_id]
        while not stop.is_set():
            rid = secrets.token_bytes(16)
            request = node.release_request(KEY, request_id=rid)
            o = Outcome(node.node_id, rid.hex())
            if not send(on_a, request, o):
                for _ in range(20):  # the same request, on the other replica
                    if send(on_b, request, o):
                        break
                    time.sleep(0.1)
            with lock:
                outcomes.append(o)

    threads = [threading.Thread(target=client, args=(n,)) for n in nodes for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        a.proc.kill()
        a.proc.wait(10)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    a.output.clear()
    a.start()  # restarted on the same database: the ledger resumes one tree

    received = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    assert len(received) > 10, f"too few releases succeeded: {len(received)}"
    # the only refusal: A granted, then died before replying, and the retry on B is a replay
    unexpected = {
        (o.code, o.reason)
        for o in outcomes
        if o.code != grpc.StatusCode.OK and o.reason != "REQUEST_REPLAYED"
    }
    assert not unexpected, unexpected
    settle(b)
    grants = grants_by_request(exported(b, replicas.current_bao(), tmp_path, "storm"))
    assert all(len(seqs) == 1 for seqs in grants.values()), "a request id was granted twice"
    for o in received:
        assert grants.get(o.request_id) == [o.seq], f"the key a client received has no grant: {o}"
    for o in outcomes:
        if o.reason == "REQUEST_REPLAYED":
            assert o.request_id in grants  # the grant A committed before it died


def test_openbao_leader_stop_fails_closed_until_a_new_leader_then_releases_resume(
    replicas: Replicas, pki: SimulatedPki, tmp_path: Path
) -> None:
    """The leader stops: a new one is elected and releases go on. Then a second member stops (no quorum):
    releases fail with UNAVAILABLE after the failover budget, record no grant, and resume once a member
    is back. Every key received is the right one."""
    b, cluster = replicas.b, replicas.cluster
    node = registered(b, pki, "leader-stop")
    node.release_stub = release_stub(b, node)
    expected, _ = node.release(KEY)
    outcomes: list[Outcome] = []
    keys: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            rid = secrets.token_bytes(16)
            o = Outcome(node.node_id, rid.hex())
            try:
                key, reply = node.release(KEY, request_id=rid)
                o.code, o.seq = grpc.StatusCode.OK, reply.audit_sequence
                with lock:
                    keys.append(key)
            except grpc.RpcError as err:
                detail = parse_error_detail(err.trailing_metadata())
                o.code, o.reason = err.code(), detail.reason if detail else ""
                time.sleep(0.05)
            with lock:
                outcomes.append(o)

    def resumed(since: int, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if any(o.code == grpc.StatusCode.OK for o in outcomes[since:]):
                    return True
            time.sleep(0.1)
        return False

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        leader = cluster.leader()
        leader.stop()
        first = len(outcomes)
        cluster.wait_for_leader(not_=leader)
        assert resumed(first), "releases did not resume after the leader stopped"
        second = cluster.leader()
        second.stop()  # one member of three left: no quorum, no leader
        time.sleep(5)  # longer than the replicas' failover budget (3 s)
        outage = len(outcomes)
        second.start()
        cluster.wait_for_leader()
        assert resumed(outage), "releases did not resume once quorum was back"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for member in cluster.nodes:
            if not member.running:
                member.start()
        cluster.wait_for_leader()
    failed = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    assert failed, "no release failed while OpenBao had no quorum"
    assert {(o.code, o.reason) for o in failed} <= {(grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE")}, failed
    assert keys and all(k == expected for k in keys), "a release returned another key"
    settle(b)
    grants = grants_by_request(exported(b, replicas.current_bao(), tmp_path, "leader"))
    assert not [o for o in failed if o.request_id in grants], "a failed release recorded a grant"
    assert all(grants.get(o.request_id) == [o.seq] for o in outcomes if o.code == grpc.StatusCode.OK)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


def signed_size(store: Store) -> int:
    try:
        return LedgerReader(store).checkpoint().size
    except AuditError:
        return 0


def test_ledger_on_postgresql_one_sequence_and_one_signer_at_a_time(
    postgres_url: str, pg_server: PostgresServer
) -> None:
    """Two replicas' stores append concurrently: one gap-free sequence. Two checkpointers: one holds the
    signer lease; when its holder stops or its session dies, the other signs; checkpoints only grow."""
    stores = [open_store(postgres_url), open_store(postgres_url)]
    commits = [GroupCommit(s, window=0.002) for s in stores]
    ledgers = [AuditLedger(s, c, lambda: datetime.now(UTC)) for s, c in zip(stores, commits, strict=True)]
    got: list[int] = []
    lock = threading.Lock()

    def writer(ledger: AuditLedger, w: int) -> None:
        for i in range(15):
            (seq,) = ledger.record(Draft(Kind.SERVER_START, SYSTEM, fields={"address": f"w{w}", "count": i}))
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=writer, args=(ledgers[w % 2], w)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(90)) and recover(stores[1]).size == 90

    first = Checkpointer(stores[0], SIGNER, lambda: datetime.now(UTC), interval=0.05)
    wait_until(lambda: first.signing and signed_size(stores[0]) == 90, "the first checkpointer signs")
    second = Checkpointer(stores[1], SIGNER, lambda: datetime.now(UTC), interval=0.05)
    ledgers[1].record(Draft(Kind.SERVER_START, SYSTEM, fields={"address": "b", "count": 0}))
    wait_until(lambda: signed_size(stores[1]) == 91, "the new entry is signed")
    assert first.signing and not second.signing
    # the holder's session dies (a partition, a killed process): the lease goes with it
    database = make_url(postgres_url).database
    pg_server.execute(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        f"WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{database}'"
    )
    ledgers[1].record(Draft(Kind.SERVER_START, SYSTEM, fields={"address": "b", "count": 1}))
    wait_until(lambda: signed_size(stores[1]) == 92, "signing continues after the holder's session died")
    wait_until(lambda: first.signing != second.signing, "exactly one holds the lease again")
    holder, other = (first, second) if first.signing else (second, first)
    assert holder.close() is None  # nothing new to sign; it lets the lease go
    ledgers[0].record(Draft(Kind.SERVER_START, SYSTEM, fields={"address": "a", "count": 2}))
    wait_until(lambda: other.signing and signed_size(stores[0]) == 93, "the other replica takes over")
    other.close()
    for c in commits:
        c.close()
    with stores[0].reader() as conn:
        cps = checkpoints_between(conn, 0, 93)
    assert [c.size for c in cps] == sorted({c.size for c in cps}) and cps[-1].size == 93
    assert [c.time for c in cps] == sorted({c.time for c in cps})  # strictly increasing
