"""``sovereign login|logout|whoami``: operator sign-in with the Keycloak realm and the cached token."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import UTC, datetime

from kms.oidc.cache import CachedToken, default_path, delete_cached_token, read_cached_token, save_token
from kms.oidc.errors import AuthError
from kms.oidc.login import openid_client, password_login, poll_device_login, start_device_login
from kms.oidc.tokens import split_unverified
from sovereign.cli._output import UsageError, fail, print_ok


def _now() -> datetime:
    return datetime.now(UTC)


def _login(args: argparse.Namespace) -> int:
    missing = [
        flag
        for flag, value in (
            ("--server-url", args.server_url),
            ("--realm", args.realm),
            ("--client-id", args.client_id),
        )
        if not value
    ]
    if missing:
        raise UsageError(
            f"{', '.join(missing)} required",
            "give them, or set SOVEREIGN_OIDC_SERVER_URL, SOVEREIGN_OIDC_REALM and SOVEREIGN_OIDC_CLIENT_ID",
        )
    if args.password_stdin and not args.username:
        raise UsageError("--password-stdin needs --username")
    ca_file = str(args.ca_file.resolve()) if args.ca_file else None
    openid = openid_client(args.server_url, args.realm, args.client_id, ca_file=ca_file)
    try:
        if args.username:
            password = (
                sys.stdin.readline().rstrip("\r\n") if args.password_stdin else getpass.getpass("password: ")
            )
            token = password_login(openid, args.username, password, now=_now())
        else:
            device = start_device_login(openid, now=_now())
            print(f"open {device.verification_uri_complete}", file=sys.stderr)
            print(
                f"and confirm the code {device.user_code} (valid until {device.expires_at:%H:%M:%S} UTC)",
                file=sys.stderr,
            )
            token = poll_device_login(openid, device, clock=_now, sleep=time.sleep)
        path = save_token(token, args.cache)
    except AuthError as err:
        return fail(err, as_json=args.json)
    return _show(
        token.access_token, token.expires_at, args.json, extra={"cache": str(path), **_session(token)}
    )


def _logout(args: argparse.Namespace) -> int:
    removed = delete_cached_token(args.cache)
    path = args.cache or default_path()
    if args.json:
        print_ok(removed=removed, cache=str(path))
    else:
        print(f"removed {path}" if removed else f"no cached token at {path}")
    return 0


def _whoami(args: argparse.Namespace) -> int:
    try:
        token = read_cached_token(args.cache)
    except AuthError as err:
        return fail(err, as_json=args.json)
    status = _show(
        token.access_token,
        token.expires_at,
        args.json,
        extra={"server_url": token.server_url, **_session(token)},
    )
    if token.seconds_left(_now()) <= 0 and not token.refresh_token:
        if not args.json:
            print(f"the token has EXPIRED; sign in again: {token.login_command()}", file=sys.stderr)
        return 1
    return status


def _session(token: CachedToken) -> dict[str, str]:
    """Whether the CLI can renew the access token by itself, and until when."""
    if not token.refresh_token:
        return {"refresh": "none: sign in again when the token expires"}
    until = token.refresh_expires_at.isoformat() if token.refresh_expires_at else "not said by the realm"
    return {"refresh": f"automatic, until {until}"}


def _roles(entry: object) -> list[str]:
    roles = entry.get("roles") if isinstance(entry, dict) else None
    return sorted(str(r) for r in roles) if isinstance(roles, list) else []


def _show(access_token: str, expires_at: datetime, as_json: bool, *, extra: dict[str, str]) -> int:
    try:
        claims = split_unverified(access_token)[1]
    except AuthError as err:
        return fail(err, as_json=as_json)
    realm_roles = _roles(claims.get("realm_access"))
    access = claims.get("resource_access")
    client_roles = {str(c): _roles(e) for c, e in access.items()} if isinstance(access, dict) else {}
    left = int((expires_at - _now()).total_seconds())
    info = {
        "subject": claims.get("sub"),
        "username": claims.get("preferred_username"),
        "issuer": claims.get("iss"),
        "client": claims.get("azp"),
        "realm_roles": realm_roles,
        "client_roles": client_roles,
        "expires_at": expires_at.isoformat(),
        "seconds_left": max(left, 0),
        "expired": left <= 0,
        "verified": False,  # decoded locally; the control plane verifies every call
        **extra,
    }
    if as_json:
        print_ok(info)
        return 0
    print(f"operator   {info['username']} ({info['subject']})")
    print(f"realm      {info['issuer']} via client {info['client']}")
    print(f"roles      {', '.join(realm_roles) or '-'}")
    for client, roles in sorted(client_roles.items()):
        print(f"  {client}: {', '.join(roles) or '-'}")
    state = "EXPIRED" if left <= 0 else f"{left // 60} min {left % 60} s left"
    print(f"expires    {expires_at:%Y-%m-%d %H:%M:%S} UTC ({state})")
    print(f"refresh    {extra['refresh']}")
    return 0
