"""The operator's session for admin and audit commands: the cached access token, refreshed with the
session's refresh token (python-keycloak) before it expires, and saved back to the cache.

A token with less than ``MARGIN`` left is refreshed first, so a call never starts with a token that
expires on the way. A refresh Keycloak refuses (the session ended or was revoked) is AUTH_TOKEN_EXPIRED
with the login command; an unreachable Keycloak keeps using a token that still works.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kms.oidc.cache import CachedToken, default_path, load_cached_token, read_cached_token, save_token
from kms.oidc.errors import AuthError
from kms.oidc.login import openid_client, refresh_login

MARGIN = timedelta(seconds=60)


def _can_refresh(token: CachedToken, now: datetime) -> bool:
    return bool(token.refresh_token) and (token.refresh_expires_at is None or now < token.refresh_expires_at)


def operator_token(cache: Path | None, *, clock: Callable[[], datetime] | None = None) -> CachedToken:
    """The token for a call: the cached one, or a refreshed one (saved to ``cache``) when it is about to
    expire. AUTH_NOT_LOGGED_IN / AUTH_TOKEN_EXPIRED (with the login command) when neither works."""
    now = (clock or (lambda: datetime.now(UTC)))()
    token = read_cached_token(cache)
    if token.expires_at - now > MARGIN or not _can_refresh(token, now):
        return load_cached_token(cache, now=now)
    openid = openid_client(token.server_url, token.realm, token.client_id, ca_file=token.ca_file or None)
    try:
        fresh = refresh_login(openid, token, now=now)
    except AuthError:
        if now < token.expires_at and token.expires_at - now > timedelta(seconds=5):
            return token  # Keycloak unreachable for now; the token still works for this call
        raise
    save_token(fresh, cache or default_path())
    return fresh
