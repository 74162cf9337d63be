"""``sovereign audit verify``: check an audit export offline against the audit public key.

The server-backed actions (``audit tail|query|export|proof``) are registered here too once the audit
RPCs exist; they are not offered before then.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kms.audit.checkpoint import AuditKeys, Checkpoint, load_audit_keys
from kms.audit.errors import AuditError, ExportInvalid, KeyInvalid
from kms.audit.export import parse_json_line, read_lines
from kms.audit.verify import verify_export
from kms.errors import Code
from sovereign.cli._output import fail, print_json

MAX_KEY_FILE = 1 << 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("audit", help="verify the tamper-evident audit ledger")
    cmds = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = cmds.add_parser(
        "verify",
        help="verify an audit export offline",
        description="Check every entry, the Merkle tree (RFC 9162), every checkpoint signature and that "
        "checkpoints never go back. Exit 0 with a summary, or 1 with the first problem (code, line, "
        "index). Needs no server and no network.",
    )
    verify.add_argument("export", type=Path, metavar="EXPORT", help="export file (JSON Lines)")
    verify.add_argument(
        "--public-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="audit key: raw 32 bytes, PEM, or JSON of 'bao read -format=json transit/keys/NAME'",
    )
    verify.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="a checkpoint obtained separately (JSON object); the export must reach it with the same root",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(func=_verify)
    # Server-backed actions (tail, query, export, proof) go here when the audit RPCs exist.


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise KeyInvalid(f"cannot read {what} {path}: {err.strerror}") from None
    if len(data) > limit:
        raise KeyInvalid(f"{what} {path} is larger than {limit} bytes")
    return data


def _keys(args: argparse.Namespace) -> tuple[AuditKeys, Checkpoint | None]:
    keys = load_audit_keys(_read(args.public_key, "public key file", MAX_KEY_FILE))
    trusted = None
    if args.checkpoint is not None:
        obj = parse_json_line(_read(args.checkpoint, "checkpoint file", MAX_KEY_FILE), 1)
        trusted = Checkpoint.from_obj(obj.get("checkpoint", obj))
    return keys, trusted


def _verify(args: argparse.Namespace) -> int:
    try:
        keys, trusted = _keys(args)
        with args.export.open("rb") as f:
            report = verify_export(read_lines(f), keys, trusted=trusted)
    except OSError as err:
        error = ExportInvalid(f"cannot read {args.export}: {err.strerror}", code=Code.AUDIT_MALFORMED_EXPORT)
        return fail(error, as_json=args.json)
    except AuditError as err:
        if args.json:
            print_json({"ok": False, "error": err.to_dict()})
            return 1
        return fail(err, as_json=False)
    if args.json:
        print_json({"ok": True, **report.to_dict()})
    else:
        print(
            f"OK {report.entries} entries, {report.checkpoints} checkpoints, final size {report.size}, "
            f"root {report.root} (signed {report.time} by {report.key_id})"
        )
    return 0
