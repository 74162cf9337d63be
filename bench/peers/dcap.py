"""dcap-qvl (Rust, Python bindings) as the TDX quote verification peer."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.peers import PeerMissing

PINNED = "0.7.0"


@dataclass(frozen=True)
class Verdict:
    """What both verifiers are compared on: accepted or not, TCB status and advisories."""

    accepted: bool
    status: str = ""
    advisories: tuple[str, ...] = ()


def _module() -> Any:
    try:
        return importlib.import_module("dcap_qvl")
    except ImportError as err:
        raise PeerMissing(
            "dcap-qvl is not installed here; run through ./dev bench (it installs .venv-bench)"
        ) from err


def version() -> str:
    from importlib.metadata import version as dist_version

    _module()
    return dist_version("dcap-qvl")


def verifier(collateral_json: bytes) -> Callable[[bytes, int], Any]:
    """``verify(quote, unix_time)`` with the collateral parsed once (the bundle is dcap-qvl's own format)."""
    dcap = _module()
    collateral = dcap.QuoteCollateralV3.from_json(collateral_json.decode())
    return lambda quote, unix_time: dcap.verify(quote, collateral, unix_time)


def verdict(verify: Callable[[bytes, int], Any], quote: bytes, unix_time: int) -> Verdict:
    try:
        report = verify(quote, unix_time)
    except (ValueError, RuntimeError):
        return Verdict(False)
    return Verdict(True, str(report.status), tuple(sorted(report.advisory_ids)))
