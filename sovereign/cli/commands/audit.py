"""``sovereign audit``: the arguments; the implementation is ``sovereign.cli.audit``."""

from __future__ import annotations

import argparse
from pathlib import Path

from kms.domain.transit import KEK_NAME
from sovereign.cli._common import existing_file, non_negative_int, parse_time, positive_int
from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("audit", help="verify the tamper-evident audit ledger")
    cmds = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = cmds.add_parser(
        "verify",
        help="verify an audit export offline",
        description="Check every entry, the Merkle tree (RFC 9162), every checkpoint signature and that "
        "checkpoints never go back; then freshness: the export must reach a checkpoint obtained apart "
        "from it (--checkpoint FILE, or --server-head: the server's latest) with the same root, or hold "
        "at least --min-size entries. Without any of them an export cut back to an older signed "
        "checkpoint cannot be told from a current one, so verify exits 1 (AUDIT_FRESHNESS_UNCHECKED) "
        "unless --accept-unchecked-head is given. Exit 0 with a summary, or 1 with the first problem "
        "(code, line, index). Needs no server and no network unless --server-head is given.",
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
        help="a checkpoint obtained separately (JSON object, e.g. from 'sovereign audit checkpoint' or a "
        "witness); its signature is checked with --public-key and the export must reach it with the same root",
    )
    verify.add_argument(
        "--min-size",
        type=non_negative_int,
        metavar="N",
        help="a tree size pinned by the operator: the export must hold at least N entries",
    )
    verify.add_argument(
        "--server-head",
        action="store_true",
        help="fetch the latest checkpoint from --server (Audit RPC) and use it as --checkpoint",
    )
    verify.add_argument(
        "--accept-unchecked-head",
        action="store_true",
        help="accept an export whose freshness nothing checks (exit 0, but reported as fresh: false)",
    )
    verify.add_argument(
        "--workers",
        type=non_negative_int,
        default=1,
        metavar="N",
        help="worker processes that check and hash parts of the file (0: one per CPU; default 1: in this "
        "process); the same checks and the same errors either way",
    )
    _connection_options(verify)
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(func=runs("sovereign.cli.audit:_verify"))

    head = cmds.add_parser(
        "checkpoint",
        help="save the server's latest signed checkpoint (for 'audit verify --checkpoint')",
    )
    head.add_argument("-o", "--output", type=Path, required=True, help="checkpoint file to write (JSON)")
    _connection(head)
    head.set_defaults(func=runs("sovereign.cli.audit:_save_checkpoint"))
    _register_remote(cmds)
    _register_lineage(cmds)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        help="operator endpoint HOST:PORT or unix:PATH (default $SOVEREIGN_ADMIN_ADDR, the installed "
        "config's admin_listen, or 127.0.0.1:8445)",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        help="the control plane's CA to pin (default $SOVEREIGN_CA, or the installed config's tls_ca)",
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext (servers run with --insecure-dev)")
    parser.add_argument("--token-cache", type=Path, help="token cache of 'sovereign login'")


