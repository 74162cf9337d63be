"""``sovereign login``: the arguments; the implementation is ``sovereign.cli.login``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sovereign.cli._common import existing_file
from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login = sub.add_parser("login", help="sign in with the Keycloak realm and cache the access token (0600)")
    login.add_argument(
        "--server-url",
        default=os.environ.get("SOVEREIGN_OIDC_SERVER_URL"),
        help="Keycloak base URL ($SOVEREIGN_OIDC_SERVER_URL)",
    )
    login.add_argument(
        "--realm", default=os.environ.get("SOVEREIGN_OIDC_REALM"), help="realm ($SOVEREIGN_OIDC_REALM)"
    )
    login.add_argument(
        "--client-id",
        default=os.environ.get("SOVEREIGN_OIDC_CLIENT_ID"),
        help="public client for the CLI ($SOVEREIGN_OIDC_CLIENT_ID)",
    )
    login.add_argument("--ca-file", type=existing_file, help="CA bundle to verify Keycloak's TLS certificate")
    how = login.add_mutually_exclusive_group()
    how.add_argument("--device", action="store_true", help="device code flow: open a URL elsewhere (default)")
    how.add_argument(
        "--username", help="password grant for this user (password from --password-stdin or a prompt)"
    )
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    login.add_argument("--cache", type=Path, help="token cache file (default ~/.config/sovereign/token.json)")
    login.add_argument("--json", action="store_true", help="machine-readable output")
    login.set_defaults(func=runs("sovereign.cli.login:_login"))

    logout = sub.add_parser("logout", help="delete the cached operator token")
    logout.add_argument("--cache", type=Path, help="token cache file")
    logout.add_argument("--json", action="store_true", help="machine-readable output")
    logout.set_defaults(func=runs("sovereign.cli.login:_logout"))

    whoami = sub.add_parser(
        "whoami", help="show the cached token's operator, roles and time left (decoded locally)"
    )
    whoami.add_argument("--cache", type=Path, help="token cache file")
    whoami.add_argument("--json", action="store_true", help="machine-readable output")
    whoami.set_defaults(func=runs("sovereign.cli.login:_whoami"))
