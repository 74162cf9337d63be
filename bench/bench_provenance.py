"""Training provenance: issuing cost against a key release, offline verification rate, statement size.

Run: ``.venv/bin/python -m bench.bench_provenance [--quick]``. Three kinds of rows:

1. issuing (real ``sovereign serve`` + OpenBao, one run): N trainer nodes each read a dataset key, then
   loop on (take a write grant, record an output) for the run while the server issues every output's
   statement in the background, one batch per new checkpoint. From the server's /metrics, before and
   after: the issuer's wall-clock seconds per statement issued (each batch's whole span divided by its
   statements: the cost of one statement amortized over its batch) against the mean server time of the
   releases (the write grants) in the same window, at the same concurrency N. Target: <= 20%. A second
   row: fetching a stored statement (``Audit.GetProvenance``) against ``ReleaseKey``, client-observed, at
   the same concurrency (no target).
2. offline verification (in memory): statements over a ledger of 10,000 entries, verified in a loop with
   every check on; baseline: the two bare Ed25519 verifications each statement needs (checkpoint and
   DSSE), with cryptography. Target: >= 1,000 statements/s.
3. statement size for a node that received 1, 10 and 100 dataset keys; baseline: the same statement
   without its ledger evidence (entries and proofs). Target: under 1 MiB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from attestation.simulate import SimulatedPki
from bench.bench_release import percentile, run_threads
from enclave.output_request import sign_output
from enclave.providers.simulated import simulated_snp
from enclave.workload.output_report import OutputReport
from kms.audit.entry import Decision, Kind
from kms.provenance.verify import verify_statement
from proto.sovereign.v1 import common_pb2, key_release_pb2
from sovereign.client import AdminClient, AuditClient
from sovereign.client.records import KeyKind
from tests.e2e.node_client import NodeClient
from tests.e2e.world import SNP_MEASUREMENT, ServerProcess, prepare, start_bao
from tests.unit.provenance_ledger import Ledger, training_ledger

TINY = os.environ.get("SOVEREIGN_BENCH_TINY") == "1"
DATASET, MODEL = "dataset/train", "model/main"
ISSUE_TARGET = 0.2
VERIFY_TARGET = 1_000
SIZE_TARGET = 1 << 20


def _output(node: NodeClient) -> str:
    """Take a write grant of the model key and record an output sealed with it; the output's SHA-256."""
    _, write = node.release(MODEL, "write")
    sha = secrets.token_hex(32)
    report = OutputReport(
        MODEL, write.key_version, secrets.token_hex(32), sha, secrets.token_hex(32), 1 << 20
    )
    signed = sign_output(
        node.identity, node.node_id, report, request_id=os.urandom(16), timestamp=datetime.now(UTC)
    )
    node.release_stub.RecordOutput(
        key_release_pb2.RecordOutputRequest(body=signed.body, signature=signed.signature)
    )
    return sha


