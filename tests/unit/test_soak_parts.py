"""The soak's pure helpers: the key-material scan finds a key in every encoding at any offset and nothing
in clean files; the fault schedule is reproducible from its seed and runs every kind; fault lists parse
with a coded error for unknown kinds; percentiles are nearest-rank; throughput bins count by outcome."""

from __future__ import annotations

import base64
import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import grpc
import pytest

from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from kms.clock import read_offset
from sovereign.devtools.openbao_server import free_port
from sovereign.soak.checker import ViolationKind
from sovereign.soak.faults import (
    ALL_FAULTS,
    REPLICA_FAULTS,
    SINGLE_FAULTS,
    FaultError,
    FaultKind,
    FaultRecord,
    parse_faults,
    schedule,
    write_offset,
)
from sovereign.soak.monitor import BOUNDS, bound
from sovereign.soak.netns import Forwarder
from sovereign.soak.report import percentile, svg, throughput
from sovereign.soak.scan import forms, scan
from sovereign.soak.workload import Node, Operator, OpRecord, Recorder, Workload

KEY = bytes(range(1, 33))


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"xyz", b"log line: "])
@pytest.mark.parametrize(
    "encode",
    [
        lambda b: b,
        lambda b: b.hex().encode(),
        lambda b: b.hex().upper().encode(),
        base64.b64encode,
        base64.urlsafe_b64encode,
    ],
)
def test_the_scan_finds_a_key_in_any_encoding_at_any_offset(
    tmp_path: Path, prefix: bytes, encode: object
) -> None:
    assert callable(encode)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leak.log").write_bytes(
        os.urandom(100) + encode(prefix + KEY + b"tail") + os.urandom(50)
    )
    (tmp_path / "clean.db").write_bytes(os.urandom(4096))
    report = scan([tmp_path], {KEY})
    assert report.files == 2 and report.keys == 1
    assert len(report.hits) == 1 and "leak.log" in report.hits[0]
    assert [v.kind for v in report.violations()] == [ViolationKind.KEY_MATERIAL_IN_FILE]


def test_the_scan_of_clean_files_finds_nothing_and_never_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(os.urandom(1 << 16))
    report = scan([tmp_path], {KEY, bytes(32)[:-1] + b"\x01"})
    assert report.hits == [] and report.keys == 2
    assert KEY.hex() not in repr(report.to_dict())


def test_every_form_is_key_dependent_only() -> None:
    other = bytes(32)
    assert all(f not in b"".join(forms(other)) for f in forms(KEY))


def test_the_schedule_is_reproducible_and_runs_every_kind() -> None:
    one = schedule(ALL_FAULTS, 60, 7, warmup=6, tail=7.5, interval=30)
    assert one == schedule(ALL_FAULTS, 60, 7, warmup=6, tail=7.5, interval=30)
    assert one != schedule(ALL_FAULTS, 60, 8, warmup=6, tail=7.5, interval=30)
    assert sorted(k for _, k in one) == sorted(ALL_FAULTS)
    times = [t for t, _ in one]
    assert times == sorted(times) and times[0] >= 6 and times[-1] <= 60 - 7.5
    long = schedule((FaultKind.SERVE_KILL,), 1800, 1, warmup=6, tail=8, interval=30)
    assert len(long) == (1800 - 14) // 30
    assert schedule((), 60, 1, warmup=6, tail=8, interval=30) == []


def test_fault_lists_parse_and_unknown_kinds_are_refused() -> None:
    assert parse_faults("all") == ALL_FAULTS
    assert parse_faults("none") == ()
    assert parse_faults("serve-kill, disk-full,serve-kill") == (FaultKind.SERVE_KILL, FaultKind.DISK_FULL)
    with pytest.raises(FaultError, match="unknown fault 'partition'"):
        parse_faults("serve-kill,partition")


def test_each_topology_has_its_own_fault_kinds() -> None:
    assert parse_faults("all", "single") == SINGLE_FAULTS and FaultKind.CLOCK_STEP in SINGLE_FAULTS
    assert parse_faults("all", "replicas") == REPLICA_FAULTS
    assert FaultKind.DISK_FULL not in REPLICA_FAULTS and FaultKind.BAO_KILL not in REPLICA_FAULTS
    assert parse_faults("partition-pg,clock-step", "replicas") == (
        FaultKind.PARTITION_PG,
        FaultKind.CLOCK_STEP,
    )
    with pytest.raises(FaultError, match="does not apply to the single topology"):
        parse_faults("pg-restart", "single")
    with pytest.raises(FaultError, match="does not apply to the replicas topology"):
        parse_faults("disk-full", "replicas")


def test_a_clock_step_replaces_the_offset_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "clock-0"
    write_offset(path, 90.0)
    assert read_offset(path) == 90.0
    write_offset(path, -90.0)
    assert read_offset(path) == -90.0 and sorted(p.name for p in tmp_path.iterdir()) == ["clock-0"]


