"""Release latency under open-loop load, against bare OpenBao transit decrypt at the same offered rate.

Run: ``.venv/bin/python -m bench.bench_open_loop [--quick]``. Starts OpenBao and ``sovereign serve`` as
``bench_release`` does and registers simulated SNP nodes. In the same run, against the same OpenBao:

1. saturation: closed-loop, ``WORKERS`` clients each, bare ``transit/decrypt`` (hvac) vs our release; the
   bare rate is the maximum the open-loop loads are a fraction of;
2. one concurrent client, closed loop: ours vs bare (target >= 0.5);
3. open loop: Poisson arrivals at 25%, 50% and 75% of the bare maximum, for each side; a request's latency
   runs from its scheduled arrival (queueing included, so it is not ``concurrency / throughput`` as closed-
   loop p99 is); ``WORKERS`` threads serve the arrivals, each with its own node (ours) or client (bare).
   Target: our p99 <= 1.5x the bare p99 at the same offered rate.

The clients run on the same machine as the server and OpenBao; every figure is a same-run ratio. Outside
tiny mode the latency against offered load is drawn into ``bench/open_loop_latency.png`` when matplotlib is
installed (``.venv-bench``); ``bench/latency.png`` is the runner's closed-loop plot.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import queue
import random
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hvac
import requests
from prometheus_client.parser import text_string_to_metric_families

from attestation.simulate import SimulatedPki
from bench.bench_release import KEY, enrol, percentile, run_threads
from tests.e2e.node_client import NodeClient
from tests.e2e.world import Bao, ServerProcess, prepare, start_bao

HERE = Path(__file__).resolve().parent
LOADS = (0.25, 0.50, 0.75)
SPLIT_FAMILIES = (
    "sovereign_release_seconds",
    "sovereign_openbao_call_seconds",
    "sovereign_release_batch_seconds",
    "sovereign_release_batch_size",
)
P99_TARGET = 1.5


def bare_calls(bao: Bao, count: int) -> list[Callable[[], None]]:
    token = bao.server.root_token
    first = hvac.Client(url=bao.server.addr, token=token)
    ciphertext = first.secrets.transit.generate_data_key("sovereign-kek", key_type="wrapped")["data"][
        "ciphertext"
    ]

    def make() -> Callable[[], None]:
        session = requests.Session()
        session.trust_env = False
        client = hvac.Client(url=bao.server.addr, token=token, session=session)
        return lambda: client.secrets.transit.decrypt_data("sovereign-kek", ciphertext=ciphertext)

    return [make() for _ in range(count)]


def release_calls(nodes: list[NodeClient]) -> list[Callable[[], None]]:
    def make(node: NodeClient) -> Callable[[], None]:
        return lambda: node.release_stub.ReleaseKey(node.release_request(KEY))

    return [make(n) for n in nodes]


def open_loop(
    calls: list[Callable[[], None]], rate: float, seconds: float, seed: int
) -> tuple[float, list[float]]:
    """Poisson arrivals at ``rate``/s for ``seconds``; returns (completed/s, sorted latencies from arrival)."""
    rng = random.Random(seed)
    arrivals: queue.SimpleQueue[float | None] = queue.SimpleQueue()
    latencies: list[float] = []
    lock = threading.Lock()

    def serve(call: Callable[[], None]) -> None:
        own: list[float] = []
        while (due := arrivals.get()) is not None:
            call()
            own.append(time.perf_counter() - due)
        with lock:
            latencies.extend(own)

    workers = [threading.Thread(target=serve, args=(c,)) for c in calls]
    for w in workers:
        w.start()
    start = time.perf_counter()
    due = start
    while (due := due + rng.expovariate(rate)) < start + seconds:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        arrivals.put(due)
    for _ in workers:
        arrivals.put(None)
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, sorted(latencies)


def scrape_sums(metrics_port: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of the release and OpenBao-call histograms from the server's /metrics, by operation."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in SPLIT_FAMILIES:
            continue
        for sample in family.samples:
            kind = sample.name.rsplit("_", 1)[-1]
            if kind not in ("sum", "count"):
                continue
            label = sample.labels.get("operation", sample.labels.get("stage", ""))
            key = family.name + ":" + label
            total, count = out.get(key, (0.0, 0.0))
            out[key] = (total + sample.value, count) if kind == "sum" else (total, count + sample.value)
    return out


def server_split(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean ms per call between two scrapes, per histogram (and OpenBao operation or batch stage);
    the mean batch size."""
    split = {}
    for key, (total, count) in after.items():
        t0, c0 = before.get(key, (0.0, 0.0))
        if count <= c0:
            continue
        mean = (total - t0) / (count - c0)
        name = key.replace("sovereign_", "").replace("_seconds", "").replace(":", "_").rstrip("_")
        if key.startswith("sovereign_release_batch_size"):
            split["server_release_batch_size_mean"] = round(mean, 2)
        else:
            split[f"server_{name}_mean_ms"] = round(mean * 1000, 3)
    return split


def row(work: str, ours: float, baseline: float, unit: str, target: float, met: bool, note: str,
        **extra: Any) -> dict[str, Any]:  # fmt: skip
    out = {"work": work, "ours": round(ours, 2), "baseline": round(baseline, 2), "unit": unit,
           "ratio": round(ours / baseline, 3), "target": target, "met": met, "note": note, **extra}  # fmt: skip
    print(json.dumps(out), flush=True)
    return out


