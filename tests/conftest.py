"""Shared fixtures. Real evidence vectors live in ../shared/vectors (override: SOVEREIGN_VECTORS)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from vectorlib import vectors_dir

# PostgreSQL fixtures (pg_server, postgres_url) for any test folder; the server starts on first use
pytest_plugins = ["pg.fixtures"]


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
