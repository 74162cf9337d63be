"""Where the real evidence vectors are (../shared/vectors, override: SOVEREIGN_VECTORS).

A plain module (not a conftest) so test modules can import it: ``from vectorlib import manifest_entries``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path | None:
    """The vector folder, or None on a dev machine without it. Under CI=true a missing folder is an error,
    so no test that needs the vectors can quietly skip there."""
    env = os.environ.get("SOVEREIGN_VECTORS")
    path = Path(env) if env else ROOT.parent / "shared" / "vectors"
    if (path / "MANIFEST.json").is_file():
        return path
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"real evidence vectors not found at {path}: set SOVEREIGN_VECTORS")
    return None


def manifest_entries(kind: str) -> list[dict[str, Any]]:
    """Manifest entries of one kind, for parametrising at collection time.

    Without vectors this is empty (the tests are then reported as skipped on a dev machine), except under
    CI=true, where missing vectors are an error at collection time rather than a silent skip.
    """
    path = vectors_dir()
    if path is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError(
                "real evidence vectors not found: set SOVEREIGN_VECTORS or provide ../shared/vectors"
            )
        return []
    return [e for e in json.loads((path / "MANIFEST.json").read_text()) if e["kind"] == kind]
