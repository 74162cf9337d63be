"""``sovereign kms``: the arguments; the implementation is ``sovereign.cli.kms``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.cli._common import port_number
from sovereign.cli._lazy import runs


def add_bao_arguments(parser: argparse.ArgumentParser) -> None:
    """OpenBao connection flags; each falls back to its SOVEREIGN_BAO_* variable."""
    group = parser.add_argument_group("OpenBao connection")
    group.add_argument("--addr", help="OpenBao address (default $SOVEREIGN_BAO_ADDR)")
    group.add_argument(
        "--token-file",
        type=Path,
        help="file holding a token, or - to read it from standard input (default $SOVEREIGN_BAO_TOKEN_FILE "
        "or $SOVEREIGN_BAO_TOKEN)",
    )
    group.add_argument("--role-id", help="AppRole role id (default $SOVEREIGN_BAO_ROLE_ID)")
    group.add_argument(
        "--secret-id-file", type=Path, help="AppRole secret id file (default $SOVEREIGN_BAO_SECRET_ID_FILE)"
    )
    group.add_argument("--ca-cert", help="CA bundle for a TLS listener (default $SOVEREIGN_BAO_CA_CERT)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("kms", help="prepare and run OpenBao for the control plane")
    cmds = parser.add_subparsers(dest="kms_command", metavar="ACTION", required=True)

    bs = cmds.add_parser(
        "bootstrap",
        help="enable transit and AppRole, create the KEK, audit key, policy and role (idempotent)",
        description="Run once per OpenBao with an operator token. Running it again changes nothing except "
        "issuing a fresh AppRole secret id into the output folder.",
    )
    add_bao_arguments(bs)
    bs.add_argument(
        "--out", type=Path, default=Path("var/openbao"), help="where to write role-id and secret-id"
    )
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(func=runs("sovereign.cli.kms:_bootstrap"))

    dev = cmds.add_parser(
        "dev",
        help="run a bootstrapped in-memory OpenBao dev server in the foreground (Ctrl-C stops it)",
        description="For demos and development only: in-memory storage (keys vanish when it stops), no TLS.",
    )
    dev.add_argument("--workdir", type=Path, help="folder for config, logs, audit log and credentials")
    dev.add_argument("--port", type=port_number, help="loopback port (default: a free one)")
    dev.add_argument("--json", action="store_true")
    dev.set_defaults(func=runs("sovereign.cli.kms:_dev"))

    pol = cmds.add_parser(
        "policy",
        help="print the control plane's OpenBao policy (HCL), or with --data-owner the data owner's",
        description="The text 'sovereign kms bootstrap' writes to OpenBao; the same files ship as "
        "deploy/openbao/sovereign-control-plane.hcl and deploy/openbao/sovereign-data-owner.hcl.",
    )
    pol.add_argument(
        "--data-owner",
        action="store_true",
        help="the data owner's policy (sovereign-data-owner: create data keys under the KEK, never decrypt)",
    )
    pol.set_defaults(func=runs("sovereign.cli.kms:_policy"))
