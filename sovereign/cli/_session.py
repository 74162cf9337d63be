"""The operator's session for admin and audit commands: the cached token, refreshed before it expires."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from kms.auth.cache import CachedToken, load_cached_token


def operator_token(cache: Path | None) -> CachedToken:
    return load_cached_token(cache, now=datetime.now(UTC))
