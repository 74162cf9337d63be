"""Monitoring against the real server: the metric families an operations team needs, /metrics and
/healthz only, gRPC health on the operator port, and every dashboard and alert query naming a metric
the server exports."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from e2e.node_client import NodeClient, rpc_error
from e2e.world import SNP_MEASUREMENT, ServerProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(sovereign_[a-z0-9_]+)\b")


def _get(server: ServerProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _samples(text: str) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            name, _, labels = head.partition("{")
            out.setdefault(name, []).append((labels.rstrip("}"), float(value)))
    return out


@pytest.fixture(scope="module")
def scraped(server: ServerProcess, pki: SimulatedPki) -> dict[str, list[tuple[str, float]]]:
    """The exposition after one registration, one grant and one denial."""
    node = NodeClient(server.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="monitored")
    node.register(requested_groups=["trainers"])
    node.release("dataset/train")
    rpc_error(node.release_stub.ReleaseKey, node.release_request("dataset/train", "write"))
    # The first checkpoint is signed within a second of the first entries, and the stored-state gauges are
    # read at most every 5 s: scrape until both show (never longer than 20 s).
    deadline = time.monotonic() + 20
    while True:
        status, text = _get(server, "/metrics")
        assert status == 200
        samples = _samples(text)
        if "sovereign_checkpoint_size" in samples or time.monotonic() > deadline:
            return samples
        time.sleep(1)


def test_state_families_are_exported(scraped: dict[str, list[tuple[str, float]]]) -> None:
    attested = [
        v
        for labels, v in scraped["sovereign_nodes"]
        if 'state="attested"' in labels and 'tee="snp"' in labels
    ]
    assert attested and attested[0] >= 1
    horizons = {labels for labels, _ in scraped["sovereign_leases_expiring"]}
    assert horizons == {'within_seconds="300"', 'within_seconds="900"', 'within_seconds="3600"'}
    assert scraped["sovereign_ledger_entries"][0][1] >= 3  # server.start, registration, grant, denial
    assert scraped["sovereign_checkpoint_size"][0][1] >= 1
    assert 0 <= scraped["sovereign_checkpoint_age_seconds"][0][1] < 600
    assert scraped["sovereign_openbao_up"] == [("", 1.0)]
    assert scraped["sovereign_collateral_expiry_seconds"]  # the simulator's collateral has windows
    calls = {labels for labels, _ in scraped["sovereign_openbao_call_seconds_count"]}
    assert any('outcome="ok"' in labels for labels in calls)
    denied = [labels for labels, _ in scraped["sovereign_release_denials_total"]]
    assert any("RELEASE_PURPOSE_NOT_ALLOWED" in labels for labels in denied)
    assert scraped["sovereign_release_seconds_count"][0][1] >= 1
    assert scraped["sovereign_release_batch_size_count"][0][1] >= 1  # the grant's batch
    stages = {labels for labels, _ in scraped["sovereign_release_batch_seconds_count"]}
    assert stages == {'stage="unwrap"', 'stage="commit"'}


def test_only_metrics_and_health_are_served(server: ServerProcess) -> None:
    assert _get(server, "/healthz") == (200, "ok\n")
    status, body = _get(server, "/")
    assert status == 404 and "/metrics" in body
    assert _get(server, "/anything/metrics")[0] == 404


def test_operator_port_answers_health_without_a_token(server: ServerProcess) -> None:
    with server.operator_channel(None) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        reply = stub.Check(health_pb2.HealthCheckRequest(service="sovereign.v1.Admin"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "sovereign.json").read_text())
    out = [(f"grafana: {p['title']}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    out += [("alerts.yml", m) for m in METRIC.findall(rules)]
    return out


def test_every_dashboard_and_alert_query_names_an_exported_metric(
    scraped: dict[str, list[tuple[str, float]]],
) -> None:
    queries = _queries()
    assert len(queries) >= 15
    missing = [
        (where, name) for where, expr in queries for name in METRIC.findall(expr) if name not in scraped
    ]
    assert not missing, f"queries name metrics the server does not export: {missing}"
