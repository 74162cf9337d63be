"""Argument helpers shared by CLI modules: time parsing, default paths, trust profiles."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from attestation import trust
from attestation.errors import ChainInvalid, Code


def parse_time(text: str) -> datetime:
    """ISO 8601 (``2024-01-31T12:00:00Z``) or ``now``; naive times are UTC."""
    if text == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2025-06-01T00:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def default_collateral_store() -> Path:
    return Path(os.environ.get("SOVEREIGN_COLLATERAL", "var/collateral"))


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust",
        metavar="FILE",
        type=Path,
        help="trust profile JSON written by 'sovereign evidence simulate' (default: the pinned production "
        "AMD and Intel roots)",
    )


def load_trust(path: Path | None) -> trust.TrustStore:
    if path is None:
        return trust.PRODUCTION
    try:
        doc = json.loads(path.read_text())
        return trust.TrustStore(
            name=str(doc["name"]),
            amd_arks={str(k): str(v) for k, v in doc["amd_arks"].items()},
            intel_roots=frozenset(str(v) for v in doc["intel_roots"]),
            allow_simulated=bool(doc.get("allow_simulated", False)),
            nvidia_device_roots=frozenset(str(v) for v in doc.get("nvidia_device_roots", [])),
            nvidia_rim_roots=frozenset(str(v) for v in doc.get("nvidia_rim_roots", [])),
        )
    except (OSError, ValueError, KeyError, AttributeError, TypeError, RecursionError) as exc:
        raise ChainInvalid(
            f"cannot load trust profile {path}: {exc}",
            code=Code.UNTRUSTED_ROOT,
            hint="pass a trust.json written by 'sovereign evidence simulate', or omit --trust",
        ) from None


def dump_trust(store: trust.TrustStore) -> str:
    return json.dumps(
        {
            "name": store.name,
            "amd_arks": dict(store.amd_arks),
            "intel_roots": sorted(store.intel_roots),
            "allow_simulated": store.allow_simulated,
            "nvidia_device_roots": sorted(store.nvidia_device_roots),
            "nvidia_rim_roots": sorted(store.nvidia_rim_roots),
        },
        indent=2,
    )
