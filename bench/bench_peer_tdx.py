"""TDX quote verification: ours against dcap-qvl (Rust, Python bindings) on the same quote, collateral, time.

Run: ``./dev bench --only peer_tdx`` (or ``.venv-bench/bin/python -m bench.bench_peer_tdx [--quick]``).
Both sides parse the collateral bundle once and then fully verify ``v4-dcapqvl`` per call; rates come from
interleaved rounds. Before timing, the verdicts of both are compared on the quote as is, on tampered copies
and at times outside the collateral window: accepted or not, TCB status and advisories must agree.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation import tdx
from attestation.errors import AttestationError
from attestation.trust import PRODUCTION
from bench.bench_snp import rate, vectors_dir
from bench.bench_tdx import NOW
from bench.peers import PeerMissing, dcap, emit, row, tiny
from bench.peers.dcap import Verdict

TARGET = 2.0
WORK = "TDX verification vs dcap-qvl"


def flipped(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def cases(quote: bytes) -> list[tuple[str, bytes, datetime]]:
    parsed = tdx.parse_quote(quote)
    sig_at = quote.index(parsed.signature)
    return [
        ("as is", quote, NOW),
        ("flipped quote-signature byte", flipped(quote, sig_at + 5), NOW),
        ("flipped MRTD byte", flipped(quote, 48 + 136 + 3), NOW),
        (
            "flipped QE report signature byte",
            flipped(quote, quote.index(parsed.qe_report_signature) + 7),
            NOW,
        ),
        ("before the collateral window", quote, datetime(2025, 6, 1, tzinfo=UTC)),
        ("after the collateral window", quote, datetime(2025, 8, 1, tzinfo=UTC)),
    ]


def our_verdict(quote: bytes, collateral: tdx.TdxCollateral, now: datetime) -> Verdict:
    try:
        claims = tdx.verify_quote(quote, trust=PRODUCTION, collateral=collateral, now=now)
    except AttestationError:
        return Verdict(False)
    advisories = claims.details.get("advisory_ids", [])
    return Verdict(True, claims.tcb_status.value, tuple(sorted(advisories)))


def bench(root: Path, seconds: float) -> dict[str, Any]:
    quote = (root / "tdx/v4-dcapqvl.quote.bin").read_bytes()
    bundle = (root / "tdx/v4-dcapqvl.collateral.json").read_bytes()
    collateral = tdx.parse_collateral_bundle(bundle)

    def ours() -> object:
        return tdx.verify_quote(quote, trust=PRODUCTION, collateral=collateral, now=NOW)

    try:
        peer = dcap.verifier(bundle)
    except PeerMissing as missing:
        return row(WORK, round(rate(ours, seconds), 1), None, "verifications/s", TARGET, missing=str(missing))

    disagreements = []
    for name, data, when in cases(quote):
        mine, theirs = our_verdict(data, collateral, when), dcap.verdict(peer, data, int(when.timestamp()))
        if mine != theirs:
            disagreements.append(f"{name}: ours {mine}, dcap-qvl {theirs}")
    accepted = our_verdict(quote, collateral, NOW)
    unix_now = int(NOW.timestamp())

    def baseline() -> object:
        return peer(quote, unix_now)

    rounds = 3
    ours_total = base_total = 0.0
    for _ in range(rounds):  # interleaved so drift in machine load hits both sides alike
        base_total += rate(baseline, seconds / rounds)
        ours_total += rate(ours, seconds / rounds)
    result = row(
        WORK,
        round(ours_total / rounds, 1),
        round(base_total / rounds, 1),
        "verifications/s",
        TARGET,
        verdicts_identical=not disagreements,
        verdict_cases=len(cases(quote)),
        verdict=accepted.status,
        peer=f"dcap-qvl {dcap.version()}",
    )
    result["met"] = result["met"] and not disagreements
    if disagreements:
        result["note"] = "verdicts differ: " + "; ".join(disagreements)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 1 s per side instead of 5 s")
    args = parser.parse_args()
    root = vectors_dir()
    if not (root / "MANIFEST.json").is_file():
        raise SystemExit(f"vectors not found at {root}; set SOVEREIGN_VECTORS")
    emit(bench(root, 0.05 if tiny() else 1.0 if args.quick else 5.0))


if __name__ == "__main__":
    main()
