"""``sovereign policy``: the arguments; the implementation is ``sovereign.cli.policy``."""

from __future__ import annotations

import argparse

from sovereign.cli._common import existing_file, parse_time
from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("policy", help="check a policy file or preview its effect on nodes")
    cmds = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    check = cmds.add_parser(
        "check",
        help="validate a policy file and summarise it",
        description="Validate a policy (TOML, schema 1) strictly: unknown keys, wrong types, bad hex "
        "lengths and undefined groups are errors naming the file, key path and line. Exit 0 and print a "
        "summary (groups, release rules, digest, deliberate relaxations) when valid.",
    )
    check.add_argument("file", type=existing_file, metavar="FILE")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=runs("sovereign.cli.policy:_check"))

    dry = cmds.add_parser(
        "dry-run",
        help="show which nodes a policy would change, and why",
        description="Re-appraise stored node claims against FILE without changing anything. NODES is a "
        'JSON list of {"node_id", "state", "claims"} where claims is Claims.to_dict() output.',
    )
    dry.add_argument("file", type=existing_file, metavar="FILE")
    dry.add_argument("--nodes", type=existing_file, required=True, metavar="NODES.json")
    dry.add_argument(
        "--at", type=parse_time, default=None, metavar="TIME", help="appraise as of this ISO 8601 time"
    )
    dry.add_argument("--json", action="store_true", help="machine-readable output")
    dry.set_defaults(func=runs("sovereign.cli.policy:_dry_run"))