def _scrape(port: int) -> dict[str, float]:
    """The server's metric samples (name -> value) from its /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def issuing(threads: int, seconds: float) -> list[dict[str, Any]]:
    """One server, one run: ``threads`` trainer nodes each loop on (write grant, record output) while the
    server issues statements in the background at each checkpoint; then the stored statements are fetched
    at the same concurrency. Two rows: issuing per statement against one release, server time; fetching a
    stored statement against a release, client time."""
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-provenance-") as tmp:
        workdir = Path(tmp)
        pki = SimulatedPki.generate(now)
        bao = start_bao(workdir)
        server = ServerProcess(workdir / "server", prepare(workdir / "server", pki, now), bao)
        try:
            server.start()
            with server.admin_channel() as channel:
                admin = AdminClient(channel)
                admin.create_key(DATASET, KeyKind.DATASET)
                admin.create_key(MODEL, KeyKind.MODEL)
            provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
            nodes = []
            for i in range(threads):
                node = NodeClient(server.channel(), provider, name=f"bench-prov-{i}")
                if node.register().state != common_pb2.NODE_STATE_ATTESTED:
                    raise RuntimeError("a benchmark node did not attest")
                node.release(DATASET)  # each trainer read a dataset: a lineage to prove
                nodes.append(node)
            outputs: list[list[str]] = [[] for _ in nodes]

            def train(i: int) -> Callable[[], None]:
                return lambda: outputs[i].append(_output(nodes[i]))

            before = _scrape(server.metrics_port)
            train_rate, train_lat = run_threads(threads, seconds, train)
            recorded = sum(len(o) for o in outputs)
            deadline = time.monotonic() + 30  # the last checkpoint's batch
            while True:
                after = _scrape(server.metrics_port)
                issued = _delta(after, before, "sovereign_provenance_statements_total")
                if issued >= recorded - threads or time.monotonic() > deadline:  # warm-up outputs
                    break
                time.sleep(0.25)
            auditor = AuditClient(server.operator_channel(server.operators().token("carol")))
            auditor.provenance(bytes.fromhex(outputs[0][-1]))  # one full check of the path

            def release(i: int) -> Callable[[], None]:
                node = nodes[i]
                return lambda: node.release_stub.ReleaseKey(node.release_request(DATASET))

            def fetch(i: int) -> Callable[[], None]:
                sha = bytes.fromhex(outputs[i][0])
                return lambda: auditor.provenance(sha)

            quiet = _scrape(server.metrics_port)
            release_rate, _ = run_threads(threads, seconds, release)
            alone = _scrape(server.metrics_port)
            fetch_rate, fetch_lat = run_threads(threads, seconds, fetch)
        finally:
            server.stop()
            bao.server.stop()
    releases = _delta(after, before, "sovereign_release_seconds_count")
    release_ms = _delta(after, before, "sovereign_release_seconds_sum") / releases * 1000
    batches = _delta(after, before, "sovereign_provenance_batches_total")
    issue_ms = _delta(after, before, "sovereign_provenance_issue_seconds_total") / issued * 1000
    issue_cpu_ms = _delta(after, before, "sovereign_provenance_issue_cpu_seconds_total") / issued * 1000
    ratio = issue_ms / release_ms
    alone_ms = (
        _delta(alone, quiet, "sovereign_release_seconds_sum")
        / _delta(alone, quiet, "sovereign_release_seconds_count")
        * 1000
    )
    release_client_ms = threads / release_rate * 1000
    fetch_ms = threads / fetch_rate * 1000
    return [
        {
            "work": f"issue a provenance statement vs one key release, server time ({threads} concurrent trainers)",
            "concurrency": threads,
            "ours": round(issue_ms, 3),
            "baseline": round(release_ms, 3),
            "unit": "ms per statement / ms per release",
            "ratio": round(ratio, 3),
            "target": ISSUE_TARGET,
            "met": ratio <= ISSUE_TARGET,
            "issue_cpu_ms": round(issue_cpu_ms, 3),
            "read_release_alone_ms": round(alone_ms, 3),
            "ratio_vs_read_release_alone": round(issue_ms / alone_ms, 3),
            "statements": int(issued),
            "batches": int(batches),
            "statements_per_batch": round(issued / batches, 1) if batches else 0,
            "releases": int(releases),
            "outputs_recorded": recorded,
            "train_loops_per_s": round(train_rate, 1),
            "train_loop_p50_ms": round(percentile(train_lat, 0.5) * 1000, 2),
            "note": "one server, one run: N trainer threads each loop on (write grant = ReleaseKey, RecordOutput) "
            "while the server issues every output's statement in the background, one batch per new checkpoint "
            "(every 0.5 s). ours = the issuer's wall-clock seconds over the run (each batch from reading the "
            "checkpoint to the stored statements: entries read, proofs, RFC 8785 encoding, the one transit "
            "sign_batch, the insert) / statements issued: the cost of one statement amortized over its batch "
            "(sovereign_provenance_issue_seconds_total / sovereign_provenance_statements_total). baseline = "
            "the mean server time of the releases in the same window (sovereign_release_seconds sum / count). "
            "Both deltas of the server's /metrics before and after the load. Also shown: the mean server time "
            "of dataset read releases run alone afterwards (no outputs recorded, nothing issued) and the ratio "
            "against it. target: ratio <= 0.2",
        },
        {
            "work": f"fetch a stored provenance statement vs a key release, client time ({threads} concurrent)",
            "concurrency": threads,
            "ours": round(fetch_ms, 2),
            "baseline": round(release_client_ms, 2),
            "unit": "ms per call",
            "ratio": round(fetch_ms / release_client_ms, 3),
            "target": None,
            "met": None,
            "p50_ms": round(percentile(fetch_lat, 0.5) * 1000, 2),
            "p99_ms": round(percentile(fetch_lat, 0.99) * 1000, 2),
            "note": "closed-loop clients on loopback, same server, after the run above: mean time per call "
            "(concurrency / throughput) of GetProvenance serving a stored statement (includes finding the "
            "output by digest) against ReleaseKey; informative, no target",
        },
    ]


def _big_ledger(datasets: int, filler: int) -> tuple[Ledger, int]:
    """``filler`` unrelated entries first, so proofs have a realistic length."""
    led, out = training_ledger(datasets)
    prefix = Ledger(led.audit_key, led.provenance_key)
    for _ in range(filler):
        prefix.add(Kind.SERVER_STOP, Decision.NONE)
    for e in led.entries:
        prefix.add(e.kind, e.decision, **dict(e.fields))
    return prefix, out + filler


def verification(seconds: float, filler: int) -> dict[str, Any]:
    led, out = _big_ledger(10, filler)
    statement = led.statement(out)
    keys = led.keys()
    verify_statement(statement, keys)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        verify_statement(statement, keys)
        count += 1
    ours = count / (time.perf_counter() - start)
    signer = Ed25519PrivateKey.generate()
    public, message = signer.public_key(), b"x" * 600
    sig = signer.sign(message)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        public.verify(sig, message)
        public.verify(sig, message)
        n += 1
    base = n / (time.perf_counter() - start)
    return {
        "work": f"offline provenance verification (10 datasets, ledger of {len(led.entries)} entries)",
        "ours": round(ours),
        "baseline": round(base),
        "unit": "statements/s",
        "ratio": round(ours / base, 3),
        "target": VERIFY_TARGET,
        "met": ours >= VERIFY_TARGET,
        "statement_bytes": len(statement),
        "note": "every check on: DSSE signature, in-toto shape, entry grammar, every inclusion proof, the "
        "checkpoint signature, the lineage; baseline = the two bare Ed25519 verifications a statement needs; "
        "target is absolute statements/s",
    }


def sizes(filler: int) -> list[dict[str, Any]]:
    rows = []
    for datasets in (1, 10, 100):
        led, out = _big_ledger(datasets, filler)
        envelope = led.statement(out)
        doc = json.loads(envelope)
        statement = json.loads(base64.b64decode(doc["payload"]))
        proven = len(statement["predicate"]["ledger"]["entries"])
        statement["predicate"]["ledger"] = {}
        bare = len(json.dumps(statement, separators=(",", ":"))) * 4 // 3  # base64 in the envelope
        rows.append(
            {
                "work": f"statement size, node with {datasets} dataset key(s)",
                "ours": len(envelope),
                "baseline": bare,
                "unit": "bytes",
                "ratio": round(len(envelope) / bare, 3),
                "target": SIZE_TARGET,
                "met": len(envelope) <= SIZE_TARGET,
                "entries_proven": proven,
                "note": f"ledger of {len(led.entries)} entries; baseline = the same statement without its ledger "
                "evidence (entries + inclusion proofs); target: under 1 MiB",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 concurrent, 3 s per side")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    threads = args.threads or (2 if TINY else 16 if args.quick else 64)
    seconds = args.seconds or (0.3 if TINY else 3.0 if args.quick else 10.0)
    filler = 100 if TINY else 10_000
    for row in [verification(seconds, filler), *sizes(filler), *issuing(threads, seconds)]:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
