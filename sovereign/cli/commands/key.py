"""``sovereign key``: the arguments; the implementation is ``sovereign.cli.key``."""

from __future__ import annotations

import argparse

from sovereign.cli._lazy import runs
from sovereign.cli.commands.kms import add_bao_arguments

DB_HELP = "database file or URL (default $SOVEREIGN_DB, the installed config's db, or var/sovereign.db)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("key", help="manage dataset and model keys (wrapped by the OpenBao KEK)")
    cmds = parser.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    def command(
        name: str, help_text: str, *, named: bool = True, bao: bool = True
    ) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text)
        if named:
            p.add_argument("name", metavar="NAME")
        p.add_argument("--db", help=DB_HELP)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if bao:
            add_bao_arguments(p)
        return p

    create = command("create", "create a key (version 1) from an OpenBao wrapped data key")
    create.add_argument("--kind", required=True, choices=["dataset", "model"])
    create.set_defaults(func=runs("sovereign.cli.key:_create"))
    command("rotate", "add a new current version to a key").set_defaults(
        func=runs("sovereign.cli.key:_rotate")
    )
    command("list", "list keys", named=False, bao=False).set_defaults(func=runs("sovereign.cli.key:_list"))
    command("show", "show a key and its versions", bao=False).set_defaults(
        func=runs("sovereign.cli.key:_show")
    )
    for action, verb, text in (
        ("disable", "disabled", "refuse releases of a key until enabled"),
        ("enable", "enabled", "allow releases of a disabled key again"),
        ("destroy", "destroyed", "wipe a key's wrapped material for good (metadata stays)"),
    ):
        command(action, text, bao=False).set_defaults(func=runs("sovereign.cli.key:_lifecycle", action, verb))
    command(
        "rotate-kek",
        "rotate the OpenBao KEK (operator token) and rewrap every stored key inside OpenBao",
        named=False,
    ).set_defaults(func=runs("sovereign.cli.key:_rotate_kek"))
