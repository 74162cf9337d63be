"""Prometheus metrics of the control plane (own registry; served on an optional loopback port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


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

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics over HTTP on ``addr:port`` (loopback by default)."""
        start_http_server(port, addr=addr, registry=self.registry)
