"""The resident agent's Prometheus metrics, on an optional loopback endpoint (``metrics_listen``).

Read from the agent's counters when Prometheus scrapes (nothing here is updated per request), with
``prometheus_client`` as the control plane uses it (``kms/server/monitoring.py``). The endpoint listens on
a loopback address only: the figures name keys and uids' activity, which is the node's business. Labels
are key names, purposes, refusal codes and operations, never key material.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from enclave.config import parse_listen
from enclave.errors import NodeCode, NodeError
from enclave.resident import AgentState, ResidentAgent


class AgentCollector(Collector):
    def __init__(self, agent: ResidentAgent, sealing: Callable[[], int] | None = None) -> None:
        self._agent = agent
        self._sealing = sealing

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        c = agent.counters.snapshot()
        handouts = CounterMetricFamily(
            "sovereign_agent_key_handouts", "Keys handed to local workloads", labels=["key", "purpose"]
        )
        for (key, purpose), n in sorted(c.by_key.items()):
            handouts.add_metric([key, purpose], n)
        refusals = CounterMetricFamily(
            "sovereign_agent_refusals", "Local requests refused, by the agent's code", labels=["reason"]
        )
        for reason, n in sorted(c.refusals_by_reason.items()):
            refusals.add_metric([reason], n)
        chunks = CounterMetricFamily(
            "sovereign_agent_stream_chunks",
            "Chunks opened or sealed by the agent for workloads (via_agent)",
            labels=["key", "op"],
        )
        for (key, op), n in sorted(c.chunks.items()):
            chunks.add_metric([key, op], n)
        yield from (handouts, refusals, chunks)
        yield CounterMetricFamily(
            "sovereign_agent_registrations", "Registrations that ended ATTESTED", value=c.registrations
        )
        yield CounterMetricFamily("sovereign_agent_lease_renewals", "Lease renewals", value=c.renewals)
        yield CounterMetricFamily(
            "sovereign_agent_lease_renewal_failures",
            "Lease renewals that failed (control plane unreachable or erring)",
            value=c.renewal_failures,
        )
        yield GaugeMetricFamily(
            "sovereign_agent_keys_held", "Data keys held in memory", value=agent.keys_held
        )
        yield GaugeMetricFamily(
            "sovereign_agent_attested",
            "1 while the node is attested",
            value=int(agent.state is AgentState.ATTESTED),
        )
        if self._sealing is not None:
            yield GaugeMetricFamily(
                "sovereign_agent_sealing_streams",
                "Files being sealed through the agent",
                value=self._sealing(),
            )


@dataclass
class MetricsEndpoint:
    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(collector: AgentCollector, listen: str) -> MetricsEndpoint:
    """Serve ``collector`` at ``http://HOST:PORT/metrics`` in a daemon thread (PORT 0: any free port)."""
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise NodeError(
            f"cannot serve metrics on {listen}: {exc.strerror}",
            code=NodeCode.CONFIG_INVALID,
            hint="choose a free loopback port in metrics_listen",
        ) from None
    return MetricsEndpoint(server, thread)
