"""``sovereign evidence verify|simulate``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from attestation.collateral import Collateral, classify
from attestation.errors import AttestationError, Code, MalformedEvidence
from attestation.evidence import MAX_EVIDENCE_BYTES, verify_evidence
from attestation.store import CollateralStore
from sovereign.cli._common import default_collateral_store, load_trust
from sovereign.cli._output import fail, print_json


def _verify(args: argparse.Namespace) -> int:
    now = args.at or datetime.now(UTC)
    try:
        evidence = _read(args.file)
        endorsements = [item.data for path in args.endorsement for item in classify(_read(path), str(path))]
        store_path = args.collateral or default_collateral_store()
        collateral = CollateralStore(store_path).load() if store_path.exists() else Collateral.empty()
        claims = verify_evidence(
            evidence,
            trust=load_trust(args.trust),
            collateral=collateral,
            now=now,
            endorsements=endorsements,
            require_tcb=not args.no_tcb,
            require_revocation=not args.no_revocation_check,
        )
    except AttestationError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json({"ok": True, "verified_at": now.isoformat(), "claims": claims.to_dict()})
        return 0
    print(
        f"VALID {claims.tee.value.upper()} evidence ({claims.product}, version {claims.version}) at {now.isoformat()}"
    )
    summary = claims.to_dict()
    for key in ("measurement", "report_data", "host_data", "debug", "policy", "tcb_status", "platform_id"):
        print(f"  {key:<12} {summary[key]}")
    print(
        f"  {'revocation':<12} {'checked' if claims.revocation_checked else 'NOT CHECKED (no current CRL)'}"
    )
    if claims.simulated:
        print("  note: the chain ends in a simulator root, not AMD's or Intel's; policies deny it by default")
    print(f"  {'tcb':<12} {summary['tcb']}")
    for i, rtmr in enumerate(summary["rtmrs"]):
        print(f"  rtmr{i:<8} {rtmr}")
    if claims.debug:
        print("  note: debug is enabled; release policies reject debug guests")
    return 0


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_EVIDENCE_BYTES + 1)
    except OSError as exc:
        raise MalformedEvidence(f"cannot read {path}: {exc.strerror}", code=Code.EVIDENCE_MALFORMED) from None
    return data
