"""Reading a running ``sovereign serve``'s Prometheus metrics (its --metrics-port on loopback)."""

from __future__ import annotations

import urllib.request
from collections import Counter

from e2e.world import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

REFUSALS = "sovereign_unauthenticated_refusals"


def refusals(server: ServerProcess) -> Counter[tuple[str, str]]:
    """sovereign_unauthenticated_refusals_total by (endpoint, reason)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == REFUSALS:
            for sample in family.samples:
                if sample.name == REFUSALS + "_total":
                    counts[(sample.labels["endpoint"], sample.labels["reason"])] = int(sample.value)
    return counts
