"""``sovereign demo``: what ``./dev demo`` runs."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from sovereign.cli._output import print_json, print_ok, print_table
from sovereign.demo import evidence_tour, keep, lifecycle


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    start = time.monotonic()
    steps: list[dict[str, object]] = []
    verdicts: list[dict[str, object]] = []
    if args.only in (None, "lifecycle"):
        _progress("== lifecycle ==")
        if args.keep:
            with keep.private_folder(args.keep) as folder:
                steps = [s.to_dict() for s in lifecycle.run(folder, _progress)]
            kept = keep.KeptForAudit.in_folder(args.keep)
            _progress(f"kept {args.keep} (owner-only) for a later audit:\n  {kept.verify_command()}")
            _progress(f"  {kept.reconcile_command()}")
        else:
            with tempfile.TemporaryDirectory(prefix="sovereign-demo-") as tmp:
                steps = [s.to_dict() for s in lifecycle.run(Path(tmp), _progress)]
    if args.only in (None, "evidence"):
        _progress("== evidence verification tour ==")
        verdicts = [r.to_dict() for r in evidence_tour.tour()]
    bad = [r for r in steps + verdicts if not r["as_expected"]]
    if args.json:
        result = {"lifecycle": steps, "evidence": verdicts}
        if bad:
            error = {
                "code": "DEMO_UNEXPECTED_OUTCOME",
                "message": f"{len(bad)} outcome(s) differ from what was expected",
                "hint": "see the steps whose as_expected is false",
            }
            print_json({"ok": False, "error": error, **result})
        else:
            print_ok(result)
    else:
        if steps:
            print("\nLifecycle")
            print_table([{**s, "ok": "yes" if s["as_expected"] else "NO"} for s in steps],
                        ["actor", "step", "expected", "outcome", "ok", "detail"])  # fmt: skip
        if verdicts:
            print("\nEvidence verification")
            print_table([{**r, "ok": "yes" if r["as_expected"] else "NO"} for r in verdicts],
                        ["source", "case", "expected", "outcome", "ok", "detail"])  # fmt: skip
            if evidence_tour.vectors_dir() is None:
                print("(real vectors not found: set SOVEREIGN_VECTORS to include them)")
    elapsed = time.monotonic() - start
    if bad:
        _progress(f"{len(bad)} outcome(s) differ from what was expected ({elapsed:.1f} s)")
        return 1
    _progress(f"all {len(steps) + len(verdicts)} outcomes as expected ({elapsed:.1f} s)")
    return 0
