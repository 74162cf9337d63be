"""Operator sign-in against the Keycloak realm with python-keycloak: password grant or device code.

The result is a ``CachedToken`` for ``kms.oidc.cache.save_token``. Error texts from the identity provider
are reduced to their OAuth error code; passwords, device codes and tokens never appear in messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakConnectionError, KeycloakError

from kms.oidc.cache import CachedToken, token_expiry
from kms.oidc.errors import AuthError, Code

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def openid_client(
    server_url: str, realm: str, client_id: str, *, ca_file: str | None = None
) -> KeycloakOpenID:
    """The realm's OpenID client; ``ca_file`` is remembered in the tokens it gives (for refreshing)."""
    return KeycloakOpenID(
        server_url=server_url.rstrip("/") + "/",
        realm_name=realm,
        client_id=client_id,
        verify=ca_file or True,
        timeout=30,
    )


def _oauth_error(exc: KeycloakError) -> str:
    """The OAuth ``error`` code of a failed call (e.g. invalid_grant), or the HTTP status."""
    body = exc.response_body
    try:
        doc = json.loads(body) if isinstance(body, bytes | str) else None
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])[:64]
    return f"HTTP {exc.response_code}"


def _failure(exc: KeycloakError, what: str) -> AuthError:
    if isinstance(exc, KeycloakConnectionError) or exc.response_code is None:
        return AuthError(Code.AUTH_PROVIDER_UNAVAILABLE, f"could not reach Keycloak for {what}")
    if exc.response_code == 404:
        return AuthError(Code.AUTH_PROVIDER_UNAVAILABLE, f"Keycloak has no such realm or endpoint for {what}")
    return AuthError(Code.AUTH_LOGIN_FAILED, f"Keycloak refused {what}: {_oauth_error(exc)}")


def _cached(openid: KeycloakOpenID, doc: object, now: datetime) -> CachedToken:
    if not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
        raise AuthError(Code.AUTH_LOGIN_FAILED, "Keycloak's token response has no access_token")
    expires_in = doc.get("expires_in")
    refresh = doc.get("refresh_token")
    refresh_in = doc.get("refresh_expires_in")
    verify = openid.connection.verify
    return CachedToken(
        server_url=str(openid.connection.base_url),
        realm=openid.realm_name,
        client_id=openid.client_id,
        access_token=doc["access_token"],
        expires_at=token_expiry(
            doc["access_token"], now=now, expires_in=expires_in if isinstance(expires_in, int) else None
        ),
        obtained_at=now,
        refresh_token=refresh if isinstance(refresh, str) else "",
        # Keycloak says 0 for tokens without an end of their own (offline sessions)
        refresh_expires_at=now + timedelta(seconds=refresh_in)
        if isinstance(refresh, str) and isinstance(refresh_in, int) and refresh_in > 0
        else None,
        ca_file=verify if isinstance(verify, str) else "",
    )


def refresh_login(openid: KeycloakOpenID, token: CachedToken, *, now: datetime) -> CachedToken:
    """A new access token (and refresh token) for ``token``'s session by the refresh-token grant;
    AUTH_TOKEN_EXPIRED with the login command when the session is over."""
    if not token.refresh_token:
        raise AuthError(
            Code.AUTH_TOKEN_EXPIRED,
            "the cached session has no refresh token",
            hint=f"sign in again: {token.login_command()}",
        )
    try:
        doc = openid.refresh_token(token.refresh_token)
    except KeycloakError as exc:
        failure = _failure(exc, "the session refresh")
        if failure.code is Code.AUTH_LOGIN_FAILED:  # invalid_grant: the session ended or was revoked
            raise AuthError(
                Code.AUTH_TOKEN_EXPIRED, failure.message, hint=f"sign in again: {token.login_command()}"
            ) from None
        raise failure from None
    return _cached(openid, doc, now)


def password_login(openid: KeycloakOpenID, username: str, password: str, *, now: datetime) -> CachedToken:
    """Resource-owner password grant (the realm client must allow 'Direct access grants')."""
    try:
        doc = openid.token(username, password, scope="openid")
    except KeycloakError as exc:
        raise _failure(exc, f"the password sign-in of {username[:128]!r}") from None
    return _cached(openid, doc, now)


@dataclass(frozen=True)
class DeviceLogin:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    interval: int
    expires_at: datetime


def start_device_login(openid: KeycloakOpenID, *, now: datetime) -> DeviceLogin:
    """Ask for a device code (the realm client must allow 'OAuth 2.0 Device Authorization Grant')."""
    try:
        doc = openid.device(scope="openid")
    except KeycloakError as exc:
        raise _failure(exc, "a device code") from None
    try:
        return DeviceLogin(
            device_code=str(doc["device_code"]),
            user_code=str(doc["user_code"]),
            verification_uri=str(doc["verification_uri"]),
            verification_uri_complete=str(doc.get("verification_uri_complete") or doc["verification_uri"]),
            interval=max(1, int(doc.get("interval", 5))),
            expires_at=now + timedelta(seconds=int(doc["expires_in"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AuthError(
            Code.AUTH_LOGIN_FAILED, "Keycloak's device authorization response is incomplete"
        ) from exc


def poll_device_login(
    openid: KeycloakOpenID,
    device: DeviceLogin,
    *,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> CachedToken:
    """Poll the token endpoint at the advised interval until the operator finished signing in."""
    interval = device.interval
    while True:
        now = clock()
        if now >= device.expires_at:
            raise AuthError(
                Code.AUTH_LOGIN_FAILED, "the device code expired before the sign-in was completed"
            )
        try:
            doc = openid.token(grant_type=DEVICE_GRANT, device_code=device.device_code, scope="openid")
        except KeycloakError as exc:
            error = _oauth_error(exc)
            if error == "authorization_pending":
                sleep(interval)
                continue
            if error == "slow_down":
                interval += 5
                sleep(interval)
                continue
            raise _failure(exc, "the device sign-in") from None
        return _cached(openid, doc, now)
