"""``python -m sovereign.soak`` (what ``./dev soak`` runs): a soak of the real stack with faults; exit 0
when every planned fault was injected and recovered and the invariant checker found no violation."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from sovereign.soak.driver import SoakConfig, SoakError, run
from sovereign.soak.faults import FaultError, parse_faults
from sovereign.soak.netns import NetnsError
from sovereign.soak.replicas import ReplicaStackError
from sovereign.soak.stack import MountError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="./dev soak", description=__doc__)
    p.add_argument("--minutes", type=float, required=True, help="length of the load (fractions allowed)")
    p.add_argument(
        "--topology",
        default="single",
        choices=["single", "replicas"],
        help="single: SQLite + one OpenBao; replicas: two serve on PostgreSQL over a three-member raft",
    )
    p.add_argument("--faults", default="all", help="comma-separated fault kinds, 'all' or 'none'")
    p.add_argument("--seed", type=int, default=1, help="seeds the operation mix and the fault schedule")
    p.add_argument(
        "--out", type=Path, default=Path("var/soak"), help="output folder (results.json, summary.md)"
    )
    p.add_argument("--rate", type=float, default=8.0, help="operations per second")
    p.add_argument("--workers", type=int, default=4, help="concurrent client operations at most")
    p.add_argument("--max-ops", type=int, default=0, help="stop after this many operations (0: rate x time)")
    p.add_argument(
        "--interval", type=float, default=30.0, help="seconds between faults after the first round"
    )
    p.add_argument(
        "--db-fs-mib", type=int, default=64, help="size of the tmpfs holding the ledger's database"
    )
    p.add_argument(
        "--hold", type=float, default=6.0, help="seconds a stall, a seal or a full filesystem lasts"
    )
    return p


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. from timeout) stops the run the way Ctrl-C does: cleaned up


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if min(args.minutes, args.rate, args.workers, args.interval, args.db_fs_mib) <= 0 or args.hold < 0:
            raise SoakError(
                "--minutes, --rate, --workers, --interval, --db-fs-mib must be positive, --hold not negative"
            )
        cfg = SoakConfig(
            minutes=args.minutes, topology=args.topology, faults=parse_faults(args.faults, args.topology), seed=args.seed,
            out=args.out, rate=args.rate, workers=args.workers, max_ops=args.max_ops, interval=args.interval,
            hold=args.hold, db_fs_mib=args.db_fs_mib,
        )  # fmt: skip
        results = run(cfg, lambda line: print(line, flush=True))
    except (SoakError, FaultError, MountError, NetnsError, ReplicaStackError) as err:
        print(f"soak: {err}", file=sys.stderr)
        return 2
    total = results["invariants"]["violations_total"]
    injected = {f["kind"] for f in results["faults"]}
    missing = sorted({str(k) for k in cfg.faults} - injected)
    print((args.out / "summary.md").read_text())
    print(
        f"results: {args.out / 'results.json'}; violations: {total}; fault kinds not injected: {missing or 'none'}"
    )
    return 0 if total == 0 and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
