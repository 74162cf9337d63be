"""Sealed streams opened and sealed by the agent over its real Unix socket (the agent's control plane is a
fake NodeAgent that releases fixed keys; the real processes are in tests/e2e/test_resident_agent.py):
the workload reads and writes with no key in its memory, bad chunks give the same codes as in-process
opening, requests out of bounds are coded refusals, and a revocation stops the next chunk."""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.client import Lease, NodeState, Registration
from enclave.local_server import LocalApiServer
from enclave.release_request import ReleasedKey
from enclave.resident import AgentState, ResidentAgent
from enclave.workload import WorkloadCode, WorkloadError, agent_api, create_sealed, open_sealed
from enclave.workload.keys import AgentRefused, AgentSocketKeySource, MemoryKeySource
from kms.envelope import Code, StreamError, decrypt_stream, encrypt_stream, read_header

KEYS = {"dataset/train": os.urandom(32), "model/main": os.urandom(32)}
CHUNK = 4096
RECORD = 17 + CHUNK + 16
DATA = os.urandom(5 * CHUNK + 123)


class _Client:
    timeout = 1.0

    def close(self) -> None:
        pass


class FakeNode:
    """Registers ATTESTED for an hour; releases version 1 of the keys in ``KEYS``."""

    def __init__(self) -> None:
        self.client = _Client()
        self.node_id = "node-1"
        now = datetime.now(UTC)
        self.registration = Registration(
            "node-1", NodeState.ATTESTED, Lease("l1", now, now + timedelta(hours=1)), (), ("trainers",), 1, 1
        )
        self.releases = 0
        self.outputs: list[object] = []

    def register(self) -> Registration:
        return self.registration

    def renew(self) -> Registration:
        return self.registration

    def release(self, name: str, purpose: str = "read", version: int = 0) -> ReleasedKey:
        self.releases += 1
        return ReleasedKey(KEYS[name], name, 1, purpose, 1, datetime.now(UTC) + timedelta(hours=1))

    def record_output(self, report: object) -> int:
        """A sealed output the workload reported (provenance); the ledger sequence a server would give."""
        self.outputs.append(report)
        return len(self.outputs)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalApiServer]:
    agent = ResidentAgent(FakeNode)  # type: ignore[arg-type]
    agent.start()
    assert agent.wait_ready(10)
    srv = LocalApiServer(agent, tmp_path / "agent.sock", mode=0o600)
    srv.start()
    yield srv
    srv.close()
    agent.stop()


@pytest.fixture
def sealed(tmp_path: Path) -> Path:
    path = tmp_path / "shard.sealed"
    with path.open("wb") as out:
        encrypt_stream(KEYS["dataset/train"], DATA, out, key_ref="dataset/train@v1", chunk_size=CHUNK)
    return path


def agent_source(server: LocalApiServer) -> AgentSocketKeySource:
    return AgentSocketKeySource(str(server.path))


def test_reading_through_the_agent_matches_the_plaintext_with_random_access(
    server: LocalApiServer, sealed: Path
) -> None:
    with open_sealed(sealed, keys=agent_source(server), via_agent=True) as f:
        assert f.read() == DATA
        for pos, size in [(0, 1), (CHUNK - 3, 10), (3 * CHUNK + 5, 2 * CHUNK), (len(DATA) - 7, 100)]:
            f.seek(pos)
            assert f.read(size) == DATA[pos : pos + size]
    counters = server.agent.counters.snapshot()
    assert counters.chunks[("dataset/train", "open")] >= 6
    assert counters.handouts == 0  # no key left the agent


def test_a_tampered_or_truncated_file_fails_with_the_same_code_and_chunk_as_in_process(
    server: LocalApiServer, sealed: Path, tmp_path: Path
) -> None:
    start = len(read_header(io.BytesIO(sealed.read_bytes())).raw)
    blob = bytearray(sealed.read_bytes())
    blob[start + 2 * RECORD + 50] ^= 1
    tampered = tmp_path / "tampered.sealed"
    tampered.write_bytes(bytes(blob))
    truncated = tmp_path / "truncated.sealed"
    truncated.write_bytes(sealed.read_bytes()[: start + 3 * RECORD])
    local = MemoryKeySource()
    local.add("dataset/train", 1, KEYS["dataset/train"])
    for keys, via in ((agent_source(server), True), (local, False)):
        with open_sealed(tampered, keys=keys, via_agent=via) as f:
            assert f.read(2 * CHUNK) == DATA[: 2 * CHUNK]
            with pytest.raises(StreamError) as bad:
                f.read(1)
        assert (bad.value.code, bad.value.chunk) == (Code.STREAM_CHUNK_TAMPERED, 2)
        with pytest.raises(StreamError) as cut:
            open_sealed(truncated, keys=keys, via_agent=via)
        assert (cut.value.code, cut.value.chunk) == (Code.STREAM_TRUNCATED, 3)
    assert server.agent.counters.snapshot().refusals_by_reason[agent_api.STREAM_FAILED] >= 1


