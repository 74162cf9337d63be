"""Argument helpers shared by CLI modules: time parsing, default paths, trust profiles."""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime
from pathlib import Path

from attestation import trust
from attestation.errors import ChainInvalid, Code
from sovereign.cli._installed import collateral_store_path


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


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, limits, ports, versions)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (sizes and indexes, where 0 means the first or the latest)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def port_number(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def existing_file(text: str) -> Path:
    """A file the command reads: it must exist now (named in the usage error when it does not)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"is a folder, not a file: {text}")
    return path


def default_collateral_store() -> Path:
    return collateral_store_path()


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
    doc: dict[str, object] = {
        "name": store.name,
        "amd_arks": dict(store.amd_arks),
        "intel_roots": sorted(store.intel_roots),
        "allow_simulated": store.allow_simulated,
    }
    if store.nvidia_device_roots or store.nvidia_rim_roots:  # written only when pinned: older files unchanged
        doc["nvidia_device_roots"] = sorted(store.nvidia_device_roots)
        doc["nvidia_rim_roots"] = sorted(store.nvidia_rim_roots)
    return json.dumps(doc, indent=2)
