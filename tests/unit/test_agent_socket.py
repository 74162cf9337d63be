"""The agent's local API server on a real Unix socket (no control plane: the agent has not registered):
frames out of contract and requests before registration get coded refusals; the socket is never created
world-accessible; a live agent's socket is not taken over."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.errors import NodeCode, NodeError
from enclave.local_server import LocalApiServer, Peer
from enclave.resident import ResidentAgent
from enclave.workload import WorkloadCode, WorkloadError, agent_api
from enclave.workload.keys import AgentSocketKeySource


def _never() -> object:
    raise AssertionError("the agent must not register in these tests")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalApiServer]:
    agent = ResidentAgent(_never)  # type: ignore[arg-type]  # never started
    srv = LocalApiServer(agent, tmp_path / "agent.sock", mode=0o600)
    srv.start()
    yield srv
    srv.close()


def raw(path: Path, payload: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(payload)
        return agent_api.recv_frame(sock)


def test_socket_mode_and_status(server: LocalApiServer) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    status = agent_api.call(str(server.path), {"op": "status"})
    assert status["ok"] is True and status["state"] == "STARTING"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack(">I", 3) + b"[1]", agent_api.REQUEST_INVALID),
        (struct.pack(">I", 4) + b"\xff\xfe{}", agent_api.REQUEST_INVALID),
        (struct.pack(">I", agent_api.MAX_FRAME + 1), agent_api.REQUEST_INVALID),
        (struct.pack(">I", 12) + b'{"op":"key"}', agent_api.REQUEST_INVALID),  # no version
        (struct.pack(">I", 19) + b'{"v":1,"op":"nope"}', agent_api.REQUEST_INVALID),
    ],
)
def test_frames_out_of_contract_are_refused(server: LocalApiServer, payload: bytes, code: str) -> None:
    answer = raw(server.path, payload)
    assert answer["ok"] is False and answer["code"] == code and answer["message"]


def test_a_key_before_registration_is_not_ready(server: LocalApiServer) -> None:
    with pytest.raises(WorkloadError) as info:
        AgentSocketKeySource(str(server.path)).read_key(b"dataset/train@v1")
    assert info.value.code is WorkloadCode.WORKLOAD_KEY_UNAVAILABLE
    assert info.value.reason == agent_api.NOT_READY  # type: ignore[attr-defined]
    bad = agent_api.call(str(server.path), {"op": "key", "name": "../x", "purpose": "read"})
    assert bad["code"] == agent_api.REQUEST_INVALID


def test_unreachable_agent_is_coded(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError) as info:
        AgentSocketKeySource(str(tmp_path / "none.sock")).read_key(b"dataset/train@v1")
    assert info.value.code is WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE


def test_allow_list(server: LocalApiServer) -> None:
    assert server.allowed(Peer(1, os.getuid(), 12345))
    assert not server.allowed(Peer(1, 54321, 54321))
    other = LocalApiServer(
        server.agent, server.path.with_name("x.sock"), allowed_uids=[54321], allowed_gids=[777]
    )
    assert (
        other.allowed(Peer(1, 54321, 1))
        and other.allowed(Peer(1, 2, 777))
        and not other.allowed(Peer(1, 2, 3))
    )


def test_world_accessible_mode_and_a_live_socket_are_refused(server: LocalApiServer, tmp_path: Path) -> None:
    with pytest.raises(NodeError) as mode:
        LocalApiServer(server.agent, tmp_path / "w.sock", mode=0o666)
    assert mode.value.code is NodeCode.CONFIG_INVALID
    with pytest.raises(NodeError) as taken:
        LocalApiServer(server.agent, server.path).start()
    assert taken.value.code is NodeCode.CONFIG_INVALID
    (tmp_path / "file").write_text("x")
    with pytest.raises(NodeError) as not_socket:
        LocalApiServer(server.agent, tmp_path / "file").start()
    assert not_socket.value.code is NodeCode.CONFIG_INVALID
