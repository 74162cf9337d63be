"""The node registry at scale: the control plane with N registered nodes against itself at N/100, same run.

Run: ``.venv/bin/python -m bench.bench_registry_scale [--quick] [--nodes N] [--rpc-sample M]``. Full:
100,000 nodes; quick: 10,000; tiny: 48. Starts OpenBao and ``sovereign serve`` (``bench_release``'s
set-up). Every node is a simulated SNP machine whose evidence answers a fresh challenge nonce and is
verified in full (the chain to the simulator's pinned ARK, the report signature, the binding, appraisal,
the registration's ledger entry); the node identities and the PKI are made ahead. The nodes get there
two ways, and every row says how many came each way:

- over the real Register RPC (Challenge, then Register): the N/100 baseline and a sample of the rest
  (``--rpc-sample``, default N/20);
- in-process, with the server stopped: the same ``Attestation.challenge``/``register`` use case that the
  servicer calls, built by ``kms.server.app.build`` on the server's own database, configuration and
  OpenBao (so the same verification and the same ledger). Over the RPC a registration costs 30-80 ms
  on this machine; 100,000 of them would not fit a session. This step also measures, with tracemalloc,
  the Python memory a registration leaves behind in the process that runs it.

The server is measured at N/100 (first run), again half-way through the in-process part (restarted on
the same database, with its own eight release nodes over the RPC: the middle point of the growth curve),
then restarted after the in-process part, takes the RPC sample, and is measured at N:

- control-plane RSS (the serve process and its children, from /proc) -- target <= 600 MiB at 100,000;
- a policy change that re-appraises every node (PutPolicy with the same rules and a new comment, then the
  second admin's Approve, which applies it: stored claims, no evidence re-verified; the Approve is
  timed) -- target <= 15 s at 100,000;
- ``admin nodes list`` filtered on ATTESTED, one page -- target <= 200 ms;
- release throughput of 8 closed-loop nodes, best of 3 runs -- target >= 0.9x the rate at N/100.

Figures that grow are projected linearly to 100,000 from the end points when run below full scale. Outside
tiny mode the growth curve (control-plane RSS and the policy change's time against registered nodes, at
the three points) is drawn into ``bench/registry_growth.png`` when matplotlib is installed (``.venv-bench``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.simulate import SimulatedPki
from bench.bench_release import enrol, ours
from enclave.identity import NodeIdentity
from enclave.providers.simulated import simulated_snp
from kms.config import ServerConfig
from kms.server.app import build
from kms.usecases.attest import EvidenceInput, NodeKeys, Outcome, RegisterInput
from proto.sovereign.v1 import attestation_pb2, common_pb2
from sovereign.client import AdminClient
from sovereign.client.records import NodeState
from tests.e2e.node_client import NodeClient
from tests.e2e.world import SNP_MEASUREMENT, ServerProcess, prepare, start_bao

FULL, QUICK, TINY = 100_000, 10_000, 48  # tiny: enough for the middle point
PAGE = 100  # admin nodes list page; the small side has at least a full page, so both list the same
RELEASERS = 8
REGISTER_THREADS = 8
ROUNDS = 3  # release throughput: best of this many runs at each point
TRACED = 200  # in-process registrations whose retained heap is measured
HERE = Path(__file__).resolve().parent


class Registrant(NodeClient):
    """Registers only: no release channel per node (N client certificates would be N TLS channels)."""

    def _take(self, result: attestation_pb2.AttestationResult) -> None:
        return None


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every descendant so far: what the server itself spent,
    whatever the other processes on the machine leave it of the cores."""
    total = 0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> set[int]:
    """``pid`` and every descendant (serve --processes forks workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, grew = {pid}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return found


def server_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and every descendant."""
    total = 0
    for p in family(pid):
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        kb = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")), 0)
        total += kb * 1024
    return total


