"""SNP report verification: ours against ``openssl speed ecdsap384`` (the C limit for one P-384 verify).

Run: ``./dev bench --only peer_snp``. Our rate is the full ``snp.verify_report`` of ``genoa-v5-oak`` with its
collateral built once (``bench.bench_snp`` also compares it with one raw ``cryptography`` P-384 verify);
openssl's is verify/s from its own tight loop, measured in the same run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.bench_snp import bench as snp_bench
from bench.bench_snp import vectors_dir
from bench.peers import PeerMissing, emit, openssl, row, tiny

VECTOR = "genoa-v5-oak"
TARGET = 0.9
WORK = "SNP verification vs openssl speed ecdsap384"


def bench(seconds: float, openssl_seconds: int) -> dict[str, Any]:
    ours = snp_bench(vectors_dir(), VECTOR, seconds)
    try:
        peer: float | None = round(openssl.ecdsa_p384_verify_rate(openssl_seconds), 1)
        missing = ""
    except PeerMissing as err:
        peer, missing = None, str(err)
    return row(
        WORK,
        ours["ours"],
        peer,
        "verifications/s",
        TARGET,
        missing=missing,
        vector=VECTOR,
        raw_cryptography_p384=ours["baseline"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per side instead of 5 s")
    args = parser.parse_args()
    if not (vectors_dir() / "MANIFEST.json").is_file():
        raise SystemExit(f"vectors not found at {vectors_dir()}; set SOVEREIGN_VECTORS")
    if tiny():
        emit(bench(0.05, 1))
    else:
        emit(bench(1.0 if args.quick else 5.0, 1 if args.quick else 3))


if __name__ == "__main__":
    main()