def _register_remote(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = cmds.add_parser("tail", help="the latest entries (and --follow new ones)")
    tail.add_argument(
        "-n", "--lines", type=non_negative_int, default=20, help="how many of the latest entries"
    )
    tail.add_argument("--follow", action="store_true", help="keep printing new entries (Ctrl-C stops)")
    _connection(tail)
    tail.set_defaults(func=runs("sovereign.cli.audit:_tail"))

    query = cmds.add_parser("query", help="entries matching filters, in sequence order")
    query.add_argument("--node", type=node_selector, help="node id, or the name the node registered under")
    query.add_argument(
        "--key", type=key_selector, help="key name, or a prefix ending in * (e.g. 'dataset/*')"
    )
    query.add_argument("--decision", choices=("deny", "grant"), help="only grants or only denials")
    query.add_argument("--reason", default="", help="reason code, e.g. RELEASE_LEASE_EXPIRED")
    query.add_argument("--since", type=parse_time, help="at or after this time (ISO 8601, or now)")
    query.add_argument("--until", type=parse_time, help="before this time (ISO 8601, or now)")
    query.add_argument("--limit", type=positive_int, default=100, help="at most this many entries")
    _connection(query)
    query.set_defaults(func=runs("sovereign.cli.audit:_query"))

    export = cmds.add_parser("export", help="write an export file for 'sovereign audit verify'")
    export.add_argument("-o", "--output", type=Path, required=True, help="export file to write")
    export.add_argument(
        "--size", type=non_negative_int, default=0, help="end at the checkpoint of this size (0: latest)"
    )
    _connection(export)
    export.set_defaults(func=runs("sovereign.cli.audit:_export"))

    proof = cmds.add_parser("proof", help="fetch and check an inclusion or consistency proof")
    what = proof.add_mutually_exclusive_group(required=True)
    what.add_argument("--leaf", type=non_negative_int, help="inclusion of entry SEQ")
    what.add_argument("--first", type=positive_int, help="consistency from tree size FIRST")
    proof.add_argument(
        "--size", type=non_negative_int, default=0, help="tree size (a checkpoint's; 0: latest)"
    )
    proof.add_argument(
        "--public-key",
        type=Path,
        required=True,
        help="the pinned audit key (from 'sovereign audit public-key -o FILE'): the checkpoint the proof is "
        "checked against must carry a signature that verifies with it",
    )
    _connection(proof)
    proof.set_defaults(func=runs("sovereign.cli.audit:_proof"))

    public_key = cmds.add_parser(
        "public-key",
        help="fetch the audit public key from the server, print its fingerprint and pin it",
        description="Fetch every version of the audit signing key (Audit.GetSigningKeys), print each "
        "version's fingerprint (sha256 of the SubjectPublicKeyInfo DER) to compare out of band, and with "
        "-o write it to FILE for 'audit verify' and 'audit proof --public-key FILE'. No OpenBao access needed.",
    )
    public_key.add_argument("-o", "--output", type=Path, help="write the key file here (pin it)")
    _connection(public_key)
    public_key.set_defaults(func=runs("sovereign.cli.audit:_public_key"))

    rec = cmds.add_parser(
        "reconcile",
        help="match OpenBao's audit log with the ledger",
        description="Every transit decrypt of the KEK by the control plane's AppRole in OpenBao's file "
        "audit device log must match release entries (same OpenBao request id; a batch decrypt: one "
        "entry per item). Reports unmatched ones on either side; exit 1 if any.",
    )
    rec.add_argument("--bao-log", type=existing_file, required=True, help="OpenBao file audit device log")
    rec.add_argument(
        "--export", type=existing_file, help="ledger export (default: read the ledger from --server)"
    )
    # defaults in sovereign.cli.audit (their constants live with the OpenBao adapter, hvac and all)
    rec.add_argument("--role", help="the control plane's AppRole role name (default: sovereign's own)")
    rec.add_argument("--kek", default=KEK_NAME, help="KEK transit key name")
    rec.add_argument("--mount", help="transit mount (default: transit)")
    _connection(rec)
    rec.set_defaults(func=runs("sovereign.cli.audit:_reconcile_command"))


def _connection(parser: argparse.ArgumentParser) -> None:
    _connection_options(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _register_lineage(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lineage = cmds.add_parser(
        "lineage", help="what went into an output, or which outputs a dataset went into"
    )
    what = lineage.add_mutually_exclusive_group(required=True)
    what.add_argument("--output", help="SHA-256 of an output (plaintext or sealed file, hex)")
    what.add_argument("--dataset", help="a dataset key name")
    _connection(lineage)
    lineage.set_defaults(func=runs("sovereign.cli._lineage:run"))


def node_selector(text: str) -> str:
    if not text or len(text) > 128 or not text.isprintable():
        raise argparse.ArgumentTypeError("a node id or node name: 1 to 128 printable characters")
    return text


def key_selector(text: str) -> str:
    if not text or len(text) > 128 or not text.isprintable() or "*" in text[:-1]:
        raise argparse.ArgumentTypeError("a key name, or a prefix with one * at the end (e.g. 'dataset/*')")
    return text
