"""Prometheus metrics of the control plane (own registry; served on an optional loopback port).

The families updated by requests live here; gauges read from the database and the collateral store at
scrape time are added by ``kms.server.monitoring``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("sovereign.refused")

REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines of one (endpoint, reason)


class Refusals:
    """Requests refused before their sender authenticated (``docs/audit.md``, "What is not recorded").

    They are counted in ``sovereign_unauthenticated_refusals_total{endpoint, reason}`` and logged at most
    once per (endpoint, reason) per ``interval`` seconds, with how many were refused since the last line,
    so that anonymous traffic can neither grow the audit ledger nor flood the log. ``reason`` is always
    a stable error code, so the label set stays small whatever a caller sends.
    """

    def __init__(
        self,
        counter: Counter,
        *,
        interval: float = REFUSAL_LOG_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self._counter = counter
        self._interval = interval
        self._monotonic = monotonic
        self._log = logger
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (endpoint, reason) -> (logged at, since)

    def refused(self, endpoint: str, reason: str) -> None:
        self._counter.labels(endpoint, reason).inc()
        key = (endpoint, reason)
        with self._lock:
            now = self._monotonic()
            last = self._last.get(key)
            if last is not None and now - last[0] < self._interval:
                self._last[key] = (last[0], last[1] + 1)
                return
            self._last[key] = (now, 0)
        suppressed = last[1] if last is not None else 0
        self._log.warning(
            "refused before authentication on the %s endpoint: %s (%d more since the last such line; "
            "counted in sovereign_unauthenticated_refusals_total, not in the audit ledger)",
            endpoint,
            reason,
            suppressed,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.releases = Counter(
            "sovereign_releases", "Keys released (granted and sealed)", ["purpose"], registry=self.registry
        )
        self.denials = Counter(
            "sovereign_release_denials",
            "Release requests denied, by reason code",
            ["code"],
            registry=self.registry,
        )
        self.attestations = Counter(
            "sovereign_attestations", "Register/Renew outcomes", ["result", "code"], registry=self.registry
        )
        self.unauthenticated = Counter(
            "sovereign_unauthenticated_refusals",
            "Requests refused before their sender authenticated (not in the audit ledger), by endpoint "
            "(node, operator) and reason code",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        self.refusals = Refusals(self.unauthenticated)
        self.verification_seconds = Histogram(
            "sovereign_evidence_verification_seconds",
            "Time to verify one piece of evidence",
            ["tee"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.release_seconds = Histogram(
            "sovereign_release_seconds",
            "Time to decide and serve one release request",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.release_batch_seconds = Histogram(
            "sovereign_release_batch_seconds",
            "Time of one release batch's stages: unwrap (the OpenBao batch decrypt, from the batch "
            "thread) and commit (the transaction that re-checks the premises, appends the ledger "
            "entries and commits durably)",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.release_batch_size = Histogram(
            "sovereign_release_batch_size",
            "Releases per batch (one OpenBao decrypt and one commit each)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.openbao_seconds = Histogram(
            "sovereign_openbao_call_seconds",
            "Time of one OpenBao call (failover and retries included), by operation and outcome",
            ["operation", "outcome"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )

        self.provenance_statements = Counter(
            "sovereign_provenance_statements", "Provenance statements issued", registry=self.registry
        )
        self.provenance_batches = Counter(
            "sovereign_provenance_batches",
            "Batches provenance statements were issued in",
            registry=self.registry,
        )
        self.provenance_seconds = Counter(
            "sovereign_provenance_issue_seconds",
            "Wall-clock seconds spent issuing provenance statements (whole batches: reads, proofs, "
            "encoding, the transit sign, storing)",
            registry=self.registry,
        )
        self.provenance_cpu_seconds = Counter(
            "sovereign_provenance_issue_cpu_seconds",
            "CPU seconds of the issuing thread over the same spans",
            registry=self.registry,
        )

    def observe_provenance(self, statements: int, seconds: float, cpu_seconds: float) -> None:
        self.provenance_statements.inc(statements)
        self.provenance_batches.inc()
        self.provenance_seconds.inc(seconds)
        self.provenance_cpu_seconds.inc(cpu_seconds)

    def observe_openbao(self, operation: str, seconds: float, succeeded: bool) -> None:
        self.openbao_seconds.labels(operation, "ok" if succeeded else "error").observe(seconds)
