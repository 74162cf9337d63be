"""``sovereign key create|rotate|list|show|disable|enable|destroy|rotate-kek``: the key catalogue.

Every change is appended to the audit ledger (``_local_ledger``), as the Admin RPCs' are."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kms.audit.entry import Kind
from kms.domain.catalogue import Catalogue, KeyRecord, parse_kind, summary_rows, validate_name
from kms.errors import Code, KmsError
from kms.openbao.vault import OpenBaoTransit
from kms.sql import open_store
from kms.sql.keys import SqlKeyStore
from kms.sql.store import Store
from sovereign.cli._installed import database_target, refuse_root_on_service_files
from sovereign.cli._installed import source as installed_source
from sovereign.cli._local_ledger import key_fields, record_local
from sovereign.cli._output import fail, print_json, print_ok, print_table, readable
from sovereign.cli.kms import bao_settings


def _local_path(target: str | Path) -> str | None:
    """The file of a SQLite target; None for a database server URL."""
    text = str(target)
    return (
        text.removeprefix("sqlite:///") if text.startswith("sqlite:///") else None if "://" in text else text
    )


def existing_database(target: str | Path) -> str | Path:
    """``target`` when it is a database that exists (or a server URL); else STORAGE_ERROR naming it.
    Commands that only use keys open the database this way, so a wrong path never leaves a new one."""
    path = _local_path(target)
    if path is not None and not Path(path).is_file():
        raise KmsError(
            f"no database at {path}",
            code=Code.STORAGE_ERROR,
            hint="give the control plane's database with --db or $SOVEREIGN_DB (installed hosts: db in "
            f"{installed_source()}); 'sovereign key create' makes a new one",
        )
    return target


def open_catalogue(args: argparse.Namespace, *, bao: bool) -> Catalogue:
    """The catalogue over ``--db`` (or the discovered database), to read keys (never makes one)."""
    target = args.db or database_target()
    store = open_store(existing_database(target))
    transit = OpenBaoTransit(bao_settings(args)) if bao else None
    return Catalogue(SqlKeyStore(store), transit, lambda: datetime.now(UTC))


def open_local(
    args: argparse.Namespace, *, bao: bool, operator: bool = False, create: bool = False
) -> tuple[Catalogue, Store]:
    """``open_catalogue`` and the store under it (whose ledger the local changes are appended to).
    Commands that change keys call it; root may not write a service user's database."""
    target = args.db or database_target()
    path = _local_path(target)
    if path is not None:
        refuse_root_on_service_files(Path(path), "the database", Code.STORAGE_ERROR.value)
    store = open_store(target if create else existing_database(target))
    transit = OpenBaoTransit(bao_settings(args, operator=operator)) if bao else None
    return Catalogue(SqlKeyStore(store), transit, lambda: datetime.now(UTC)), store


def _changed(store: Store, kind: Kind, record: KeyRecord) -> KeyRecord:
    record_local(store, kind, key_fields(record))
    return record


def state_word(state: object) -> str:
    """The word 'sovereign admin keys' uses too: the catalogue's ``active`` is the wire's ENABLED."""
    return "enabled" if state == "active" else readable(state)


def public_record(record: KeyRecord) -> dict[str, object]:
    """A key as the CLI shows it, in tables and ``--json`` alike: its state in the operator's words
    (``enabled``, ``disabled``, ``destroyed``), never the catalogue's internal ``active``."""
    out = record.to_dict()
    return {**out, "state": state_word(out["state"])}


def _show_record(args: argparse.Namespace, record_dict: dict[str, object], verb: str) -> int:
    if args.json:
        print_ok(key=record_dict)
    else:
        print(
            f"{verb} {record_dict['name']} ({record_dict['kind']}, {state_word(record_dict['state'])}, "
            f"version {record_dict['current_version']})"
        )
    return 0


def _create(args: argparse.Namespace) -> int:
    try:
        validate_name(args.name)  # before the database is made or OpenBao asked
        parse_kind(args.kind)
        catalogue, store = open_local(args, bao=True, create=True)
        record = _changed(store, Kind.KEY_CREATE, catalogue.create(args.name, args.kind))
    except KmsError as err:
        return fail(err, as_json=args.json)
    return _show_record(args, public_record(record), "created")


def _rotate(args: argparse.Namespace) -> int:
    try:
        validate_name(args.name)  # before OpenBao is asked
        catalogue, store = open_local(args, bao=True)
        record = _changed(store, Kind.KEY_ROTATE, catalogue.rotate(args.name))
    except KmsError as err:
        return fail(err, as_json=args.json)
    return _show_record(args, public_record(record), "rotated")


def _list(args: argparse.Namespace) -> int:
    try:
        records = open_catalogue(args, bao=False).list()
    except KmsError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_ok(keys=[public_record(r) for r in records])
    else:
        rows = [{**row, "state": state_word(row["state"])} for row in summary_rows(records)]
        print_table(rows, ["name", "kind", "state", "version", "kek_version", "updated_at"])
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        record = open_catalogue(args, bao=False).describe(args.name)
    except KmsError as err:
        return fail(err, as_json=args.json)
    _show_record(args, public_record(record), "key")
    if args.json:
        return 0
    print_table(
        record.to_dict()["versions"], ["version", "kek_version", "created_at", "rewrapped_at", "wrapped"]
    )
    return 0


_KINDS = {"disable": Kind.KEY_DISABLE, "enable": Kind.KEY_ENABLE, "destroy": Kind.KEY_DESTROY}


def _lifecycle(action: str, verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            validate_name(args.name)
            catalogue, store = open_local(args, bao=False)
            record = _changed(store, _KINDS[action], getattr(catalogue, action)(args.name))
        except KmsError as err:
            return fail(err, as_json=args.json)
        return _show_record(args, public_record(record), verb)

    return run


def _rotate_kek(args: argparse.Namespace) -> int:
    try:
        catalogue, store = open_local(args, bao=True, operator=True)
        version = catalogue.rotate_kek()
        report = catalogue.rewrap_all(version)
        record_local(store, Kind.KEK_ROTATE, {"kek_version": version, "count": report.rewrapped})
    except KmsError as err:
        return fail(err, as_json=args.json)
    result = {
        "kek_version": version,
        "rewrapped": report.rewrapped,
        "already_current": report.current,
        "failed": list(report.failed),
    }
    if args.json and report.failed:
        error = {
            "code": "KEY_REWRAP_INCOMPLETE",
            "message": f"{len(report.failed)} keys not rewrapped",
            "hint": "rerun to retry",
        }
        print_json({"ok": False, "error": error, **result})
    elif args.json:
        print_ok(result)
    else:
        print(f"KEK is now version {version}; rewrapped {report.rewrapped}, already current {report.current}")
        for item in report.failed:
            print(f"failed: {item} (rerun to retry)")
    return 1 if report.failed else 0
