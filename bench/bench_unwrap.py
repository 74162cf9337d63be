"""Data-key unwraps per second through the OpenBao adapter vs bare hvac, same server, same run. Not a test.

    .venv/bin/python -m bench.bench_unwrap [--quick]

Starts a bootstrapped dev ``bao`` (file audit device on, as in every deployment), makes wrapped data keys,
then alternates rounds of: ``OpenBaoTransit.unwrap`` (one ciphertext per call, one thread) and bare
``hvac.Client.secrets.transit.decrypt_data`` with the same AppRole token over the same ciphertexts. Best
round of each counts. A second row compares ``unwrap_batch`` (100 per request) with bare hvac
``batch_input``. Prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import hvac

from kms.openbao.bootstrap import bootstrap
from kms.openbao.vault import AppRoleAuth, BaoSettings, OpenBaoTransit
from sovereign.devtools.openbao_server import OpenBaoServer

TARGET = 0.9
BATCH = 100


def _rate(count: int, fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def _row(work: str, ours: float, baseline: float) -> dict[str, object]:
    ratio = ours / baseline
    return {
        "work": work,
        "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "unit": "unwraps/s",
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
    }


def run(keys: int, rounds: int) -> list[dict[str, object]]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-unwrap-") as tmp,
        OpenBaoServer.dev(Path(tmp) / "bao") as server,
    ):
        report = bootstrap(server.addr, server.root_token or "", Path(tmp) / "approle")
        secret_id = Path(report.secret_id_file).read_text().strip()
        transit = OpenBaoTransit(BaoSettings(server.addr, AppRoleAuth(report.role_id, secret_id)))
        ciphertexts = [transit.generate_wrapped_data_key().ciphertext for _ in range(keys)]
        bare = hvac.Client(url=server.addr, token=transit.client.token)
        bare.session.trust_env = False  # same as the adapter: no proxy lookups on loopback

        def ours_single() -> None:
            for c in ciphertexts:
                transit.unwrap(c)

        def bare_single() -> None:
            for c in ciphertexts:
                bare.secrets.transit.decrypt_data("sovereign-kek", ciphertext=c)

        chunks = [ciphertexts[i : i + BATCH] for i in range(0, len(ciphertexts), BATCH)]

        def ours_batch() -> None:
            for chunk in chunks:
                transit.unwrap_batch(chunk)

        def bare_batch() -> None:
            for chunk in chunks:
                bare.secrets.transit.decrypt_data(
                    "sovereign-kek", batch_input=[{"ciphertext": c} for c in chunk]
                )

        ours_single()  # warm both connection pools
        bare_single()
        single_ours = single_bare = batch_ours = batch_bare = 0.0
        for _ in range(rounds):  # alternate so drift hits both sides alike
            single_ours = max(single_ours, _rate(keys, ours_single))
            single_bare = max(single_bare, _rate(keys, bare_single))
            batch_ours = max(batch_ours, _rate(keys, ours_batch))
            batch_bare = max(batch_bare, _rate(keys, bare_batch))
        transit.close()
    return [
        _row("data-key unwrap via adapter", single_ours, single_bare),
        _row(f"data-key unwrap via adapter, batch of {BATCH}", batch_ours, batch_bare),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer keys and rounds")
    args = parser.parse_args()
    for row in run(keys=200 if args.quick else 1000, rounds=3 if args.quick else 5):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
