"""``sovereign dev``: the arguments; the implementation is ``sovereign.cli.dev``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.cli._lazy import runs

DEFAULT_DIR = Path("var/dev")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "dev",
        help="development stack: OpenBao, the dev realm and the control plane in one command",
        description="For development only: a dev OpenBao (in memory), the dev Keycloak realm, and "
        "`sovereign serve` trusting a saved simulator PKI, with the demo policy.",
    )
    cmds = parser.add_subparsers(dest="dev_command", metavar="ACTION", required=True)
    up = cmds.add_parser("up", help="start the stack in the foreground; Ctrl-C (or `dev down`) stops it")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state folder (default {DEFAULT_DIR})")
    up.add_argument("--json", action="store_true", help="print the environment as one JSON line")
    up.set_defaults(func=runs("sovereign.cli.dev:_up"))
    down = cmds.add_parser("down", help="stop a running `dev up` and every process it started")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.add_argument("--json", action="store_true")
    down.set_defaults(func=runs("sovereign.cli.dev:_down"))
