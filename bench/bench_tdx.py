"""TDX quote verification throughput against one raw P-256 ECDSA verify (the quote signature).

Run: ``.venv/bin/python -m bench.bench_tdx [--quick]``. Full verification of ``v4-dcapqvl`` with its
collateral bundle at a time inside the bundle's window; the collateral is built once (as in the server),
so per quote the verifier checks the quote signature plus the cheap per-call checks (root pin, windows,
CRLs, TCB level); the PCK chain and QE report signature checks are memoised per platform.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import tdx
from attestation.tdx.collateral import raw_signature_to_der
from attestation.trust import PRODUCTION
from bench.bench_snp import rate, vectors_dir

TARGET = 0.45
NOW = datetime(2025, 7, 1, tzinfo=UTC)  # inside the bundle's all-current window (2025-06-19 .. 07-19)


def bench(root: Path, seconds: float) -> dict[str, Any]:
    quote = (root / "tdx/v4-dcapqvl.quote.bin").read_bytes()
    collateral = tdx.parse_collateral_bundle((root / "tdx/v4-dcapqvl.collateral.json").read_bytes())
    parsed = tdx.parse_quote(quote)
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + parsed.attestation_key)
    signature = raw_signature_to_der(parsed.signature)
    signed = parsed.signed_region
    algorithm = ec.ECDSA(hashes.SHA256())

    def ours() -> object:
        return tdx.verify_quote(quote, trust=PRODUCTION, collateral=collateral, now=NOW)

    def baseline() -> None:
        key.verify(signature, signed, algorithm)

    # Interleave short rounds so drift in machine load hits both sides alike.
    ours_total = base_total = 0.0
    rounds = 3
    for _ in range(rounds):
        base_total += rate(baseline, seconds / rounds)
        ours_total += rate(ours, seconds / rounds)
    ours_rate, base_rate = ours_total / rounds, base_total / rounds
    ratio = ours_rate / base_rate
    return {
        "work": "TDX quote verification",
        "ours": round(ours_rate, 1),
        "baseline": round(base_rate, 1),
        "unit": "verifications/s",
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 1 s per side instead of 5 s")
    args = parser.parse_args()
    root = vectors_dir()
    if not (root / "MANIFEST.json").is_file():
        raise SystemExit(f"vectors not found at {root}; set SOVEREIGN_VECTORS")
    print(json.dumps(bench(root, 1.0 if args.quick else 5.0)))


if __name__ == "__main__":
    main()
