"""The agent path: ``sovereign node exec`` to the workload's first decrypted byte, the idle agent's memory,
and sealed reads through the agent's socket.

    .venv/bin/python -m bench.bench_agent [--quick] [--runs N]

Starts OpenBao and ``sovereign serve`` (subprocesses, TLS on loopback) trusting a simulator PKI saved to
disk, as ``sovereign dev up`` does, and creates ``model/main``. Every figure comes from real processes:

- First byte: wall time from starting ``sovereign node exec --config node.toml --keys model/main --
  python -c WORKLOAD`` (no agent running, so exec starts one: fresh identity, registration with
  simulated SNP evidence, key check, then the workload, which opens a sealed file with ``open_sealed``
  and writes its first plaintext byte to a pipe) until that byte reaches this process. Baseline, measured
  in the same run and alternating with ours: ``sovereign node decrypt FILE -``, the one-process way to
  the same byte (same CLI start, same registration and release, no agent, no second process). p50 and
  p99 over N runs each (quick 10, full 30, tiny 1; with 30 runs p99 is the slowest run or next to it).
  Target (ours; the issue sets none): the agent path costs at most 1.5x (p50) / 2x (p99) the
  one-process path. The row also reports a bare ``python -c pass`` start and one in-process key release
  (an already registered node), the floor under both.
- Idle memory: VmRSS from /proc of a running ``sovereign node agent`` after it registered and fetched
  its key, after 2 s idle. Baseline: VmRSS of a bare ``python -c 'import enclave.resident'``. Target
  (ours): at most 3x (the agent also carries the CLI, gRPC, the evidence provider and its threads).
- Sealed read through the agent: a sealed file (quick 64 MiB, full 256 MiB, tiny 2 MiB; 1 MiB chunks,
  page cache) read start to end with ``open_sealed(via_agent=True)`` (every chunk a request to the agent,
  which opens it; the key never enters the reader) vs ``open_sealed`` with the key fetched from the same
  agent (chunks opened in-process). Target (ours): >= 0.3x; the price of keeping the key out of the
  workload (a Unix-socket round trip, a thread and two copies per 1 MiB chunk).

Both first-byte sides are dominated by starting the ``sovereign`` CLI, which today imports the control
plane's modules (``kms.server.app``, SQLAlchemy, the OIDC cache) even for ``node`` commands; the agent's
resident memory carries them too. The machine may be shared: take the figures as this run's.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.simulate import SimulatedPki
from bench.peers import emit, note, row, tiny
from enclave.workload import AgentSocketKeySource, create_sealed, open_sealed
from sovereign.cli._sim_pki import save_sim_pki
from sovereign.client import AdminClient
from sovereign.client.records import KeyKind
from sovereign.demo.site import Inputs
from tests.e2e.world import ROOT, SNP_MEASUREMENT, ServerProcess, server_policy, start_bao

KEY = "model/main"
MIB = 1 << 20
FIRST_BYTE = (
    "import sys\nfrom enclave.workload import open_sealed\n"
    "with open_sealed(sys.argv[1]) as f:\n"
    "    sys.stdout.buffer.write(f.read(1)); sys.stdout.buffer.flush()\n"
)
FIRST_BYTE_TARGET, FIRST_BYTE_P99_TARGET, RSS_TARGET, THROUGH_AGENT_TARGET = 1.5, 2.0, 3.0, 0.3
SOVEREIGN = [sys.executable, "-m", "sovereign"]
IDLE = 0.5 if tiny() else 2.0  # seconds idle before reading VmRSS


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def to_first_byte(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``argv`` to the first byte on its stdout; it must then exit 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    took = time.perf_counter() - start
    _, err = proc.communicate(timeout=120)
    if not first or proc.returncode != 0:
        raise RuntimeError(f"{argv[2:5]} gave no byte (exit {proc.returncode}): {err.decode()[-800:]}")
    return took


def node_options(server: ServerProcess, sim_dir: Path) -> list[str]:
    assert server.ca is not None
    return [
        "--server", f"127.0.0.1:{server.port}", "--ca", str(server.ca), "--provider", "simulated-snp",
        "--sim-pki", str(sim_dir), "--sim-measurement", SNP_MEASUREMENT.hex(), "--group", "trainers",
    ]  # fmt: skip


def write_node_toml(server: ServerProcess, sim_dir: Path, directory: Path, name: str) -> Path:
    assert server.ca is not None
    path = directory / f"{name}.toml"
    path.write_text(
        f'server = "127.0.0.1:{server.port}"\nnode_name = "{name}"\nca = "{server.ca}"\n'
        f'provider = "simulated-snp"\nsim_pki = "{sim_dir}"\nsim_measurement = "{SNP_MEASUREMENT.hex()}"\n'
        f'groups = ["trainers"]\n\n[agent]\nsocket = "{directory / (name + ".sock")}"\nsocket_mode = "0600"\n'
        f'keys = ["{KEY}"]\n'
    )
    return path


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS for {pid}")
    return int(match.group(1))


def start_resident(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*SOVEREIGN, "node", "agent", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("node agent: node ") and line.rstrip().endswith(" ATTESTED"):
            return proc
    proc.kill()
    raise RuntimeError("the agent did not attest: " + "".join(seen[-20:]))


def idle_rss(proc: subprocess.Popen[str], socket_path: Path) -> int:
    source = AgentSocketKeySource(str(socket_path))
    deadline = time.monotonic() + 60
    while int(source.status().get("keys_held", 0)) < 1:  # its [agent].keys fetched
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not fetch its key")
        time.sleep(0.1)
    time.sleep(IDLE)
    return rss_kib(proc.pid)


def bare_import_rss() -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, enclave.resident; print('ready', flush=True); sys.stdin.read()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()
    time.sleep(IDLE)
    try:
        return rss_kib(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(30)


def read_all(path: Path, open_file: Callable[[Path], Any]) -> float:
    buffer = bytearray(MIB)
    start = time.perf_counter()
    with open_file(path) as f:
        while f.readinto(buffer):
            pass
    return time.perf_counter() - start


def bare_python_seconds(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 runs per side, a 64 MiB file")
    parser.add_argument("--runs", type=int, default=None, help="node exec / node decrypt runs per side")
    args = parser.parse_args()
    runs = args.runs or (1 if tiny() else 10 if args.quick else 30)
    size = (2 if tiny() else 64 if args.quick else 256) * MIB
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        sim_dir = work / "pki"
        save_sim_pki(SimulatedPki.generate(now), sim_dir, now)
        policy = work / "policy.toml"
        policy.write_text(server_policy())
        bao = start_bao(work / "bao")
        server = ServerProcess(
            work / "serve", Inputs(sim_dir / "trust.json", sim_dir / "collateral", policy), bao
        )
        try:
            server.start()
            with server.admin_channel() as channel:
                AdminClient(channel).create_key(KEY, KeyKind.MODEL)
            resident_rows, one_release = agent_rows(server, sim_dir, work, size)
            rows += resident_rows
            rows += first_byte_rows(server, sim_dir, work, runs, one_release)
        finally:
            server.stop()
            bao.server.stop()
    for result in rows:
        emit(result)


def agent_rows(
    server: ServerProcess, sim_dir: Path, work: Path, size: int
) -> tuple[list[dict[str, Any]], float]:
    config = write_node_toml(server, sim_dir, work, "bench-resident")
    socket_path = work / "bench-resident.sock"
    agent = start_resident(config)
    try:
        ours_rss = idle_rss(agent, socket_path)
        base_rss = bare_import_rss()
        note(f"idle agent {ours_rss} KiB, bare import {base_rss} KiB")
        source = AgentSocketKeySource(str(socket_path))
        sealed = work / "data.sealed"
        block = os.urandom(MIB)
        with create_sealed(sealed, key=KEY, keys=source) as out:
            for _ in range(size // MIB):
                out.write(block)
        read_all(sealed, lambda p: open_sealed(p, keys=source))  # page cache, key held by the agent
        through, local = [], []
        for _ in range(1 if tiny() else 3):  # alternate the sides; best of each
            through.append(read_all(sealed, lambda p: open_sealed(p, keys=source, via_agent=True)))
            local.append(read_all(sealed, lambda p: open_sealed(p, keys=source)))
        with create_sealed(work / "first.sealed", key=KEY, keys=source, chunk_size=64 << 10) as out:
            out.write(os.urandom(256 << 10))  # what the first-byte workloads open
        release_start = time.perf_counter()
        source.write_key(KEY)  # "write" is asked afresh each time: one release by a registered node
        one_release = time.perf_counter() - release_start
    finally:
        agent.terminate()
        agent.wait(30)
    mib = size / MIB
    return [
        row(
            "idle resident agent RSS after registration and one key fetched (VmRSS, /proc) vs a bare "
            "`python -c 'import enclave.resident'`",
            round(ours_rss / 1024, 1),
            round(base_rss / 1024, 1),
            "MiB",
            RSS_TARGET,
            higher_is_better=False,
            note="target is ours (the issue only asks to report it): at most 3x the bare import",
        ),
        row(
            f"open_sealed(via_agent=True) sequential read, {int(mib)} MiB, 1 MiB chunks (agent opens every "
            "chunk) vs open_sealed with the key from the same agent (chunks opened in-process)",
            round(mib / min(through), 1),
            round(mib / min(local), 1),
            "MiB/s",
            THROUGH_AGENT_TARGET,
            note="target is ours: the cost of keeping the key out of the workload",
        ),
    ], one_release


def first_byte_rows(
    server: ServerProcess, sim_dir: Path, work: Path, runs: int, one_release: float
) -> list[dict[str, Any]]:
    config = write_node_toml(server, sim_dir, work, "bench-exec")
    sealed = work / "first.sealed"
    env = {k: v for k, v in os.environ.items() if k != "SOVEREIGN_AGENT_SOCKET"}
    exec_argv = [*SOVEREIGN, "node", "exec", "--config", str(config), "--keys", KEY, "--",
                 sys.executable, "-c", FIRST_BYTE, str(sealed)]  # fmt: skip
    decrypt_argv = [*SOVEREIGN, "node", "decrypt", *node_options(server, sim_dir), "--node-name",
                    "bench-decrypt", str(sealed), "-"]  # fmt: skip
    ours, base = [], []
    for _ in range(runs):
        ours.append(to_first_byte(exec_argv, env))
        base.append(to_first_byte(decrypt_argv, env))
    bare = bare_python_seconds(1 if tiny() else max(3, runs))
    floor: dict[str, Any] = {
        "bare_python_ms": round(bare * 1000, 1),
        "one_release_via_agent_ms": round(one_release * 1000, 1),
        "runs": runs,
    }
    what = (
        "from `sovereign node exec` (starts an agent: registration, key check) to the workload's first "
        "decrypted byte vs `sovereign node decrypt FILE -` (one process: registration, release, decrypt)"
    )
    return [
        row(f"{what}, p50", round(percentile(ours, 0.5) * 1000, 1), round(percentile(base, 0.5) * 1000, 1),
            "ms", FIRST_BYTE_TARGET, higher_is_better=False, **floor,
            note="target is ours (the issue only asks to report it); bare_python_ms and "
                 "one_release_via_agent_ms are the floor under both sides"),
        row(f"{what}, p99", round(percentile(ours, 0.99) * 1000, 1), round(percentile(base, 0.99) * 1000, 1),
            "ms", FIRST_BYTE_P99_TARGET, higher_is_better=False, **floor,
            note=f"p99 of {runs} runs (the slowest or next to it); target is ours"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
