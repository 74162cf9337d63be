"""Shared fixtures. Real evidence vectors live in ../shared/vectors (override: SOVEREIGN_VECTORS)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path | None:
    env = os.environ.get("SOVEREIGN_VECTORS")
    path = Path(env) if env else ROOT.parent / "shared" / "vectors"
    return path if (path / "MANIFEST.json").is_file() else None


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The shared vector folder. Absent vectors fail under CI=true and skip only on a dev machine."""
    path = vectors_dir()
    if path is None:
        msg = "real evidence vectors not found: set SOVEREIGN_VECTORS or check out ../shared/vectors"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def manifest(vectors: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((vectors / "MANIFEST.json").read_text())
    return data


def manifest_entries(kind: str) -> list[dict[str, Any]]:
    """Manifest entries of one kind, for parametrising at collection time (empty without vectors)."""
    path = vectors_dir()
    if path is None:
        return []
    return [e for e in json.loads((path / "MANIFEST.json").read_text()) if e["kind"] == kind]
