"""What the writer reports about a sealed output: digests computed while sealing (checked with hashlib
over the plaintext and the file on disk), the ``output`` request's validation, and the agent's refusal of
a report before registration reaching the workload as ``WORKLOAD_OUTPUT_NOT_RECORDED``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.local_server import LocalApiServer
from enclave.resident import ResidentAgent
from enclave.workload import (
    MemoryKeySource,
    OutputReport,
    SealedOutput,
    WorkloadCode,
    WorkloadError,
    agent_api,
    create_sealed,
)
from enclave.workload.keys import AgentSocketKeySource
from enclave.workload.output_report import ReportInvalid
from enclave.workload.writer import SealedWriter
from kms.envelope import read_header


def _keys() -> MemoryKeySource:
    keys = MemoryKeySource()
    keys.add("model/main", 3, os.urandom(32), purposes=("read", "write"))
    return keys


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 4096 + 17])
def test_the_writer_hashes_what_it_seals(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "out.sealed"
    with create_sealed(path, key="model/main", keys=_keys(), chunk_size=4096) as writer:
        writer.write(data[: size // 2])
        writer.write(data[size // 2 :])
        assert writer.output is None  # only once closed
    out = writer.output
    assert out is not None and out.key_ref == "model/main@v3" and out.size == size
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    sealed = path.read_bytes()
    assert out.sealed_sha256 == hashlib.sha256(sealed).hexdigest()
    with path.open("rb") as f:
        read_header(f)  # leaves the file at the first chunk record
        header_len = f.tell()
    assert out.header_sha256 == hashlib.sha256(sealed[:header_len]).hexdigest()


def test_on_close_runs_once_with_the_output_and_an_abort_reports_nothing(tmp_path: Path) -> None:
    seen: list[SealedOutput] = []
    key = _keys().write_key("model/main")
    with SealedWriter(tmp_path / "a.sealed", key, chunk_size=4096, on_close=seen.append) as w:
        w.write(b"weights")
    w.close()
    assert [o.sha256 for o in seen] == [hashlib.sha256(b"weights").hexdigest()]
    with (
        pytest.raises(RuntimeError),
        SealedWriter(tmp_path / "b.sealed", key, chunk_size=4096, on_close=seen.append) as w2,
    ):
        w2.write(b"x")
        raise RuntimeError("training crashed")
    assert len(seen) == 1 and not (tmp_path / "b.sealed").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"key_name": "Bad Name"},
        {"key_version": 0},
        {"sha256": "ab"},
        {"sealed_sha256": "G" * 64},
        {"size": -1},
        {"size": True},
        {"job": "x" * 129},
        {"job": "tab\there"},
        {"step": -1},
    ],
)
def test_a_malformed_report_is_refused(change: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "key_name": "model/main", "key_version": 1, "header_sha256": "a" * 64, "sha256": "b" * 64,
        "sealed_sha256": "c" * 64, "size": 1, **change,
    }  # fmt: skip
    with pytest.raises(ReportInvalid):
        OutputReport(**fields)  # type: ignore[arg-type]


def test_a_report_round_trips_through_the_request() -> None:
    report = OutputReport("model/main", 2, "a" * 64, "b" * 64, "c" * 64, 10, job="train", step=5)
    assert OutputReport.from_request(report.to_request()) == report
    with pytest.raises(ReportInvalid):
        OutputReport.from_request({**report.to_request(), "key_ref": "model/main"})


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[Path]:
    def never() -> object:
        raise AssertionError("the agent must not register here")

    srv = LocalApiServer(ResidentAgent(never), tmp_path / "agent.sock", mode=0o600)  # type: ignore[arg-type]
    srv.start()
    yield srv.path
    srv.close()


def test_a_report_before_registration_is_not_recorded(agent_socket: Path) -> None:
    source = AgentSocketKeySource(str(agent_socket))
    with pytest.raises(WorkloadError) as info:
        source.report_output(OutputReport("model/main", 1, "a" * 64, "b" * 64, "c" * 64, 1))
    assert info.value.code is WorkloadCode.WORKLOAD_OUTPUT_NOT_RECORDED
    assert getattr(info.value, "reason", "") == "AGENT_NOT_READY"
    # a malformed report is the agent's REQUEST_INVALID
    reply = agent_api.call(str(agent_socket), {"op": "output", "key_ref": "nope"})
    assert reply["ok"] is False and reply["code"] == agent_api.REQUEST_INVALID
