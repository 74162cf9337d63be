"""SNP report verification throughput against one raw P-384 ECDSA verify of the same signature.

Run: ``.venv/bin/python -m bench.bench_snp [--quick]``. Prints one JSON line per vector. Vectors come from
``SOVEREIGN_VECTORS`` or ``../shared/vectors``. The collateral is built once (as in the server), so each
verification should cost about one ECDSA verify.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation import snp
from attestation.trust import PRODUCTION

VECTORS = ("milan-v3-oak", "genoa-v5-oak")
TARGET = 0.9
AMD_CRL_CURRENT = datetime(2026, 9, 1, tzinfo=UTC)  # inside the KDS CRLs' window among the vectors


def vectors_dir() -> Path:
    env = os.environ.get("SOVEREIGN_VECTORS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "vectors"


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn()
        count += 20
    return count / elapsed


def bench(root: Path, name: str, seconds: float) -> dict[str, Any]:
    manifest = json.loads((root / "MANIFEST.json").read_text())
    entry = next(e for e in manifest if e["file"] == f"snp/{name}.report.bin")
    expected = entry["expected"]
    report = (root / entry["file"]).read_bytes()
    leaf = (root / expected["signature_verifies_with"]).read_bytes()
    family = name.split("-", maxsplit=1)[0]
    chain = (root / f"snp/certs/kds-cert-chain-vcek-{family}.pem").read_bytes()
    crl = (root / f"snp/certs/kds-crl-{family}.der").read_bytes()
    collateral = snp.SnpCollateral.from_der([leaf, *snp.load_pem_certificates(chain)], [crl])
    now = AMD_CRL_CURRENT  # a current ARK CRL is required (revocation fails closed)

    key = snp.parse_certificate(leaf).public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    parsed = snp.parse_report(report)
    signature = encode_dss_signature(parsed.r, parsed.s)
    signed = report[: snp.SIGNED_SIZE]
    algorithm = ec.ECDSA(hashes.SHA384())

    def ours() -> object:
        return snp.verify_report(report, trust=PRODUCTION, collateral=collateral, now=now)

    def baseline() -> None:
        key.verify(signature, signed, algorithm)

    # Interleave short rounds and keep each side's best, so load from other processes (this machine
    # is shared) does not land on one side only.
    rounds = 5
    ours_rate = base_rate = 0.0
    for _ in range(rounds):
        base_rate = max(base_rate, rate(baseline, seconds / rounds))
        ours_rate = max(ours_rate, rate(ours, seconds / rounds))
    ratio = ours_rate / base_rate
    return {
        "work": "SNP report verification",
        "vector": name,
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
    seconds = 1.0 if args.quick else 5.0
    for name in VECTORS:
        print(json.dumps(bench(root, name, seconds)))


if __name__ == "__main__":
    main()