def plot(points: list[dict[str, Any]], path: Path) -> str:
    try:
        matplotlib = importlib.import_module("matplotlib")  # optional: only .venv-bench has it
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib not installed (it is in .venv-bench), no open-loop plot"
    x = [p["offered_per_s"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [p["ours"] for p in points], "o-", label="key release p99 (ours)")
    ax.plot(x, [p["baseline"] for p in points], "s--", label="bare transit decrypt p99")
    ax.plot(x, [p["p50_ms"] for p in points], "o:", label="key release p50")
    ax.plot(x, [p["baseline_p50_ms"] for p in points], "s:", label="bare decrypt p50")
    ax.set(xlabel="offered load (requests/s, Poisson)", ylabel="latency from arrival (ms)",
           title="Latency under open-loop load")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path.name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per measurement instead of 10 s")
    parser.add_argument("--workers", type=int, default=None, help="client threads (default 32; tiny 4)")
    parser.add_argument("--processes", type=int, default=1, help="serve --processes (node-facing processes)")
    args = parser.parse_args()
    tiny = bool(os.environ.get("SOVEREIGN_BENCH_TINY"))
    seconds = 0.5 if tiny else 3.0 if args.quick else 10.0
    workers = args.workers or (4 if tiny else 32)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-open-loop-") as tmp:
        workdir = Path(tmp)
        pki = SimulatedPki.generate(now)
        bao = start_bao(workdir)
        server = ServerProcess(workdir / "server", prepare(workdir / "server", pki, now), bao)
        if args.processes > 1:
            server.extra = ["--processes", str(args.processes)]
        try:
            server.start()
            ours_calls = release_calls(enrol(server, pki, workers))
            bare = bare_calls(bao, workers)
            run_loaded(ours_calls, bare, seconds, tiny, server.metrics_port)
        finally:
            server.stop()
            bao.server.stop()
    return 0


def load_1m() -> float:
    """The 1-minute load average right after a measurement: the machine is shared (2 cores)."""
    return round(os.getloadavg()[0], 2)


def run_loaded(ours_calls: list[Callable[[], None]], bare: list[Callable[[], None]], seconds: float,
               tiny: bool, metrics_port: int) -> None:  # fmt: skip
    workers = len(ours_calls)
    bare_max, _ = run_threads(workers, seconds, lambda i: bare[i])
    load_bare = load_1m()
    before = scrape_sums(metrics_port)
    ours_max, _ = run_threads(workers, seconds, lambda i: ours_calls[i])
    split = server_split(before, scrape_sums(metrics_port))
    row(f"release throughput at saturation ({workers} closed-loop clients)", ours_max, bare_max, "requests/s",
        1.0, ours_max >= bare_max, "closed loop, same run; baseline = bare hvac transit/decrypt from the same "
        "number of clients; clients share the machine with the server and OpenBao; load_1m_* = the 1-minute "
        "load average after each side ran", concurrency_max=workers, load_1m_baseline=load_bare,
        load_1m_ours=load_1m(), **split)  # fmt: skip
    one_bare, _ = run_threads(1, seconds, lambda i: bare[0])
    load_bare = load_1m()
    before = scrape_sums(metrics_port)
    one_ours, one_lat = run_threads(1, seconds, lambda i: ours_calls[0])
    split = server_split(before, scrape_sums(metrics_port))
    row("release throughput at 1 concurrent node", one_ours, one_bare, "requests/s", 0.5,
        one_ours >= 0.5 * one_bare, "one closed-loop client each side; ours is a signed release over mTLS "
        "gRPC (verify, decide, unwrap in OpenBao, record, seal), bare is one transit/decrypt; server_* = "
        "mean ms per call inside the server over this run (its /metrics: the whole release, the OpenBao "
        "calls, a batch's unwrap and commit stages), client_mean_ms = what the client saw",
        client_mean_ms=round(sum(one_lat) / max(1, len(one_lat)) * 1000, 3), load_1m_baseline=load_bare,
        load_1m_ours=load_1m(), **split)  # fmt: skip
    points = []
    for i, load in enumerate(LOADS):
        rate = load * bare_max
        b_rate, b_lat = open_loop(bare, rate, seconds, seed=i)
        load_bare = load_1m()
        before = scrape_sums(metrics_port)
        o_rate, o_lat = open_loop(ours_calls, rate, seconds, seed=i)
        split = server_split(before, scrape_sums(metrics_port))
        ours_p99, bare_p99 = percentile(o_lat, 0.99) * 1000, percentile(b_lat, 0.99) * 1000
        points.append(
            row(
                f"release p99 under open-loop load at {load:.0%} of bare max",
                ours_p99,
                bare_p99,
                "ms",
                P99_TARGET,
                ours_p99 <= P99_TARGET * bare_p99,
                "Poisson arrivals at the same offered rate "
                "for both sides (same seed), latency from scheduled arrival; lower is better, target: "
                "ratio <= 1.5",
                offered_per_s=round(rate, 1),
                completed_per_s=round(o_rate, 1),
                baseline_completed_per_s=round(b_rate, 1),
                p50_ms=round(percentile(o_lat, 0.5) * 1000, 2),
                baseline_p50_ms=round(percentile(b_lat, 0.5) * 1000, 2),
                samples=len(o_lat),
                load_1m_baseline=load_bare,
                load_1m_ours=load_1m(),
                **split,
            )
        )
    if not tiny:
        print(f"[open_loop] {plot(points, HERE / 'open_loop_latency.png')}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
