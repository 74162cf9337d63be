"""``sovereign serve``: the arguments; the implementation is ``sovereign.cli.serve``."""

from __future__ import annotations

import argparse

from kms.config import OPTIONS
from sovereign.cli._common import existing_file
from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the key-release control plane (gRPC)",
        description="Serve Attestation on the node-facing TCP port (TLS unless --insecure-dev) with health "
        "checking and reflection, KeyRelease on its own port with mutual TLS (node client certificates "
        "issued at registration), and Admin/Audit on the operator port (TLS; every call needs a Keycloak "
        "access token with the method's role, see docs/keycloak.md). TLS certificate and key files are "
        "re-read when replaced (no restart). "
        "Options come from --config (TOML, same names with underscores), then SOVEREIGN_* environment "
        "variables, then the command line. Prints 'listening on ...' when ready; SIGTERM/SIGINT stop it "
        "gracefully.",
    )
    parser.add_argument(
        "--config",
        type=existing_file,
        help="TOML file with any of the options below (default $SOVEREIGN_CONFIG, or "
        "/etc/sovereign/sovereign.toml when installed)",
    )
    for option in OPTIONS:
        default = f" (default: {option.default!r}; env {option.env})"
        if option.type is bool:
            parser.add_argument(option.flag, action="store_true", default=None, help=option.help + default)
        else:
            parser.add_argument(
                option.flag,
                type=option.type,
                default=None,
                metavar=option.name.upper(),
                help=option.help + default,
            )
        for old, flag in zip(option.renamed_from, option.old_flags, strict=True):
            # still accepted (load_config warns and names the new flag); not listed in --help
            parser.add_argument(flag, dest=old, type=option.type, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=runs("sovereign.cli.serve:_serve"))