def test_process_bounds_are_looked_up_by_kind() -> None:
    assert bound("serve-b") == BOUNDS["serve"] and bound("openbao-bao-3") == BOUNDS["openbao"]
    assert bound("postgres") == BOUNDS["postgres"] and bound("driver") == BOUNDS["driver"]


def test_the_forwarder_relays_both_ways_and_closes_with_its_peer() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    port = upstream.getsockname()[1]
    listen = ("127.0.0.1", free_port())
    fwd = Forwarder(listen, ("127.0.0.1", port)).start()
    try:
        client = socket.create_connection(listen, timeout=5)
        server, _ = upstream.accept()
        server.settimeout(5)
        client.sendall(b"ping")
        assert server.recv(4) == b"ping"
        server.sendall(b"pong")
        assert client.recv(4) == b"pong"
        server.close()
        assert client.recv(4) == b""  # the upstream closed: so does the relayed connection
        client.close()
    finally:
        fwd.close()
        upstream.close()


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_throughput_bins_by_outcome_and_the_plot_marks_faults() -> None:
    ops = [OpRecord(0.2, "release", True, "ok", 0.1), OpRecord(1.5, "release", False, "KMS_SEALED", 0.2),
           OpRecord(1.6, "renew", True, "ok", 0.1)]  # fmt: skip
    series = throughput(ops, 3)
    assert series == [
        {"t": 0, "ok": 1, "failed": 0},
        {"t": 1, "ok": 1, "failed": 1},
        {"t": 2, "ok": 0, "failed": 0},
    ]
    fault = FaultRecord(FaultKind.BAO_SEAL, 1.0, healed=1.8, served=2.0)
    picture = svg(series, [fault], "t")
    assert picture.startswith("<svg") and "bao-seal at 1.0s" in picture


def _node_on_closed_port() -> tuple[Node, ControlPlaneClient]:
    client = ControlPlaneClient(
        f"127.0.0.1:{free_port()}", insecure_dev=True, timeout=2
    )  # nothing listens there
    return Node(cast(NodeAgent, SimpleNamespace(client=client)), "snp"), client


def test_a_node_dropped_during_an_operation_keeps_its_client_until_the_operation_ends() -> None:
    """The 30-minute soak counted a DRIVER_ValueError: a worker renewed a node another worker had just
    revoked and dropped, on its closed channel (grpc raises ValueError there)."""
    node, client = _node_on_closed_port()
    with node.in_use() as usable:
        assert usable
        node.close()  # the revoking worker drops it while this operation runs
        with pytest.raises(NodeError):  # still open: the call fails as a call (nothing listens), typed
            client.challenge("n")
    with pytest.raises(ValueError, match="closed channel"):  # closed once the operation ended
        client.challenge("n")
    with node.in_use() as usable:
        assert not usable  # later operations skip it


def test_the_workload_skips_a_dropped_node_instead_of_calling_its_closed_client() -> None:
    node, _ = _node_on_closed_port()
    node.close()
    workload = Workload.__new__(Workload)  # only the recorder is needed for these two calls
    workload.rec = Recorder()
    calls: list[str] = []
    assert not workload._attest(node, "renew", lambda: calls.append("renew"))
    assert not workload.release(node, "dataset/train", "read")
    assert calls == [] and workload.rec.ops == [] and workload.rec.refusals == []


class _Unavailable(grpc.RpcError):
    def trailing_metadata(self) -> tuple[()]:
        return ()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def test_a_node_whose_approval_failed_leaves_the_workload() -> None:
    """The 30-minute run after the fixes above: one approval failed (STORAGE_ERROR during a disk-full) and
    1,756 renewals were then refused NODE_SUSPENDED_BY_OPERATOR: the suspended node needed a renewal, so
    every renew picked it first."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise _Unavailable()

    def no_release(*args: object, **kwargs: object) -> None:
        raise NodeError("suspended", code=NodeCode.RELEASE_DENIED)

    client = SimpleNamespace(release_key=no_release, close=lambda: None)
    agent = SimpleNamespace(node_id="n-1", identity=NodeIdentity.generate(), client=client)
    node = Node(cast(NodeAgent, agent), "snp", state="attested")
    operator = SimpleNamespace(
        admin=SimpleNamespace(SuspendNode=lambda *a, **k: None, ApproveNode=refuse), metadata=lambda: ()
    )
    workload = Workload.__new__(Workload)
    workload.rec, workload.timeout, workload.nodes = Recorder(), 1.0, [node]
    workload._nodes_lock, workload._operator_lock = threading.Lock(), threading.Lock()
    workload.alice = workload.bob = cast(Operator, operator)
    workload.suspend_and_approve(lambda nodes: nodes[0])
    assert [(r.op, r.code) for r in workload.rec.ops] == [
        ("suspend", "ok"),
        ("release-while-suspended", "RELEASE_DENIED"),
        ("approve", "UNAVAILABLE"),
    ]
    assert workload.nodes == [] and node.dropped
    assert not workload.renew_oldest()  # nothing left to renew
