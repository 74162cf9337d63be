"""What an operations team watches: gauges read from the control plane at scrape time, and the HTTP
endpoint that serves them (``/metrics`` for Prometheus, ``/healthz`` for probes, nothing else).

Counters and histograms that requests update live in ``kms.usecases.metrics``; the state that already sits in the
database or the collateral store (nodes by state, leases about to end, ledger size, checkpoint age,
collateral windows) is read when Prometheus scrapes, so it can never drift from the truth. Each source
is read at most once per ``cache_seconds``: a scrape storm must not become a database storm.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from attestation.errors import AttestationError
from attestation.freshness import expiry
from attestation.store import CollateralStore
from kms.clock import Clock
from kms.sql import nodes as node_rows
from kms.sql.audit_ledger import latest_checkpoint, read_head
from kms.sql.store import Store

log = logging.getLogger("sovereign.metrics")

LEASE_HORIZONS = (timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))


@dataclass(frozen=True)
class Sources:
    """Where the scrape-time gauges come from; ``openbao_up`` is None when there is no probe."""

    store: Store
    collateral: Path | None
    clock: Clock
    openbao_up: Callable[[], bool] | None = None


class _Cached:
    """A value recomputed at most every ``seconds``; a failed read keeps no stale value."""

    def __init__(self, read: Callable[[], list[Metric]], seconds: float) -> None:
        self._read = read
        self._seconds = seconds
        self._at = -1e18
        self._value: list[Metric] = []
        self._lock = threading.Lock()

    def get(self) -> list[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self._seconds:
                try:
                    self._value = self._read()
                except Exception:  # a scrape must answer; the missing family is the signal
                    log.warning("metrics source %s failed", self._read.__name__, exc_info=True)
                    self._value = []
                self._at = time.monotonic()
            return self._value


class ControlPlaneCollector(Collector):
    def __init__(self, sources: Sources, *, cache_seconds: float = 5.0) -> None:
        self._sources = sources
        self._parts = [
            _Cached(self._registry, cache_seconds),
            _Cached(self._ledger, cache_seconds),
            _Cached(self._collateral, max(cache_seconds, 30.0)),
            _Cached(self._openbao, cache_seconds),
        ]

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.get()

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand; no families at registration (no database read then)

    def _registry(self) -> list[Metric]:
        now = self._sources.clock()
        with self._sources.store.reader() as conn:
            counts = node_rows.count_by_state(conn)
            expiring = node_rows.leases_expiring(conn, now, LEASE_HORIZONS)
        by_state = GaugeMetricFamily(
            "sovereign_nodes", "Registered nodes by state and TEE", labels=["state", "tee"]
        )
        for (state, tee), count in sorted(counts.items()):
            by_state.add_metric([state, tee], count)
        leases = GaugeMetricFamily(
            "sovereign_leases_expiring",
            "Attested nodes whose lease ends within the horizon (seconds)",
            labels=["within_seconds"],
        )
        for horizon, count in expiring.items():
            leases.add_metric([str(int(horizon.total_seconds()))], count)
        return [by_state, leases]

    def _ledger(self) -> list[Metric]:
        now = self._sources.clock()
        with self._sources.store.reader() as conn:
            size = read_head(conn).size
            checkpoint = latest_checkpoint(conn)
        out: list[Metric] = [
            GaugeMetricFamily("sovereign_ledger_entries", "Entries in the audit ledger", size)
        ]
        if checkpoint is not None:
            signed = datetime.fromisoformat(checkpoint.time.replace("Z", "+00:00"))
            out.append(
                GaugeMetricFamily(
                    "sovereign_checkpoint_size", "Tree size of the latest signed checkpoint", checkpoint.size
                )
            )
            out.append(
                GaugeMetricFamily(
                    "sovereign_checkpoint_age_seconds",
                    "Seconds since the latest signed checkpoint",
                    max(0.0, (now - signed).total_seconds()),
                )
            )
        return out

    def _collateral(self) -> list[Metric]:
        if self._sources.collateral is None:
            return []
        now = self._sources.clock()
        soonest: dict[str, datetime] = {}
        for item in CollateralStore(self._sources.collateral).items():
            try:
                until = expiry(item)
            except AttestationError:
                continue
            if until is not None and (item.kind.value not in soonest or until < soonest[item.kind.value]):
                soonest[item.kind.value] = until
        family = GaugeMetricFamily(
            "sovereign_collateral_expiry_seconds",
            "Seconds until the soonest item of each collateral kind expires (negative: expired)",
            labels=["kind"],
        )
        for kind, until in sorted(soonest.items()):
            family.add_metric([kind], (until - now).total_seconds())
        return [family]

    def _openbao(self) -> list[Metric]:
        if self._sources.openbao_up is None:
            return []
        up = self._sources.openbao_up()
        return [
            GaugeMetricFamily("sovereign_openbao_up", "1 when OpenBao is active and unsealed", 1 if up else 0)
        ]


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    healthy: Callable[[], bool]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = type(self).healthy()
            self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the server's log


@dataclass
class MetricsEndpoint:
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_http(
    registry: CollectorRegistry, port: int, *, addr: str = "127.0.0.1", healthy: Callable[[], bool]
) -> MetricsEndpoint:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` in a daemon thread."""
    handler = type("MetricsHandler", (_Handler,), {"registry": registry, "healthy": staticmethod(healthy)})
    server = ThreadingHTTPServer((addr, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsEndpoint(server, thread)


def metric_names(text: str) -> Sequence[str]:
    """Family names in a Prometheus exposition (``# TYPE`` lines), for tests and tooling."""
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
