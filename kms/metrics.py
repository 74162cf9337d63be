"""Prometheus metrics of the control plane (own registry; served on an optional loopback port).

The families updated by requests live here; gauges read from the database and the collateral store at
scrape time are added by ``kms.server.monitoring``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


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

        self.openbao_seconds = Histogram(
            "sovereign_openbao_call_seconds",
            "Time of one OpenBao call (failover and retries included), by operation and outcome",
            ["operation", "outcome"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )

    def observe_openbao(self, operation: str, seconds: float, succeeded: bool) -> None:
        self.openbao_seconds.labels(operation, "ok" if succeeded else "error").observe(seconds)