def test_writing_through_the_agent_seals_under_the_current_write_key(
    server: LocalApiServer, tmp_path: Path
) -> None:
    out = tmp_path / "ckpt.sealed"
    with create_sealed(
        out, key="model/main", keys=agent_source(server), chunk_size=CHUNK, via_agent=True
    ) as w:
        assert w.key_ref == "model/main@v1"
        w.write(DATA[:100])
        w.write(DATA[100:])
    plain = io.BytesIO()
    decrypt_stream(KEYS["model/main"], io.BytesIO(out.read_bytes()), plain)
    assert plain.getvalue() == DATA
    assert server.streams.sealing == 0  # the last chunk ended the stream
    counters = server.agent.counters.snapshot()
    assert counters.chunks[("model/main", "seal")] == 6 and counters.handouts == 0


def test_an_aborted_writer_leaves_no_file_and_no_stream(server: LocalApiServer, tmp_path: Path) -> None:
    out = tmp_path / "ckpt.sealed"
    with (
        pytest.raises(RuntimeError),
        create_sealed(
            out, key="model/main", keys=agent_source(server), chunk_size=CHUNK, via_agent=True
        ) as w,
    ):
        w.write(DATA)
        raise RuntimeError("the training step failed")
    assert not out.exists() and not list(tmp_path.glob(".ckpt*"))
    assert server.streams.sealing == 0


def test_a_revocation_stops_the_next_chunk_of_an_open_file_and_drops_sealing_streams(
    server: LocalApiServer, sealed: Path, tmp_path: Path
) -> None:
    source = agent_source(server)
    writer = create_sealed(
        tmp_path / "out.sealed", key="model/main", keys=source, chunk_size=CHUNK, via_agent=True
    )
    writer.write(DATA[: 2 * CHUNK])
    assert server.streams.sealing == 1
    with open_sealed(sealed, keys=source, via_agent=True) as f:
        assert f.read(CHUNK) == DATA[:CHUNK]
        server.agent._revoked("test: an operator revoked the node")
        assert server.agent.state is AgentState.REVOKED and server.streams.sealing == 0
        with pytest.raises(AgentRefused) as info:
            f.read(CHUNK)
    assert info.value.code is WorkloadCode.WORKLOAD_KEY_UNAVAILABLE
    assert info.value.reason == agent_api.NODE_REVOKED
    with pytest.raises(AgentRefused) as sealing:
        writer.write(DATA[: 2 * CHUNK])  # the next full chunk goes to the agent
    assert sealing.value.reason == agent_api.NODE_REVOKED
    writer.abort()
    assert not (tmp_path / "out.sealed").exists()


def test_the_wrong_key_source_is_refused(sealed: Path) -> None:
    local = MemoryKeySource()
    local.add("dataset/train", 1, KEYS["dataset/train"])
    with pytest.raises(WorkloadError) as info:
        open_sealed(sealed, keys=local, via_agent=True)
    assert info.value.code is WorkloadCode.WORKLOAD_INPUT_INVALID


def call(server: LocalApiServer, request: dict[str, object], payload: bytes | None) -> dict[str, object]:
    reply, _ = agent_api.call_with_payload(str(server.path), request, payload, timeout=10)
    return reply


def test_stream_requests_out_of_bounds_are_coded(server: LocalApiServer, sealed: Path) -> None:
    raw = sealed.read_bytes()
    header = read_header(io.BytesIO(raw))
    good = base64.b64encode(header.raw).decode()
    record = raw[len(header.raw) : len(header.raw) + RECORD]
    cases: list[tuple[dict[str, object], bytes | None, str]] = [
        ({"op": "open_chunk", "header": "%%%", "index": 0}, record, agent_api.REQUEST_INVALID),
        ({"op": "open_chunk", "header": good, "index": -1}, record, agent_api.REQUEST_INVALID),
        ({"op": "open_chunk", "header": good, "index": True}, record, agent_api.REQUEST_INVALID),
        ({"op": "open_chunk", "header": good, "index": 0}, record + b"x" * 100, agent_api.REQUEST_INVALID),
        ({"op": "open_chunk", "header": "A" * 5000, "index": 0}, record, agent_api.REQUEST_INVALID),
        ({"op": "open_chunk", "header": base64.b64encode(b"junk").decode(), "index": 0}, record,
         agent_api.STREAM_FAILED),
        ({"op": "open_chunk", "header": good, "index": 1}, record, agent_api.STREAM_FAILED),  # wrong place
        ({"op": "seal_begin", "name": "model/main", "chunk_size": agent_api.MAX_STREAM_CHUNK + 1}, None,
         agent_api.REQUEST_INVALID),
        ({"op": "seal_begin", "name": "model/main", "chunk_size": "1"}, None, agent_api.REQUEST_INVALID),
        ({"op": "seal_begin", "name": "../x", "chunk_size": CHUNK}, None, agent_api.REQUEST_INVALID),
        ({"op": "seal_chunk", "stream": "nope", "last": True}, b"x", agent_api.STREAM_UNKNOWN),
        ({"op": "seal_chunk", "stream": "nope", "last": 1}, b"x", agent_api.REQUEST_INVALID),
        ({"op": "seal_abort", "stream": 7}, None, agent_api.STREAM_UNKNOWN),
    ]  # fmt: skip
    for request, payload, code in cases:
        reply = call(server, request, payload)
        assert reply["ok"] is False and reply["code"] == code, (request, reply)
        assert reply["message"]
    placed = call(server, {"op": "open_chunk", "header": good, "index": 1}, record)
    assert (placed["stream_code"], placed["chunk"]) == ("STREAM_REORDERED", 1)