def register_many(server: ServerProcess, pki: SimulatedPki, count: int, start: int) -> float:
    """Register ``count`` nodes; returns registrations/s."""
    provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
    channels = [server.channel() for _ in range(REGISTER_THREADS)]
    nodes = [Registrant(channels[i % REGISTER_THREADS], provider, name=f"n{start + i}") for i in range(count)]

    def one(node: Registrant) -> None:
        if node.register().state != common_pb2.NODE_STATE_ATTESTED:
            raise RuntimeError(f"node {node.name} did not attest")

    t = time.perf_counter()
    with ThreadPoolExecutor(REGISTER_THREADS) as pool:
        list(pool.map(one, nodes))
    rate = count / (time.perf_counter() - t) if count else float("nan")
    for ch in channels:
        ch.close()
    return rate


def measure(server: ServerProcess, releasers: list[NodeClient], seconds: float) -> dict[str, float]:
    with server.admin_channel() as channel:
        admin = AdminClient(channel)
        lists = []
        for _ in range(10):
            t = time.perf_counter()
            page = admin.list_nodes([NodeState.ATTESTED], page_size=PAGE)
            lists.append(time.perf_counter() - t)
        assert page.nodes
        current = admin.get_policy()
        put = admin.put_policy(current.toml + f"\n# bench {time.time_ns()}\n", current.version)
        assert server.proc is not None
        cpu = server_cpu(server.proc.pid)
        t = time.perf_counter()
        if put.pending_change is not None:  # the two-person rule: a second admin's approval applies it
            with server.admin_channel("bob") as second:
                AdminClient(second).approve(put.pending_change.change_id, "bench")
        policy_s = time.perf_counter() - t
        policy_cpu_s = server_cpu(server.proc.pid) - cpu
    rate = max(ours(releasers, seconds)[0] for _ in range(ROUNDS))  # best of: other agents share the cores
    assert server.proc is not None
    return {"rss_mib": server_rss(server.proc.pid) / (1 << 20), "policy_s": policy_s, "policy_cpu_s": policy_cpu_s,
            "list_ms": statistics.median(lists) * 1000, "release_per_s": rate}  # fmt: skip


def row(work: str, ours_v: float, base: float, unit: str, target: float, met: bool, note: str,
        **extra: Any) -> None:  # fmt: skip
    print(json.dumps({"work": work, "ours": round(ours_v, 3), "baseline": round(base, 3), "unit": unit,
                      "ratio": round(ours_v / base, 3), "target": target, "met": met, "note": note, **extra}),
          flush=True)  # fmt: skip


def populate(
    server: ServerProcess, pki: SimulatedPki, count: int, start: int, *, trace: bool = True
) -> dict[str, float]:
    """Register ``count`` nodes in-process through the Attestation use case on the (stopped) server's
    database: registrations/s, and (``trace``) the Python heap a registration leaves behind (tracemalloc
    over the last ``TRACED`` of them, after a collection)."""
    config = ServerConfig(
        db=str(server.db), collateral=str(server.inputs.collateral), policy="",
        bao_addr=server.bao.server.addr, bao_role_id=server.bao.report.role_id,
        bao_secret_id_file=server.bao.report.secret_id_file, nonce_ttl=600,
    )  # fmt: skip
    plane = build(config, trust=pki.trust_store())
    provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)

    def one(i: int) -> None:
        identity = NodeIdentity.generate()
        name = f"n{start + i}"
        challenge, _ = plane.attestation.challenge(name)
        evidence = provider.get_evidence(identity.report_data(challenge.nonce))
        keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
        request = RegisterInput(challenge.nonce, EvidenceInput("snp", evidence.blob, evidence.endorsements), keys,
                                name, ())  # fmt: skip
        outcome = plane.attestation.register(request)
        if outcome.outcome is not Outcome.ATTESTED:
            raise RuntimeError(f"node {name} did not attest: {outcome.reasons}")

    traced = min(TRACED, count // 2) if trace else 0
    try:
        t = time.perf_counter()
        # as many at once as the RPC part sends: the ledger's group commit batches concurrent entries
        with ThreadPoolExecutor(REGISTER_THREADS) as pool:
            for done, _ in enumerate(pool.map(one, range(count - traced)), 1):
                if done % 1000 == 0:
                    print(f"[registry_scale] {done:,} in-process", file=sys.stderr, flush=True)
        rate = (count - traced) / max(time.perf_counter() - t, 1e-9)
        if not traced:
            return {"per_s": rate, "retained_bytes_per_registration": float("nan")}
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count - traced, count):
            one(i)
        gc.collect()
        retained = (tracemalloc.get_traced_memory()[0] - before) / max(traced, 1)
        tracemalloc.stop()
    finally:
        plane.close()
    return {"per_s": rate, "retained_bytes_per_registration": retained}


