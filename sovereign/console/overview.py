"""The overview page's figures, read from the server's own metrics registry (no extra queries): node
counts, checkpoint, OpenBao health and collateral windows come from the scrape-time gauges; releases
and denials per minute from counters sampled into a one-hour ring (so a restart starts a new hour)."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

HOUR = 60
SOON = timedelta(days=7)


@dataclass(frozen=True)
class Minute:
    at: datetime
    releases: float
    denials: float


class Overview:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._ring: deque[tuple[datetime, float, float]] = deque(maxlen=HOUR + 1)
        self._lock = threading.Lock()

    def _samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in self._registry.collect():
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
        return out

    def sample(self, now: datetime) -> None:
        """Record the counters once a minute (call it more often; extra calls in a minute are ignored)."""
        samples = self._samples()
        releases = sum(v for _, v in samples.get("sovereign_releases_total", []))
        denials = sum(v for _, v in samples.get("sovereign_release_denials_total", []))
        with self._lock:
            if self._ring and now - self._ring[-1][0] < timedelta(minutes=1):
                return
            self._ring.append((now, releases, denials))

    def per_minute(self) -> list[Minute]:
        with self._lock:
            ring = list(self._ring)
        return [
            Minute(b[0], max(0.0, b[1] - a[1]), max(0.0, b[2] - a[2])) for a, b in itertools.pairwise(ring)
        ]

    def summary(self, now: datetime) -> dict[str, Any]:
        samples = self._samples()
        nodes: dict[str, int] = {}
        for labels, value in samples.get("sovereign_nodes", []):
            nodes[labels.get("state", "?")] = nodes.get(labels.get("state", "?"), 0) + int(value)
        collateral = sorted(
            (value, labels.get("kind", "?"))
            for labels, value in samples.get("sovereign_collateral_expiry_seconds", [])
        )
        earliest = None
        if collateral:
            seconds, kind = collateral[0]
            earliest = {
                "kind": kind,
                "at": (now + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M UTC"),
                "warn": seconds < SOON.total_seconds(),
                "expired": seconds <= 0,
            }
        up = samples.get("sovereign_openbao_up")
        minutes = self.per_minute()
        peak = max([1.0, *(m.releases for m in minutes), *(m.denials for m in minutes)])
        return {
            "nodes": dict(sorted(nodes.items())),
            "ledger_entries": _one(samples, "sovereign_ledger_entries"),
            "checkpoint_size": _one(samples, "sovereign_checkpoint_size"),
            "checkpoint_age": _one(samples, "sovereign_checkpoint_age_seconds"),
            "openbao_up": None if not up else bool(up[0][1]),
            "collateral": earliest,
            "minutes": [
                {
                    "at": m.at.strftime("%H:%M"),
                    "releases": int(m.releases),
                    "denials": int(m.denials),
                    "r_pct": int(100 * m.releases / peak),
                    "d_pct": int(100 * m.denials / peak),
                }
                for m in minutes
            ],
        }


def _one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    values = samples.get(name)
    return values[0][1] if values else None
