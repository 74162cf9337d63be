"""``sovereign collateral import|list``: the offline collateral store."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from attestation.errors import AttestationError
from attestation.store import CollateralStore
from sovereign.cli._common import add_trust_argument, default_collateral_store, load_trust
from sovereign.cli._output import fail, print_json, print_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("collateral", help="manage the offline attestation collateral store")
    cmds = parser.add_subparsers(dest="collateral_command", metavar="ACTION", required=True)

    imp = cmds.add_parser(
        "import",
        help="check and add AMD/Intel certificates, CRLs, TCB info and QE identity to the store",
        description="Import collateral files: AMD ARK/ASK/ASVK/VCEK/VLEK certificates and KDS cert_chain "
        "files (PEM or DER), CRLs, Intel TCB info and QE identity JSON as Intel PCS serves them, and "
        "dcap-qvl style collateral bundles. Certificates must chain to a pinned root; Intel JSON signatures "
        "are verified. All or nothing: on any error nothing is stored.",
    )
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp.add_argument(
        "--store",
        type=Path,
        default=None,
        help="store folder (default $SOVEREIGN_COLLATERAL or var/collateral)",
    )
    add_trust_argument(imp)
    imp.add_argument("--json", action="store_true", help="machine-readable output")
    imp.set_defaults(func=_import)

    ls = cmds.add_parser("list", help="list what the store holds")
    ls.add_argument("--store", type=Path, default=None)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)


def _import(args: argparse.Namespace) -> int:
    store = CollateralStore(args.store or default_collateral_store())
    try:
        report = store.import_files(args.files, trust=load_trust(args.trust), now=datetime.now(UTC))
    except AttestationError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json({"ok": True, **report.to_dict()})
        return 0
    for row in report.added:
        print(f"added      {row['kind']:<22} {row['description']}  ({row['sha256'][:16]})")
    for row in report.unchanged:
        print(f"unchanged  {row['kind']:<22} {row['description']}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"{len(report.added)} added, {len(report.unchanged)} already present in {store.root}")
    return 0


def _list(args: argparse.Namespace) -> int:
    store = CollateralStore(args.store or default_collateral_store())
    try:
        rows = store.entries()
    except AttestationError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["kind", "description", "source", "imported_at", "sha256"])
    return 0
