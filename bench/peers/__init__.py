"""Peer measurements for ``./dev bench``: the tools our figures are compared with, measured in the same run.

Each peer lives in ``.venv-bench`` (``bench/requirements-bench.lock``) or on the machine (``openssl``). When a
peer is not there, its functions raise :class:`PeerMissing`; the scripts then print a row with our figure,
``"baseline": null``, ``"met": false`` and the reason, so a missing peer never looks like a pass.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TINY_ENV = "SOVEREIGN_BENCH_TINY"


class PeerMissing(RuntimeError):
    """The peer tool or package is not available in this environment."""


def tiny() -> bool:
    """True when the smoke test runs a script: smallest inputs, figures meaningless, JSON shape only."""
    return os.environ.get(TINY_ENV) == "1"


def row(
    work: str,
    ours: float,
    baseline: float | None,
    unit: str,
    target: float,
    *,
    higher_is_better: bool = True,
    missing: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One result row; ``ratio`` is ours/baseline and ``met`` compares it with ``target``."""
    if baseline is None or baseline <= 0:
        why = f"no baseline measured: {missing or 'peer gave no figure'}"
        return {
            "work": work,
            "ours": ours,
            "baseline": None,
            "unit": unit,
            "ratio": None,
            "target": target,
            "met": False,
            **extra,
            "note": "; ".join(filter(None, [why, extra.get("note")])),
        }
    ratio = ours / baseline
    met = ratio >= target if higher_is_better else ratio <= target
    return {
        "work": work,
        "ours": ours,
        "baseline": baseline,
        "unit": unit,
        "ratio": round(ratio, 3),
        "target": target,
        "met": met,
        **extra,
    }


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def note(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
