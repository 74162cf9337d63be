"""The agent's Prometheus endpoint on loopback, scraped over HTTP: the families are there and the counters
move with handouts, refusals and chunks opened through the agent (fake control plane, as in
test_agent_streams; the scrape of a real agent process is in tests/e2e/test_resident_agent.py)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from unit.test_agent_streams import FakeNode

from enclave.agent_metrics import AgentCollector, MetricsEndpoint, serve_metrics
from enclave.errors import NodeCode, NodeError
from enclave.local_server import LocalApiServer
from enclave.resident import ResidentAgent
from enclave.workload import agent_api


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[LocalApiServer, MetricsEndpoint]]:
    resident = ResidentAgent(FakeNode)
    resident.start()
    assert resident.wait_ready(10)
    server = LocalApiServer(resident, tmp_path / "agent.sock", mode=0o600)
    server.start()
    endpoint = serve_metrics(AgentCollector(resident, lambda: server.streams.sealing), "127.0.0.1:0")
    yield server, endpoint
    endpoint.close()
    server.close()
    resident.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_move_with_what_the_agent_does(agent: tuple[LocalApiServer, MetricsEndpoint]) -> None:
    server, endpoint = agent
    before = scrape(endpoint.port)
    assert before[("sovereign_agent_registrations_total", ())] == 1
    assert before[("sovereign_agent_attested", ())] == 1
    assert before[("sovereign_agent_keys_held", ())] == 0
    assert (
        "sovereign_agent_key_handouts_total",
        (("key", "dataset/train"), ("purpose", "read")),
    ) not in before
    path = str(server.path)
    for _ in range(2):
        assert agent_api.call(path, {"op": "key", "name": "dataset/train", "purpose": "read"})["ok"] is True
    assert agent_api.call(path, {"op": "key", "name": "../x", "purpose": "read"})["ok"] is False
    begun, _ = agent_api.call_with_payload(
        path, {"op": "seal_begin", "name": "model/main", "chunk_size": 16}, None
    )
    agent_api.call_with_payload(
        path, {"op": "seal_chunk", "stream": begun["stream"], "last": False}, bytes(16)
    )
    after = scrape(endpoint.port)
    assert after[("sovereign_agent_key_handouts_total", (("key", "dataset/train"), ("purpose", "read")))] == 2
    assert after[("sovereign_agent_refusals_total", (("reason", agent_api.REQUEST_INVALID),))] == 1
    assert after[("sovereign_agent_stream_chunks_total", (("key", "model/main"), ("op", "seal")))] == 1
    assert after[("sovereign_agent_keys_held", ())] == 2  # dataset/train (read), model/main (write)
    assert after[("sovereign_agent_sealing_streams", ())] == 1
    server.agent._revoked("test")
    revoked = scrape(endpoint.port)
    assert revoked[("sovereign_agent_keys_held", ())] == 0 and revoked[("sovereign_agent_attested", ())] == 0
    assert revoked[("sovereign_agent_sealing_streams", ())] == 0


def test_a_port_in_use_is_coded(agent: tuple[LocalApiServer, MetricsEndpoint]) -> None:
    server, endpoint = agent
    with pytest.raises(NodeError) as info:
        serve_metrics(AgentCollector(server.agent), f"127.0.0.1:{endpoint.port}")
    assert info.value.code is NodeCode.CONFIG_INVALID
