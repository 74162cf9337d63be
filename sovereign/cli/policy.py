"""``sovereign policy check|dry-run``: validate a policy file and preview its effect on registered nodes."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from policies import PolicyError, load_policy, nodes_from_json, reappraise, summarize
from policies.errors import Code
from sovereign.cli._output import fail, print_json, print_table

MAX_NODES_BYTES = 64 << 20


def _check(args: argparse.Namespace) -> int:
    try:
        summary = summarize(load_policy(args.file))
    except PolicyError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json({"ok": True, **summary})
        return 0
    print(f"VALID policy {summary['source']} (schema {summary['schema']}, digest {summary['digest']})")
    print(f"  TEEs accepted: {', '.join(summary['tees']) or 'none'}")
    for name, counts in sorted(summary["groups"].items()):
        print(
            f"  group {name}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()))
        )
    if summary["release_rules"]:
        rows = [
            {
                **rule,
                "groups": ",".join(rule["groups"]),
                "keys": ",".join(rule["keys"]),
                "purposes": ",".join(rule["purposes"]),
            }
            for rule in summary["release_rules"]
        ]
        print_table(rows, ["name", "groups", "keys", "purposes", "lease_seconds", "max_evidence_age"])
    for note in summary["notes"]:
        print(f"  note: {note}")
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    now = args.at or datetime.now(UTC)
    try:
        policy = load_policy(args.file)
        nodes = nodes_from_json(_read(args.nodes))
        changes = reappraise(policy, nodes, now)
    except PolicyError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json(
            {
                "ok": True,
                "policy_digest": policy.digest,
                "at": now.isoformat(),
                "nodes": len(nodes),
                "changes": [c.to_dict() for c in changes],
            }
        )
        return 0
    print(f"{len(changes)} of {len(nodes)} nodes would change under {args.file} at {now.isoformat()}")
    if changes:
        rows = [
            {
                "node_id": c.node_id,
                "from": c.old_state.value,
                "to": c.new_state.value,
                "codes": ",".join(dict.fromkeys(r.code.value for r in c.reasons)) or "-",
            }
            for c in changes
        ]
        print_table(rows, ["node_id", "from", "to", "codes"])
        for c in changes:
            for reason in c.reasons:
                print(f"  {c.node_id}: {reason.code.value}: {reason.message}")
    return 0


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_NODES_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}", code=Code.CLAIMS_INVALID) from None
    if len(data) > MAX_NODES_BYTES:
        raise PolicyError(f"{path} is larger than {MAX_NODES_BYTES} bytes", code=Code.CLAIMS_INVALID)
    return data
