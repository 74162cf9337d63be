"""``sovereign evidence simulate``: mint evidence in the real formats with a throwaway test PKI.

Writes ``evidence.bin``, a collateral store and ``trust.json`` (the simulation trust profile pinning this
PKI's roots) into ``--out``, so ``sovereign evidence verify`` can check it exactly like real evidence.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from attestation.collateral import classify
from attestation.errors import AttestationError
from attestation.simulate import Fault, SimulatedPki
from attestation.store import CollateralStore
from sovereign.cli._common import dump_trust, parse_time, positive_int
from sovereign.cli._output import fail, print_json
from sovereign.cli._sim_pki import save_sim_pki


def _hex(nbytes: int) -> Callable[[str], bytes]:
    def parse(text: str) -> bytes:
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None
        if len(value) > nbytes:
            raise argparse.ArgumentTypeError(f"at most {nbytes} bytes ({2 * nbytes} hex digits)")
        return value.ljust(nbytes, b"\0")

    return parse


def register(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = cmds.add_parser(
        "simulate",
        help="mint a simulated SNP report or TDX quote with its collateral and trust profile",
        description="Mint evidence in the real SEV-SNP / TDX formats, signed by a freshly generated test PKI "
        "that carries the same X.509 extensions as AMD's and Intel's. The production trust profile refuses it.",
    )
    sim.add_argument("--tee", choices=["snp", "tdx"], required=True)
    sim.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    sim.add_argument(
        "--version",
        type=positive_int,
        default=None,
        help="SNP report 2|3|5 (default 3), TDX quote 4|5 (default 4)",
    )
    sim.add_argument("--product", choices=["Milan", "Genoa", "Turin"], default="Milan", help="SNP product")
    sim.add_argument("--signing-key", choices=["vcek", "vlek"], default="vcek", help="SNP signing key")
    sim.add_argument(
        "--body-type", type=int, choices=[2, 3], default=2, help="TDX v5 body: 2 = TDX 1.0, 3 = TDX 1.5"
    )
    sim.add_argument(
        "--measurement", type=_hex(48), default=bytes(48), metavar="HEX", help="SNP MEASUREMENT or TDX MRTD"
    )
    sim.add_argument("--report-data", type=_hex(64), default=bytes(64), metavar="HEX")
    sim.add_argument(
        "--debug", action="store_true", help="set the SNP policy DEBUG bit / TD_ATTRIBUTES.DEBUG"
    )
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=[f.name for f in Fault],
        help="inject a fault (repeatable)",
    )
    sim.add_argument(
        "--at", type=parse_time, default=None, metavar="TIME", help="mint as of this time (default now)"
    )
    sim.add_argument(
        "--save-pki",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save this test PKI (pki.json, trust.json, collateral/) for `serve --trust DIR/trust.json "
        "--collateral DIR/collateral` and `node --provider simulated-snp|simulated-tdx --sim-pki DIR`",
    )
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    now = args.at or datetime.now(UTC)
    pki = SimulatedPki.generate(now)
    faults = [Fault[name] for name in args.fault]
    try:
        if args.tee == "snp":
            minted = pki.mint_snp_report(
                product=args.product,
                version=args.version or 3,
                measurement=args.measurement,
                report_data=args.report_data,
                debug=args.debug,
                signing_key=args.signing_key,
                faults=faults,
            )
            evidence, raw_items = minted.report, [*minted.collateral["certs"], *minted.collateral["crls"]]
        else:
            version = args.version or 4
            minted_tdx = pki.mint_tdx_quote(
                version=version,
                body_type=args.body_type if version == 5 else 2,
                mrtd=args.measurement,
                report_data=args.report_data,
                debug=args.debug,
                faults=faults,
            )
            evidence = minted_tdx.quote
            raw_items = [item for items in minted_tdx.collateral.values() for item in items]
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    out: Path = args.out
    trust = pki.trust_store()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evidence.bin").write_bytes(evidence)
        (out / "trust.json").write_text(dump_trust(trust) + "\n")
    except OSError as exc:
        print(f"error: cannot write into {out}: {exc.strerror}", file=sys.stderr)
        return 1
    saved: dict[str, str] = {}
    if args.save_pki is not None:
        try:
            saved = save_sim_pki(pki, args.save_pki, now)
        except (OSError, AttestationError) as exc:
            print(f"error: cannot save the PKI into {args.save_pki}: {exc}", file=sys.stderr)
            return 1
    store = CollateralStore(out / "collateral")
    try:
        items = [(item, f"simulated-{i}") for i, raw in enumerate(raw_items) for item in classify(raw)]
        store.import_items(items, trust=trust, now=now)
    except AttestationError as err:
        print(f"note: the collateral store refused the simulated collateral (fault: {', '.join(args.fault)})")
        return fail(err, as_json=args.json)
    verify = (
        f"sovereign evidence verify {out / 'evidence.bin'} --collateral {out / 'collateral'} "
        f"--trust {out / 'trust.json'} --at {now.isoformat()}"
    )
    if args.json:
        print_json(
            {
                "ok": True,
                "evidence": str(out / "evidence.bin"),
                "trust": str(out / "trust.json"),
                "collateral": str(out / "collateral"),
                "verify_command": verify,
                "saved_pki": saved,
            }
        )
    else:
        print(
            f"wrote {out / 'evidence.bin'} ({len(evidence)} bytes), {len(items)} collateral items, trust.json"
        )
        print(f"verify with:\n  {verify}")
        if saved:
            print(f"saved the test PKI into {args.save_pki} (pki.json 0600, trust.json, collateral/)")
    return 0
