"""``sovereign evidence simulate``: mint evidence in the real formats with a throwaway test PKI.

Writes ``evidence.bin``, a collateral store and ``trust.json`` (the simulation trust profile pinning this
PKI's roots) into ``--out``, so ``sovereign evidence verify`` can check it exactly like real evidence.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from attestation.collateral import classify
from attestation.errors import AttestationError
from attestation.simulate import Fault, SimulatedPki
from attestation.store import CollateralStore
from sovereign.cli._common import dump_trust
from sovereign.cli._output import fail, print_json
from sovereign.cli._sim_pki import save_sim_pki


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