def close_all(nodes: list[NodeClient]) -> None:
    for node in nodes:
        node.channel.close()
        if node.release_channel is not None:
            node.release_channel.close()


def fresh_releasers(server: ServerProcess, pki: SimulatedPki, prefix: str = "bench-r") -> list[NodeClient]:
    """Closed-loop release nodes registered over the RPC to this server process (new channels)."""
    provider = simulated_snp(pki, measurement=SNP_MEASUREMENT)
    nodes = []
    for i in range(RELEASERS):
        node = NodeClient(server.channel(), provider, name=f"{prefix}{i}")
        if node.register().state != common_pb2.NODE_STATE_ATTESTED:
            raise RuntimeError("a benchmark node did not attest")
        nodes.append(node)
    return nodes


def plot_growth(curve: list[dict[str, float]], path: Path) -> str:
    try:
        matplotlib = importlib.import_module("matplotlib")  # optional: only .venv-bench has it
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib not installed (it is in .venv-bench), no registry growth plot"
    x = [p["nodes"] for p in curve]
    fig, (memory, policy) = plt.subplots(1, 2, figsize=(10, 4))
    memory.plot(x, [p["rss_mib"] for p in curve], "o-")
    memory.set(xlabel="registered nodes", ylabel="control-plane RSS (MiB, serve and children)",
               title="Memory vs registered nodes", ylim=(0, None))  # fmt: skip
    policy.plot(x, [p["policy_s"] for p in curve], "o-", label="wall")
    policy.plot(x, [p["policy_cpu_s"] for p in curve], "s--", label="server CPU")
    policy.set(xlabel="registered nodes", ylabel="s", title="Policy change re-appraising every node",
               ylim=(0, None))  # fmt: skip
    policy.legend()
    for ax in (memory, policy):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path.name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} nodes instead of {FULL:,}")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--rpc-sample", type=int, default=None, help="nodes above N/100 registered over the "
                        "RPC (default N/20); the rest are registered in-process")  # fmt: skip
    args = parser.parse_args()
    tiny = bool(os.environ.get("SOVEREIGN_BENCH_TINY"))
    n = args.nodes or (TINY if tiny else QUICK if args.quick else FULL)
    small = min(n, max(RELEASERS * 2, PAGE + RELEASERS, n // 100)) if not tiny else RELEASERS * 2
    # the second set of release nodes registers over the RPC too, after the restart
    sample = max(0, min(n - small - RELEASERS, args.rpc_sample if args.rpc_sample is not None else n // 20))
    in_process = max(0, n - small - sample - RELEASERS)
    # the middle point of the curve: half the in-process nodes, then its own release nodes over the RPC
    middle = in_process >= 2 * RELEASERS
    in_process -= RELEASERS if middle else 0
    first_half = in_process // 2 if middle else 0
    seconds = 0.5 if tiny else 3.0
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        workdir = Path(tmp)
        pki = SimulatedPki.generate(now)
        bao = start_bao(workdir)
        server = ServerProcess(workdir / "server", prepare(workdir / "server", pki, now), bao)
        try:
            server.start()
            releasers = enrol(server, pki, RELEASERS)
            rpc_rate = register_many(server, pki, small - RELEASERS, 0)
            at_small = measure(server, releasers, seconds)
            close_all(releasers)
            server.stop()
            curve = [{"nodes": small, **at_small}]
            start = small
            if middle:
                half = populate(server, pki, first_half, start, trace=False)
                start += first_half
                server.start()
                releasers = fresh_releasers(server, pki, "bench-m")
                start += RELEASERS
                curve.append({"nodes": start, **measure(server, releasers, seconds)})
                close_all(releasers)
                server.stop()
            filled = populate(server, pki, in_process - first_half, start)
            if middle:  # the whole in-process fill's rate, both halves
                took = first_half / half["per_s"] + (in_process - first_half) / filled["per_s"]
                filled["per_s"] = in_process / took
            print(f"[registry_scale] {in_process:,} in-process ({filled['per_s']:.0f}/s)", file=sys.stderr,
                  flush=True)  # fmt: skip
            server.start()
            releasers = fresh_releasers(server, pki)
            sample_rate = register_many(
                server, pki, sample, small + in_process + (RELEASERS if middle else 0)
            )
            print(
                f"[registry_scale] {sample:,} more over the RPC ({sample_rate:.0f}/s)",
                file=sys.stderr,
                flush=True,
            )
            at_n = measure(server, releasers, seconds)
            curve.append({"nodes": n, **at_n})
            close_all(releasers)
        finally:
            server.stop()
            bao.server.stop()
    scale = FULL / n

    def projected(key: str) -> float:
        slope = (at_n[key] - at_small[key]) / (n - small)
        return at_n[key] + slope * (FULL - n)

    over_rpc = small + sample + RELEASERS * (2 if middle else 1)
    how = (f"registered over the Register RPC: {over_rpc:,} ({small:,} before the baseline, "
           f"{RELEASERS if middle else 0} at the middle point, {sample + RELEASERS:,} after the restart); in-process through Attestation.register with the server "
           f"stopped (same verification, same ledger): {in_process:,}")  # fmt: skip
    common = {"nodes": n, "baseline_nodes": small, "rpc_nodes": over_rpc,
              "in_process_nodes": in_process, "rpc_registrations_per_s": round(min(r for r in (rpc_rate, sample_rate) if r == r), 1),
              "in_process_registrations_per_s": round(filled["per_s"], 1),
              "retained_bytes_per_registration": round(filled["retained_bytes_per_registration"]),
              "load_average": [round(x, 2) for x in os.getloadavg()], "populated": how}  # fmt: skip
    rss_100k = projected("rss_mib") if scale > 1 else at_n["rss_mib"]
    row(f"control-plane RSS at {n:,} vs {small:,} registered nodes", at_n["rss_mib"], at_small["rss_mib"], "MiB",
        600, rss_100k <= 600, f"serve and its children, VmRSS after the policy change and the releases; projected "
        f"linearly to 100,000: {rss_100k:.0f} MiB", projected_100k=round(rss_100k, 1),
        curve=[{k: round(v, 3) for k, v in p.items()} for p in curve], **common)  # fmt: skip
    pol_100k = projected("policy_s") if scale > 1 else at_n["policy_s"]
    cpu_100k = projected("policy_cpu_s") if scale > 1 else at_n["policy_cpu_s"]
    row(f"policy change re-appraising {n:,} vs {small:,} nodes", at_n["policy_s"], at_small["policy_s"], "s", 15,
        pol_100k <= 15, f"Approve of a pending PutPolicy (applies it: stored claims re-appraised, no evidence re-verified); "
        f"projected linearly to 100,000 through both points: {pol_100k:.1f} s wall; the server's own CPU for it: "
        f"{at_n['policy_cpu_s']:.2f} s vs {at_small['policy_cpu_s']:.2f} s, projected {cpu_100k:.1f} s",
        projected_100k=round(pol_100k, 2), server_cpu_s=round(at_n["policy_cpu_s"], 3),
        baseline_server_cpu_s=round(at_small["policy_cpu_s"], 3), projected_cpu_100k=round(cpu_100k, 2), **common)  # fmt: skip
    row(f"admin nodes list (state filter, page of 100) at {n:,} vs {small:,} nodes", at_n["list_ms"],
        at_small["list_ms"], "ms", 200, at_n["list_ms"] * max(1.0, at_n["list_ms"] / at_small["list_ms"]) <= 200
        if scale > 1 else at_n["list_ms"] <= 200, "median of 10 ListNodes calls over the operator port; below "
        "full scale the ratio is applied once more as a projection", **common)  # fmt: skip
    ratio = at_n["release_per_s"] / at_small["release_per_s"]
    row(f"release throughput at {n:,} vs {small:,} registered nodes", at_n["release_per_s"],
        at_small["release_per_s"], "releases/s", 0.9, ratio >= 0.9, f"{RELEASERS} closed-loop nodes, same server "
        "binary and database (restarted between the two points), same run", **common)  # fmt: skip
    if not tiny:
        print(f"[registry_scale] {plot_growth(curve, HERE / 'registry_growth.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