def test_a_payload_over_the_limit_is_refused_before_it_is_read(server: LocalApiServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(server.path))
        agent_api.send_frame(sock, {"v": 1, "op": "open_chunk", "header": "", "index": 0})
        sock.sendall(struct.pack(">I", agent_api.MAX_PAYLOAD + 1))
        answer = agent_api.recv_frame(sock)
    assert answer["ok"] is False and answer["code"] == agent_api.REQUEST_INVALID


def test_a_sealing_stream_is_sealed_in_order_once_and_belongs_to_its_uid(server: LocalApiServer) -> None:
    streams = server.streams
    begun, _ = streams.seal_begin({"name": "model/main", "chunk_size": CHUNK}, os.getuid())
    stream = begun["stream"]
    with pytest.raises(Exception) as other:
        streams.seal_chunk({"stream": stream, "last": False}, bytes(CHUNK), os.getuid() + 1)
    assert getattr(other.value, "code", "") == agent_api.STREAM_UNKNOWN
    streams.seal_chunk({"stream": stream, "last": True}, b"end", os.getuid())
    with pytest.raises(Exception) as again:  # a finished stream cannot seal chunk 0 a second time
        streams.seal_chunk({"stream": stream, "last": True}, b"end", os.getuid())
    assert getattr(again.value, "code", "") == agent_api.STREAM_UNKNOWN


def test_sealing_streams_are_bounded_least_recently_used_first(server: LocalApiServer) -> None:
    streams = server.streams
    streams.max_streams = 3
    ids = [streams.seal_begin({"name": "model/main", "chunk_size": CHUNK}, 0)[0]["stream"] for _ in range(4)]
    assert streams.sealing == 3
    with pytest.raises(Exception) as gone:
        streams.seal_abort({"stream": ids[0]}, 0)
    assert getattr(gone.value, "code", "") == agent_api.STREAM_UNKNOWN
    assert streams.seal_abort({"stream": ids[3]}, 0) == {"ok": True}


def test_an_unexpected_failure_still_answers_with_a_code(
    server: LocalApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.streams, "seal_begin", broken)
    reply = call(server, {"op": "seal_begin", "name": "model/main", "chunk_size": CHUNK}, None)
    assert reply["ok"] is False and reply["code"] == agent_api.AGENT_ERROR
    assert "a bug" not in str(reply["message"])  # the type, never the message (it could carry data)


def test_an_agent_that_hands_out_no_keys_still_opens_and_seals(
    server: LocalApiServer, sealed: Path, tmp_path: Path
) -> None:
    server.hand_out_keys = False
    source = agent_source(server)
    with pytest.raises(AgentRefused) as info:
        source.read_key(b"dataset/train@v1")
    assert info.value.reason == agent_api.KEY_HANDOUT_DISABLED
    assert info.value.code is WorkloadCode.WORKLOAD_KEY_UNAVAILABLE
    with pytest.raises(AgentRefused):
        open_sealed(sealed, keys=source)  # in-process opening needs the key
    with open_sealed(sealed, keys=source, via_agent=True) as f:
        assert f.read() == DATA
    out = tmp_path / "out.sealed"
    with create_sealed(out, key="model/main", keys=source, chunk_size=CHUNK, via_agent=True) as w:
        w.write(DATA)
    assert source.check(["dataset/train"]) == ["dataset/train@v1"]  # no key material: still answered
    assert server.agent.counters.snapshot().handouts == 0


def test_chunks_are_logged_at_debug_and_a_stream_start_at_info(
    server: LocalApiServer, sealed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="enclave.local_server"):
        with open_sealed(sealed, keys=agent_source(server), via_agent=True) as f:
            assert f.read() == DATA
        with create_sealed(
            tmp_path / "out.sealed",
            key="model/main",
            keys=agent_source(server),
            chunk_size=CHUNK,
            via_agent=True,
        ) as w:
            w.write(DATA)
    levels: dict[str, set[int]] = {}
    for record in caplog.records:
        message = record.getMessage()
        kind = (
            "chunk" if ("opened chunk" in message or "sealed a chunk" in message) else message.split(" ")[2]
        )
        levels.setdefault(kind, set()).add(record.levelno)
    assert levels["chunk"] == {logging.DEBUG}  # 12 chunks, none at INFO
    assert levels["began"] == {logging.INFO}
