"""``sovereign key create|rotate|list|show|disable|enable|destroy|rotate-kek``: the key catalogue."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kms.domain.catalogue import Catalogue, summary_rows
from kms.errors import KmsError
from kms.openbao.vault import OpenBaoTransit
from kms.sql import open_store
from kms.sql.keys import SqlKeyStore
from sovereign.cli._output import fail, print_json, print_table
from sovereign.cli.kms import add_bao_arguments, bao_settings


def default_db() -> Path:
    return Path(os.environ.get("SOVEREIGN_DB", "var/sovereign.db"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("key", help="manage dataset and model keys (wrapped by the OpenBao KEK)")
    cmds = parser.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    def command(
        name: str, help_text: str, *, named: bool = True, bao: bool = True
    ) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text)
        if named:
            p.add_argument("name", metavar="NAME")
        p.add_argument("--db", type=Path, help="database file (default $SOVEREIGN_DB or var/sovereign.db)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if bao:
            add_bao_arguments(p)
        return p

    create = command("create", "create a key (version 1) from an OpenBao wrapped data key")
    create.add_argument("--kind", required=True, choices=["dataset", "model"])
    create.set_defaults(func=_create)
    command("rotate", "add a new current version to a key").set_defaults(func=_rotate)
    command("list", "list keys", named=False, bao=False).set_defaults(func=_list)
    command("show", "show a key and its versions", bao=False).set_defaults(func=_show)
    for action, verb, text in (
        ("disable", "disabled", "refuse releases of a key until enabled"),
        ("enable", "enabled", "allow releases of a disabled key again"),
        ("destroy", "destroyed", "wipe a key's wrapped material for good (metadata stays)"),
    ):
        command(action, text, bao=False).set_defaults(func=_lifecycle(action, verb))
    command(
        "rotate-kek",
        "rotate the OpenBao KEK (operator token) and rewrap every stored key inside OpenBao",
        named=False,
    ).set_defaults(func=_rotate_kek)


def open_catalogue(args: argparse.Namespace, *, bao: bool, operator: bool = False) -> Catalogue:
    store = open_store(args.db or default_db())
    transit = OpenBaoTransit(bao_settings(args, operator=operator)) if bao else None
    return Catalogue(SqlKeyStore(store), transit, lambda: datetime.now(UTC))


def _show_record(args: argparse.Namespace, record_dict: dict[str, object], verb: str) -> int:
    if args.json:
        print_json({"ok": True, "key": record_dict})
    else:
        print(
            f"{verb} {record_dict['name']} ({record_dict['kind']}, {record_dict['state']}, "
            f"version {record_dict['current_version']})"
        )
    return 0


def _create(args: argparse.Namespace) -> int:
    try:
        record = open_catalogue(args, bao=True).create(args.name, args.kind)
    except KmsError as err:
        return fail(err, as_json=args.json)
    return _show_record(args, record.to_dict(), "created")


def _rotate(args: argparse.Namespace) -> int:
    try:
        record = open_catalogue(args, bao=True).rotate(args.name)
    except KmsError as err:
        return fail(err, as_json=args.json)
    return _show_record(args, record.to_dict(), "rotated")


def _list(args: argparse.Namespace) -> int:
    try:
        records = open_catalogue(args, bao=False).list()
    except KmsError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json([r.to_dict() for r in records])
    else:
        print_table(summary_rows(records), ["name", "kind", "state", "version", "kek_version", "updated_at"])
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        record = open_catalogue(args, bao=False).describe(args.name)
    except KmsError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json(record.to_dict())
        return 0
    _show_record(args, record.to_dict(), "key")
    print_table(
        record.to_dict()["versions"], ["version", "kek_version", "created_at", "rewrapped_at", "wrapped"]
    )
    return 0


def _lifecycle(action: str, verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            record = getattr(open_catalogue(args, bao=False), action)(args.name)
        except KmsError as err:
            return fail(err, as_json=args.json)
        return _show_record(args, record.to_dict(), verb)

    return run


def _rotate_kek(args: argparse.Namespace) -> int:
    try:
        catalogue = open_catalogue(args, bao=True, operator=True)
        version = catalogue.rotate_kek()
        report = catalogue.rewrap_all(version)
    except KmsError as err:
        return fail(err, as_json=args.json)
    result = {
        "kek_version": version,
        "rewrapped": report.rewrapped,
        "already_current": report.current,
        "failed": list(report.failed),
    }
    if args.json:
        print_json({"ok": not report.failed, **result})
    else:
        print(f"KEK is now version {version}; rewrapped {report.rewrapped}, already current {report.current}")
        for item in report.failed:
            print(f"failed: {item} (rerun to retry)")
    return 1 if report.failed else 0
