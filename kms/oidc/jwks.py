"""The realm's signing keys: loaded once, refreshed only for an unknown ``kid`` and at most once per interval.

Sources sit behind ``JwksSource``: ``RealmJwks`` asks Keycloak's certs endpoint through python-keycloak
(``KeycloakOpenID.certs()``), ``FileJwks`` reads a JWK set saved from it (air-gapped sites). Only
signature keys that the allow-list can use are kept: Keycloak publishes an ``enc`` key (RSA-OAEP) in the
same set, and a key published for one algorithm is never used for another.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from jwcrypto import jwk  # type: ignore[import-untyped]
from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakError

from kms.oidc.errors import AuthError, Code

log = logging.getLogger(__name__)

ALLOWED_ALGS: tuple[str, ...] = ("RS256", "ES256")
_KTY = {"RS256": "RSA", "ES256": "EC"}
_MIN_RSA_BITS = 2048


class JwksSource(Protocol):
    """Where the realm's JWK set comes from. ``fetch`` may do I/O; it raises AuthError on failure."""

    @property
    def description(self) -> str: ...

    def fetch(self) -> Mapping[str, Any]: ...


class RealmJwks:
    """The realm's certs endpoint, through python-keycloak (``/realms/<realm>/protocol/openid-connect/certs``)."""

    def __init__(self, openid: KeycloakOpenID) -> None:
        self._openid = openid

    @property
    def description(self) -> str:
        return f"realm '{self._openid.realm_name}' certs endpoint"

    def fetch(self) -> Mapping[str, Any]:
        try:
            doc = self._openid.certs()
        except (KeycloakError, OSError) as exc:
            raise AuthError(
                Code.AUTH_JWKS_UNAVAILABLE, f"could not fetch the {self.description}: {type(exc).__name__}"
            ) from exc
        if not isinstance(doc, Mapping):
            raise AuthError(Code.AUTH_JWKS_INVALID, f"the {self.description} did not return a JWK set")
        return doc


class FileJwks:
    """A JWK set file (the certs endpoint's JSON), for sites without a route to Keycloak."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def description(self) -> str:
        return f"JWKS file {self.path}"

    def fetch(self) -> Mapping[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AuthError(
                Code.AUTH_JWKS_UNAVAILABLE, f"cannot read the {self.description}: {exc.strerror}"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise AuthError(Code.AUTH_JWKS_INVALID, f"the {self.description} is not JSON") from exc
        if not isinstance(doc, Mapping):
            raise AuthError(Code.AUTH_JWKS_INVALID, f"the {self.description} is not a JWK set object")
        return doc


def _usable(entry: Mapping[str, Any], algs: tuple[str, ...]) -> tuple[str, str] | None:
    """(kid, alg) of a signature key the allow-list can use, else None."""
    kid, kty, alg = entry.get("kid"), entry.get("kty"), entry.get("alg")
    if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
        return None
    candidates = [a for a in algs if _KTY[a] == kty and (alg is None or alg == a)]
    if kty == "EC" and entry.get("crv") != "P-256":
        return None
    return (kid, candidates[0]) if len(candidates) == 1 else None


def parse_keyset(
    doc: Mapping[str, Any], algs: tuple[str, ...] = ALLOWED_ALGS
) -> dict[str, tuple[str, jwk.JWK]]:
    """kid -> (alg, public key) for every usable signature key; raises AUTH_JWKS_INVALID if there is none."""
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise AuthError(Code.AUTH_JWKS_INVALID, "the JWK set has no 'keys' list")
    keys: dict[str, tuple[str, jwk.JWK]] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        usable = _usable(entry, algs)
        if usable is None:
            continue
        kid, alg = usable
        try:
            key = jwk.JWK(**{k: v for k, v in entry.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}})
        except Exception as exc:  # jwcrypto raises several types for bad key material
            raise AuthError(Code.AUTH_JWKS_INVALID, f"JWKS key '{kid}' is not a valid {alg} key") from exc
        if alg == "RS256" and key.get_op_key("verify").key_size < _MIN_RSA_BITS:
            raise AuthError(
                Code.AUTH_JWKS_INVALID, f"JWKS key '{kid}' is an RSA key under {_MIN_RSA_BITS} bits"
            )
        if kid in keys:
            raise AuthError(Code.AUTH_JWKS_INVALID, f"JWKS key id '{kid}' appears twice")
        keys[kid] = (alg, key)
    if not keys:
        raise AuthError(Code.AUTH_JWKS_INVALID, f"the JWK set holds no usable {'/'.join(algs)} signature key")
    return keys


class KeyRing:
    """The current keys by kid. Loads at construction (fails closed); refreshes only on an unknown kid,
    at most once per ``refresh_interval``, and keeps the old keys if a refresh fails."""

    def __init__(
        self,
        source: JwksSource,
        *,
        algs: tuple[str, ...] = ALLOWED_ALGS,
        refresh_interval: timedelta = timedelta(seconds=60),
    ) -> None:
        self.source = source
        self._algs = algs
        self._interval = refresh_interval
        self._lock = threading.Lock()
        self._keys = parse_keyset(source.fetch(), algs)
        self._last_refresh: datetime | None = None
        self.refreshes = 0

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def get(self, kid: str, *, now: datetime) -> tuple[str, jwk.JWK]:
        """(alg, key) for ``kid``; raises AUTH_UNKNOWN_KID when even a permitted refresh does not know it."""
        found = self._keys.get(kid)
        if found is not None:
            return found
        with self._lock:
            found = self._keys.get(kid)
            if found is None and self._may_refresh(now):
                self._last_refresh = now
                self.refreshes += 1
                try:
                    self._keys = parse_keyset(self.source.fetch(), self._algs)
                except AuthError as exc:
                    log.warning(
                        "JWKS refresh from %s failed (%s); keeping the current keys",
                        self.source.description,
                        exc.code,
                    )
                found = self._keys.get(kid)
        if found is None:
            raise AuthError(
                Code.AUTH_UNKNOWN_KID,
                f"token signed with key id '{kid[:64]}', which is not in the {self.source.description}",
            )
        return found

    def _may_refresh(self, now: datetime) -> bool:
        last = self._last_refresh
        return last is None or now - last >= self._interval or now < last
