"""Validate Keycloak access tokens and turn them into an ``Actor``.

Signature and registered claims are checked by python-keycloak's ``KeycloakOpenID.decode_token`` with
``key=`` (the one JWK picked by ``kid`` from the key ring loaded at start, so no per-request fetch),
``algs=`` and ``check_claims=`` (jwcrypto semantics: ``iss`` must match, ``sub`` must exist, ``exp``
must exist and not be older than now minus the leeway, computed from the injected ``now``). Because
``check_claims`` switches off jwcrypto's own ``nbf`` check, and to keep each refusal precise, the claims
are then checked again explicitly: ``exp``, ``nbf``, ``iat``, ``iss``, ``aud``/``azp`` and ``typ``.

Order of checks: shape, ``alg`` allow-list, claimed issuer (unverified, so foreign tokens never trigger
a key refresh), ``kid`` (refresh on unknown kid, rate limited), signature and claims. No clock reads:
``validate`` takes ``now``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jwcrypto import jwt  # type: ignore[import-untyped]
from jwcrypto.common import InvalidJWAAlgorithm, base64url_decode  # type: ignore[import-untyped]
from keycloak import KeycloakOpenID

from kms.oidc.errors import AuthError, Code
from kms.oidc.jwks import ALLOWED_ALGS, FileJwks, JwksSource, KeyRing, RealmJwks

MAX_TOKEN_CHARS = 16 * 1024


@dataclass(frozen=True)
class Actor:
    """An authenticated operator. ``roles`` are the effective roles: the realm roles plus the client
    roles of the control plane's own client; ``client_roles`` lists every client's roles as sent."""

    subject: str
    username: str
    roles: frozenset[str]
    client_roles: Mapping[str, frozenset[str]] = field(compare=False, hash=False)
    realm: str
    issuer: str
    client_id: str
    token_id: str
    expires_at: datetime

    @property
    def audit_id(self) -> str:
        """The ``actor`` string of audit entries."""
        return f"operator:{self.subject}"

    def audit_fields(self) -> dict[str, Any]:
        """Who acted, for the audit entry of an operator action (no token material)."""
        return {
            "subject": self.subject,
            "username": self.username,
            "roles": sorted(self.roles),
            "realm": self.realm,
            "client_id": self.client_id,
        }


def realm_of(issuer: str) -> tuple[str, str]:
    """(server URL, realm) of a Keycloak issuer ``<server>/realms/<realm>``."""
    base, sep, realm = issuer.rstrip("/").rpartition("/realms/")
    if not sep or not base or not realm or "/" in realm:
        raise AuthError(
            Code.AUTH_CONFIG_INVALID,
            f"issuer '{issuer}' is not a Keycloak realm URL (<server>/realms/<realm>)",
        )
    return base + "/", realm


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64url_decode(segment))
    except (ValueError, TypeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, f"the token's {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, f"the token's {what} is not a JSON object")
    return value


def split_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, NOT verified: for routing and diagnostics only."""
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, f"the token is longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) == 5:
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, "encrypted (JWE) tokens are not accepted")
    if len(parts) != 3:
        raise AuthError(
            Code.AUTH_MALFORMED_TOKEN, "the token is not a compact JWS (three dot-separated parts)"
        )
    return _b64json(parts[0], "header"), _b64json(parts[1], "payload")


