"""``sovereign demo``: what ``./dev demo`` runs."""

from __future__ import annotations

import argparse
import sys

from sovereign.cli._output import print_json, print_table
from sovereign.demo.evidence_tour import tour, vectors_dir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the demonstration on embedded defaults",
        description="Verify simulated SEV-SNP and TDX evidence (valid, debug and faulty) and the real "
        "hardware vectors in ../shared/vectors (or $SOVEREIGN_VECTORS) when present, and print a verdict "
        "table. Exit 0 only if every verdict is the expected one.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    print("sovereign demo: evidence verification tour", file=sys.stderr)
    rows = tour()
    if args.json:
        print_json([r.to_dict() for r in rows])
    else:
        table = [{**r.to_dict(), "ok": "yes" if r.as_expected else "NO"} for r in rows]
        print_table(table, ["source", "case", "expected", "outcome", "ok", "detail"])
        if vectors_dir() is None:
            print("(real vectors not found: set SOVEREIGN_VECTORS to include them)")
    bad = [r for r in rows if not r.as_expected]
    if bad:
        print(f"{len(bad)} verdict(s) differ from what was expected", file=sys.stderr)
        return 1
    print(f"all {len(rows)} verdicts as expected", file=sys.stderr)
    return 0
