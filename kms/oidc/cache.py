"""The operator's cached access token (``sovereign login`` writes it, admin and audit commands read it).

File: ``$SOVEREIGN_TOKEN_CACHE``, else ``$XDG_CONFIG_HOME/sovereign/token.json``, else
``~/.config/sovereign/token.json``; the folder is 0700 and the file 0600, written atomically. A cache
readable by others is refused, like ssh does with keys. The token is a bearer credential: it is never
printed, logged or put in a repr.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kms.oidc.errors import AuthError, Code
from kms.oidc.tokens import split_unverified

CACHE_VERSION = 1


def default_path() -> Path:
    override = os.environ.get("SOVEREIGN_TOKEN_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sovereign" / "token.json"


@dataclass(frozen=True)
class CachedToken:
    server_url: str
    realm: str
    client_id: str
    access_token: str = field(repr=False)
    expires_at: datetime
    obtained_at: datetime
    # Sessions: the refresh token (a bearer credential too) and when it stops working (None: not said),
    # and the CA file Keycloak's TLS was verified with, so the CLI can refresh without the flags.
    refresh_token: str = field(default="", repr=False)
    refresh_expires_at: datetime | None = None
    ca_file: str = ""

    def login_command(self) -> str:
        return f"sovereign login --server-url {self.server_url} --realm {self.realm} --client-id {self.client_id}"

    def seconds_left(self, now: datetime) -> int:
        return int((self.expires_at - now).total_seconds())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying the token."""
        return (("authorization", f"Bearer {self.access_token}"),)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "server_url": self.server_url,
            "realm": self.realm,
            "client_id": self.client_id,
            "access_token": self.access_token,
            "expires_at": self.expires_at.isoformat(),
            "obtained_at": self.obtained_at.isoformat(),
            "refresh_token": self.refresh_token,
            "refresh_expires_at": self.refresh_expires_at.isoformat() if self.refresh_expires_at else None,
            "ca_file": self.ca_file,
        }

    @classmethod
    def from_json(cls, doc: Any) -> CachedToken:
        try:
            if doc["version"] != CACHE_VERSION:
                raise ValueError("version")
            values = {k: doc[k] for k in ("server_url", "realm", "client_id", "access_token")}
            if not all(isinstance(v, str) and v for v in values.values()):
                raise ValueError("fields")
            refresh_token, refresh_until, ca_file = (
                doc.get("refresh_token") or "",
                doc.get("refresh_expires_at"),
                doc.get("ca_file") or "",
            )
            if not isinstance(refresh_token, str) or not isinstance(ca_file, str):
                raise ValueError("refresh fields")
            return cls(
                **values,
                expires_at=datetime.fromisoformat(doc["expires_at"]),
                obtained_at=datetime.fromisoformat(doc["obtained_at"]),
                refresh_token=refresh_token,
                refresh_expires_at=datetime.fromisoformat(refresh_until) if refresh_until else None,
                ca_file=ca_file,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthError(
                Code.AUTH_CACHE_INVALID, "the token cache is not a sovereign token cache"
            ) from exc


def token_expiry(access_token: str, *, now: datetime, expires_in: int | None) -> datetime:
    """When the token stops working: its ``exp`` claim (unverified; the server verifies), else ``expires_in``."""
    try:
        exp = split_unverified(access_token)[1].get("exp")
    except AuthError:
        exp = None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return datetime.fromtimestamp(exp, UTC)
    if expires_in is None:
        raise AuthError(Code.AUTH_LOGIN_FAILED, "the identity provider returned a token without an expiry")
    return datetime.fromtimestamp(now.timestamp() + expires_in, UTC)


def save_token(token: CachedToken, path: Path | None = None) -> Path:
    path = path or default_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.parent.stat().st_mode) & 0o077:
        path.parent.chmod(0o700)
    fd, tmp = tempfile.mkstemp(prefix=".token-", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(token.to_json(), out)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_cached_token(path: Path | None = None) -> CachedToken:
    """The cached token whether or not it has expired; AUTH_NOT_LOGGED_IN if there is none."""
    path = path or default_path()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise AuthError(Code.AUTH_NOT_LOGGED_IN, f"no cached token at {path}") from exc
    if mode & 0o077:
        raise AuthError(
            Code.AUTH_CACHE_INSECURE, f"the token cache {path} is accessible by others (mode {mode:o})"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise AuthError(Code.AUTH_CACHE_INVALID, f"cannot read the token cache {path}") from exc
    return CachedToken.from_json(doc)


def load_cached_token(path: Path | None = None, *, now: datetime) -> CachedToken:
    """The cached token for a call; AUTH_TOKEN_EXPIRED (with the login command to run) once it has expired."""
    token = read_cached_token(path)
    if now >= token.expires_at:
        raise AuthError(
            Code.AUTH_TOKEN_EXPIRED,
            f"the cached token expired at {token.expires_at.isoformat()}",
            hint=f"sign in again: {token.login_command()}",
        )
    return token


def delete_cached_token(path: Path | None = None) -> bool:
    """Remove the cache; False if there was none."""
    try:
        (path or default_path()).unlink()
    except FileNotFoundError:
        return False
    return True