def _numeric(claims: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthError(Code.AUTH_MALFORMED_TOKEN, f"the token has no '{name}' claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, f"the token's '{name}' claim is not a number")
    return int(value)


def _strings(value: Any, what: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, f"the token's {what} is not a list of strings")
    return frozenset(value)


def _client_roles(claims: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    access = claims.get("resource_access") or {}
    if not isinstance(access, Mapping):
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, "the token's resource_access is not an object")
    out: dict[str, frozenset[str]] = {}
    for client, entry in access.items():
        if not isinstance(entry, Mapping):
            raise AuthError(Code.AUTH_MALFORMED_TOKEN, "the token's resource_access entries are not objects")
        out[str(client)] = _strings(entry.get("roles"), f"resource_access.{client}.roles")
    return out


def _decode_failure(exc: Exception) -> AuthError:
    """Map jwcrypto's exceptions (raised through decode_token) onto codes."""
    if isinstance(exc, jwt.JWTExpired):
        return AuthError(Code.AUTH_TOKEN_EXPIRED, "the token has expired")
    if isinstance(exc, jwt.JWTNotYetValid):
        return AuthError(Code.AUTH_TOKEN_NOT_YET_VALID, "the token is not valid yet")
    if isinstance(exc, jwt.JWTInvalidClaimValue):
        return AuthError(Code.AUTH_WRONG_ISSUER, "the token's issuer is not the configured realm")
    if isinstance(exc, jwt.JWTMissingClaim | jwt.JWTInvalidClaimFormat):
        return AuthError(Code.AUTH_MALFORMED_TOKEN, f"the token's claims are incomplete or malformed ({exc})")
    if isinstance(exc, InvalidJWAAlgorithm):
        return AuthError(Code.AUTH_ALG_NOT_ALLOWED, "the token's algorithm is not allowed")
    return AuthError(Code.AUTH_BAD_SIGNATURE, "the token's signature does not verify with the realm's key")


class TokenValidator:
    """Checks bearer tokens of one Keycloak realm for one audience (the control plane's client id)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_source: JwksSource,
        accept_azp: bool = True,
        leeway: timedelta = timedelta(seconds=30),
        refresh_interval: timedelta = timedelta(seconds=60),
        algs: tuple[str, ...] = ALLOWED_ALGS,
        openid: KeycloakOpenID | None = None,
    ) -> None:
        if not set(algs) <= set(ALLOWED_ALGS) or not algs:
            raise AuthError(
                Code.AUTH_CONFIG_INVALID, f"allowed algorithms must be a subset of {ALLOWED_ALGS}"
            )
        if not audience:
            raise AuthError(Code.AUTH_CONFIG_INVALID, "the audience (control plane client id) is empty")
        server_url, self.realm = realm_of(issuer)
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.accept_azp = accept_azp
        self.leeway = leeway
        self.algs = algs
        self._openid = openid or KeycloakOpenID(
            server_url=server_url, realm_name=self.realm, client_id=audience
        )
        self.keys = KeyRing(jwks_source, algs=algs, refresh_interval=refresh_interval)

    def validate(self, token: str | None, *, now: datetime) -> Actor:
        """The operator behind ``token``, or AuthError with the precise reason."""
        if not token:
            raise AuthError(Code.AUTH_MISSING_TOKEN, "no bearer token was sent")
        header, unverified = split_unverified(token)
        alg = header.get("alg")
        if alg not in self.algs:
            raise AuthError(
                Code.AUTH_ALG_NOT_ALLOWED,
                f"token algorithm {str(alg)[:16]!r} is not allowed (allowed: {', '.join(self.algs)})",
            )
        self._check_issuer(unverified.get("iss"))
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError(Code.AUTH_UNKNOWN_KID, "the token has no key id (kid)")
        key_alg, key = self.keys.get(kid, now=now)
        if key_alg != alg:
            raise AuthError(
                Code.AUTH_ALG_NOT_ALLOWED, f"token algorithm {alg} does not match key '{kid}' ({key_alg})"
            )
        leeway = int(self.leeway.total_seconds())
        try:
            claims = self._openid.decode_token(
                token,
                key=key,
                algs=[alg],
                check_claims={"iss": self.issuer, "sub": None, "exp": int(now.timestamp()) - leeway},
                leeway=leeway,
                expected_type="JWS",
                strict_serialization=True,
            )
        except Exception as exc:  # jwcrypto raises many types; every one is a refusal
            raise _decode_failure(exc) from exc
        return self._actor(claims, now)

    def _check_issuer(self, iss: Any) -> None:
        if not isinstance(iss, str) or iss.rstrip("/") != self.issuer:
            raise AuthError(
                Code.AUTH_WRONG_ISSUER,
                f"token issuer {str(iss)[:256]!r} is not the trusted realm {self.issuer!r}",
            )

    def _check_times(self, claims: Mapping[str, Any], now: datetime) -> datetime:
        ts, leeway = now.timestamp(), self.leeway.total_seconds()
        exp = _numeric(claims, "exp", required=True)
        assert exp is not None
        if ts > exp + leeway:
            raise AuthError(Code.AUTH_TOKEN_EXPIRED, f"the token expired at {_iso(exp)}")
        nbf = _numeric(claims, "nbf", required=False)
        if nbf is not None and nbf > ts + leeway:
            raise AuthError(Code.AUTH_TOKEN_NOT_YET_VALID, f"the token is not valid before {_iso(nbf)}")
        iat = _numeric(claims, "iat", required=False)
        if iat is not None and iat > ts + leeway:
            raise AuthError(
                Code.AUTH_TOKEN_NOT_YET_VALID, f"the token was issued in the future ({_iso(iat)})"
            )
        return datetime.fromtimestamp(exp, UTC)

    def _check_audience(self, claims: Mapping[str, Any]) -> str:
        aud = claims.get("aud")
        audiences = {aud} if isinstance(aud, str) else set(_strings(aud, "aud"))
        azp = claims.get("azp")
        if self.audience in audiences or (self.accept_azp and azp == self.audience):
            return azp if isinstance(azp, str) else self.audience
        raise AuthError(
            Code.AUTH_WRONG_AUDIENCE,
            f"token audience {sorted(audiences)} (azp {str(azp)[:128]!r}) does not include {self.audience!r}",
        )

    def _actor(self, claims: Mapping[str, Any], now: datetime) -> Actor:
        self._check_issuer(claims.get("iss"))
        expires_at = self._check_times(claims, now)
        client_id = self._check_audience(claims)
        typ = claims.get("typ")
        if not isinstance(typ, str) or typ.lower() != "bearer":
            raise AuthError(
                Code.AUTH_WRONG_TOKEN_TYPE, f"token type {str(typ)[:32]!r} is not an access token (Bearer)"
            )
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError(Code.AUTH_MALFORMED_TOKEN, "the token has no subject")
        realm_access = claims.get("realm_access") or {}
        if not isinstance(realm_access, Mapping):
            raise AuthError(Code.AUTH_MALFORMED_TOKEN, "the token's realm_access is not an object")
        client_roles = _client_roles(claims)
        roles = _strings(realm_access.get("roles"), "realm_access.roles") | client_roles.get(
            self.audience, frozenset()
        )
        username = claims.get("preferred_username")
        jti = claims.get("jti")
        return Actor(
            subject=subject,
            username=username if isinstance(username, str) and username else subject,
            roles=roles,
            client_roles=MappingProxyType(client_roles),
            realm=self.realm,
            issuer=self.issuer,
            client_id=client_id,
            token_id=jti if isinstance(jti, str) else "",
            expires_at=expires_at,
        )


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def keycloak_validator(
    server_url: str,
    realm: str,
    audience: str,
    *,
    jwks_file: Path | None = None,
    ca_file: str | None = None,
    issuer: str | None = None,
    timeout: int = 10,
    **options: Any,
) -> TokenValidator:
    """A validator for a Keycloak realm: keys from the realm's certs endpoint (fetched now) or from
    ``jwks_file``. ``issuer`` overrides ``<server_url>/realms/<realm>`` when Keycloak's public
    (frontend) URL differs from the URL this server reaches it by."""
    if not server_url or not realm:
        raise AuthError(Code.AUTH_CONFIG_INVALID, "the Keycloak server URL and realm are required")
    openid = KeycloakOpenID(
        server_url=server_url.rstrip("/") + "/",
        realm_name=realm,
        client_id=audience,
        verify=ca_file or True,
        timeout=timeout,
    )
    source: JwksSource = FileJwks(jwks_file) if jwks_file else RealmJwks(openid)
    return TokenValidator(
        issuer or f"{server_url.rstrip('/')}/realms/{realm}",
        audience,
        jwks_source=source,
        openid=openid,
        **options,
    )
