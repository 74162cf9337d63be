"""Web console: page render time with a full ledger, and what polling it costs key releases.

Run: ``.venv/bin/python -m bench.bench_console [--quick]``. Starts OpenBao, the dev realm and ``sovereign
serve --console-listen``, registers simulated nodes and releases keys until the ledger holds ``--entries``
entries (10,000; ``--quick`` too), signs in through the realm exactly as a browser does (authorization
code + PKCE), then times the overview page and two ledger searches (p50/p95 over ``--renders`` loads each;
target p95 <= 200 ms, a stated limit, not a same-run baseline). Last, release throughput is measured twice
in the same run: with nobody looking, and with the console's overview and a ledger search loaded every
second (ratio polled / unpolled; target >= 0.9). The machine has 2 cores, shared by the server, OpenBao,
the realm and the load generator: figures are for this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from attestation.simulate import SimulatedPki
from bench.bench_release import enrol, ours, percentile
from sovereign.demo.realm import start as start_realm
from tests.e2e.operators import StandinRealm
from tests.e2e.world import ServerProcess, prepare, start_bao

RENDER_TARGET_MS = 200.0
POLL_TARGET = 0.9


def sign_in(url: str, ca: Path, username: str) -> requests.Session:
    """The browser's path: /login -> realm login form -> credentials -> callback -> session cookie."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    form = session.get(f"{url}/login", timeout=30)
    action = re.search(r'<form method="post" action="([^"]+)"', form.text)
    if action is None:
        raise RuntimeError(f"no login form at {form.url}")
    realm_base = form.url.split("/realms/")[0]
    done = session.post(
        realm_base + action.group(1),
        data={"username": username, "password": f"{username}-password"},
        timeout=30,
    )
    if "__Host-sovereign-console" not in session.cookies:
        raise RuntimeError(f"sign-in did not give a console session ({done.status_code} at {done.url})")
    return session


def render_times(session: requests.Session, url: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        response = session.get(url, timeout=30)
        out.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
    return sorted(out)


def fill_ledger(nodes: list[Any], entries: int) -> None:
    per = max(1, entries // len(nodes))

    def run(node: Any) -> None:
        for _ in range(per):
            node.release_stub.ReleaseKey(node.release_request("dataset/train"))

    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(run, nodes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer page loads and shorter release rounds")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--renders", type=int, default=None)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    tiny = bool(os.environ.get("SOVEREIGN_BENCH_TINY"))
    entries = 200 if tiny else args.entries
    renders = args.renders or (5 if tiny else 50 if args.quick else 200)
    seconds = 0.5 if tiny else 3.0 if args.quick else 10.0
    threads = 2 if tiny else args.threads
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        workdir = Path(tmp)
        pki = SimulatedPki.generate(now)
        bao = start_bao(workdir)
        idp = start_realm()
        realm = StandinRealm(idp)
        server = ServerProcess(
            workdir / "server", prepare(workdir / "server", pki, now), bao, realm,
            extra=["--console-listen", "127.0.0.1:0"],
        )  # fmt: skip
        try:
            server.start()
            assert server.ca is not None
            url = server.announced("console on ")
            nodes = enrol(server, pki, threads)
            fill_ledger(nodes, entries)
            session = sign_in(url, server.ca, "carol")  # the auditor sees the ledger
            pages = {
                "overview": f"{url}/",
                f"ledger search by node ({entries:,} entries)": f"{url}/ledger?node=bench-1",
                f"ledger search by key and decision ({entries:,} entries)": f"{url}/ledger?key=dataset/train&decision=grant",
            }
            time.sleep(1.5)  # a signed checkpoint over the filled ledger
            for name, page in pages.items():
                times = render_times(session, page, renders)
                p95 = percentile(times, 0.95) * 1000
                rows.append({
                    "work": f"console page: {name}", "ours": round(p95, 1), "baseline": RENDER_TARGET_MS,
                    "unit": "ms (p95)", "ratio": round(RENDER_TARGET_MS / p95, 3), "target": 1.0,
                    "met": p95 <= RENDER_TARGET_MS, "p50_ms": round(percentile(times, 0.5) * 1000, 1),
                    "renders": renders,
                    "note": "baseline is the stated limit (p95 <= 200 ms), not a same-run measurement",
                })  # fmt: skip
            quiet, _ = ours(nodes, seconds)
            stop = threading.Event()

            def poll() -> None:
                while not stop.wait(1.0):
                    for page in pages.values():
                        session.get(page, timeout=30)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            try:
                polled, _ = ours(nodes, seconds)
            finally:
                stop.set()
                poller.join()
            ratio = polled / quiet
            rows.append({
                "work": f"key release while the console is polled every second ({threads} concurrent)",
                "ours": round(polled, 1), "baseline": round(quiet, 1), "unit": "releases/s",
                "ratio": round(ratio, 3), "target": POLL_TARGET, "met": ratio >= POLL_TARGET,
                "note": "baseline: the same server with nobody looking at the console, same run",
            })  # fmt: skip
        finally:
            server.stop()
            bao.server.stop()
            idp.stop()
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
