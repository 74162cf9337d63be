"""``sovereign dataset``: the arguments; the implementation is ``sovereign.cli.dataset``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.cli._common import existing_file
from sovereign.cli._lazy import runs
from sovereign.cli.commands.key import DB_HELP
from sovereign.cli.commands.kms import add_bao_arguments


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("dataset", help="seal datasets with a catalogue key, or open them (custodian)")
    cmds = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    for name, text in (
        ("encrypt", "seal IN into OUT with the key's current version (chunked AES-256-GCM)"),
        (
            "decrypt",
            "open a sealed stream with the key version named in its header (recovery by a custodian)",
        ),
    ):
        p = cmds.add_parser(name, help=text, description=text)
        p.add_argument("input", type=existing_file, metavar="IN")
        p.add_argument("output", type=Path, metavar="OUT")
        p.add_argument("--key", required=True, metavar="NAME", help="catalogue key name (kind dataset)")
        p.add_argument("--db", help=DB_HELP)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        add_bao_arguments(p)
        if name == "encrypt":
            owner = p.add_argument_group(
                "data owner identity (sovereign kms bootstrap: owner-role-id, owner-secret-id)"
            )
            owner.add_argument(
                "--owner-role-id",
                help="seal under a fresh key version made with the data owner's AppRole, which cannot decrypt "
                "(default $SOVEREIGN_BAO_OWNER_ROLE_ID)",
            )
            owner.add_argument(
                "--owner-secret-id-file",
                type=Path,
                help="its secret id (default $SOVEREIGN_BAO_OWNER_SECRET_ID_FILE)",
            )
        p.set_defaults(
            func=runs("sovereign.cli.dataset:" + ("_encrypt" if name == "encrypt" else "_decrypt"))
        )
