"""Resident memory and open file descriptors of each process of the run, sampled from /proc, judged
against stated bounds."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sovereign.soak.checker import Violation, ViolationKind

# The bounds a run is held to: a control plane or OpenBao leaking memory or descriptors under
# faults crosses them within minutes at the soak's rates; the steady state is far below (see the report).
BOUNDS = {
    "serve": {"rss_mib": 768, "fds": 512},
    "openbao": {"rss_mib": 768, "fds": 512},
    "driver": {"rss_mib": 1536, "fds": 1024},
    "postgres": {"rss_mib": 512, "fds": 512},  # the postmaster (its backends are separate processes)
}


def bound(name: str) -> dict[str, int]:
    """``serve-a``, ``openbao-bao-2``: the bound of their kind."""
    return BOUNDS[name.split("-", maxsplit=1)[0]]


def sample(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open fds) of ``pid``; None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024, fds
    return None


@dataclass
class Series:
    points: list[tuple[float, float, int]] = field(default_factory=list)  # (t, rss MiB, fds)

    def summary(self, bound: dict[str, int]) -> dict[str, object]:
        if not self.points:
            return {"samples": 0, **{f"bound_{k}": v for k, v in bound.items()}}
        rss = [p[1] for p in self.points]
        fds = [p[2] for p in self.points]
        quarter = max(1, len(rss) // 4)
        return {
            # a leak shows as the last quarter's peak above the first quarter's, run after run
            "rss_mib_growth": round(max(rss[-quarter:]) - max(rss[:quarter]), 1),
            "samples": len(self.points),
            "rss_mib_first": round(rss[0], 1),
            "rss_mib_last": round(rss[-1], 1),
            "rss_mib_max": round(max(rss), 1),
            "fds_first": fds[0],
            "fds_last": fds[-1],
            "fds_max": max(fds),
            **{f"bound_{k}": v for k, v in bound.items()},
        }


class Monitor:
    def __init__(self, pids: dict[str, Callable[[], int | None]]) -> None:
        self._pids = pids
        self.series = {name: Series() for name in pids}

    def tick(self, t: float) -> None:
        for name, pid_of in self._pids.items():
            pid = pid_of()
            got = sample(pid) if pid is not None else None
            if got is not None:
                self.series[name].points.append((round(t, 2), round(got[0], 1), got[1]))

    def report(self) -> dict[str, object]:
        return {name: s.summary(bound(name)) for name, s in self.series.items()}

    def violations(self) -> list[Violation]:
        out = []
        for name, s in self.series.items():
            limit = bound(name)
            for t, rss, fds in s.points:
                if rss > limit["rss_mib"] or fds > limit["fds"]:
                    out.append(
                        Violation(
                            ViolationKind.RESOURCE_BOUND_EXCEEDED,
                            f"{name} at {t}s: RSS {rss} MiB, {fds} fds (bounds {limit['rss_mib']} MiB, {limit['fds']})",
                        )
                    )
                    break
        return out
