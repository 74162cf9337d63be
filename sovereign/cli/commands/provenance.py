"""``sovereign provenance``: the arguments; the implementation is ``sovereign.cli.provenance``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.cli._common import non_negative_int
from sovereign.cli._lazy import runs
from sovereign.cli.commands.audit import _connection


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("provenance", help="signed, offline-verifiable lineage of sealed model outputs")
    cmds = parser.add_subparsers(dest="provenance_command", metavar="ACTION", required=True)

    verify = cmds.add_parser("verify", help="verify statements offline (no network)")
    verify.add_argument(
        "statement",
        type=Path,
        nargs="+",
        help="the statement (DSSE envelope JSON); several files or a directory: one result per statement",
    )
    verify.add_argument("--public-keys", type=Path, required=True, help="directory from 'provenance keys'")
    verify.add_argument("--checkpoint", type=Path, help="a trusted checkpoint (e.g. 'audit checkpoint -o')")
    verify.add_argument(
        "--file", type=Path, help="the output, plaintext or sealed: must be the subject (one statement only)"
    )
    verify.add_argument(
        "--workers",
        type=non_negative_int,
        default=1,
        metavar="N",
        help="worker processes for a batch, consecutive statements to each (0: one per CPU; default 1: in "
        "this process); the same checks and the same results either way",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(func=runs("sovereign.cli.provenance:_verify"))

    get = cmds.add_parser("get", help="fetch the statement of an output (Audit RPC, auditor role)")
    get.add_argument("--output", required=True, help="SHA-256 of the output's plaintext or sealed file (hex)")
    get.add_argument("-o", "--out", type=Path, required=True, help="file to write the statement to")
    _connection(get)
    get.set_defaults(func=runs("sovereign.cli.provenance:_get"))

    keys = cmds.add_parser("keys", help="export the audit and provenance public keys for verifiers")
    keys.add_argument(
        "--out", type=Path, required=True, help="directory to write audit.json, provenance.json"
    )
    _connection(keys)
    keys.set_defaults(func=runs("sovereign.cli.provenance:_keys"))
