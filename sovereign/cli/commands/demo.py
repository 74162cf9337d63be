"""``sovereign demo``: the arguments; the implementation is ``sovereign.cli.demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the whole lifecycle on embedded defaults",
        description="Start a real OpenBao (dev mode, file audit) and the control plane on loopback with "
        "SQLite; register simulated SEV-SNP and TDX nodes, seal and release a dataset key, seal a model "
        "output, refuse a debug / wrong-measurement / below-minimum-TCB guest, revoke a node. Then verify "
        "simulated and real evidence (../shared/vectors or $SOVEREIGN_VECTORS) and print the verdicts. "
        "Exit 0 only if every outcome is the expected one. Cleans up after itself.",
    )
    parser.add_argument("--only", choices=["lifecycle", "evidence"], help="run one part only")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR and keep it, owner-only, with what an auditor needs to verify later (ledger "
        "export, audit public key, checkpoint, OpenBao's audit log); default: a temp dir",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=runs("sovereign.cli.demo:_demo"))
