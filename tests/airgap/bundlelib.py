"""Shared by the air-gap tests and their conftest (never import a conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sovereign.bundle.build import BuildResult

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Built:
    result: BuildResult
    public_key: Path
    other_public_key: Path
