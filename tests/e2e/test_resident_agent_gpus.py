"""The resident node agent with simulated GPUs from node.toml (``gpu = "simulated"``), across real
processes: ``sovereign serve`` trusting the saved simulator PKI (its GPU roots pinned, the simulated RIMs,
OCSP answers and CRLs in its collateral store), ``sovereign node agent`` registering and renewing with
GPU evidence, and ``sovereign node exec`` refused with the GPU verifier's code when the GPUs report a
VBIOS their RIM does not allow. Fixtures and helpers are those of test_resident_agent.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from e2e import test_resident_agent as base
from e2e.test_resident_agent import node_toml, start_agent, status, stop
from e2e.world import ROOT, ServerProcess

# The same fixtures (found by name): a server trusting a saved simulator PKI, leases of 4 seconds.
plane, sim_dir, sock_dir = base.plane, base.sim_dir, base.sock_dir
GPUS = 'gpu = "simulated"\nsim_gpus = 2\n'


def gpu_toml(plane: ServerProcess, sim_dir: Path, directory: Path, settings: str) -> Path:
    """test_resident_agent's node.toml with GPU settings among the node settings (before [agent])."""
    path = node_toml(plane, sim_dir, directory)
    path.write_text(path.read_text().replace("\n[agent]\n", f"{settings}\n[agent]\n", 1))
    return path


def stored_gpus(server: ServerProcess, node_id: str) -> list[dict[str, object]]:
    with sqlite3.connect(server.db) as db:
        row = db.execute("SELECT claims_json FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
    assert row, f"node {node_id} is not stored"
    gpus: list[dict[str, object]] = json.loads(row[0])["details"].get("gpus", [])
    return gpus


def test_the_agent_registers_and_renews_with_its_simulated_gpus(
    plane: ServerProcess, sim_dir: Path, sock_dir: Path
) -> None:
    agent = start_agent(gpu_toml(plane, sim_dir, sock_dir, GPUS))
    socket_path = sock_dir / "agent.sock"
    try:
        first = status(socket_path)
        node_id = str(first["node_id"])
        gpus = stored_gpus(plane, node_id)
        assert [g["architecture"] for g in gpus] == ["HOPPER", "HOPPER"]
        assert all(g["measurement_result"] == "success" and g["simulated"] is True for g in gpus)
        deadline = time.monotonic() + 60
        while int(status(socket_path)["renewals"]) < 1 and time.monotonic() < deadline:  # type: ignore[call-overload]
            time.sleep(0.5)
        after = status(socket_path)
        assert int(after["renewals"]) >= 1 and after["state"] == "ATTESTED", after  # type: ignore[call-overload]
        assert after["node_id"] == node_id
        # a renewal re-verifies and re-stores the GPU claims: without GPU evidence they would be gone
        assert [g["ueid"] for g in stored_gpus(plane, node_id)] == [g["ueid"] for g in gpus]
    finally:
        assert stop(agent) == 0


def test_exec_is_refused_with_the_gpu_code_when_a_vbios_does_not_match(
    plane: ServerProcess, sim_dir: Path, sock_dir: Path
) -> None:
    config = gpu_toml(plane, sim_dir, sock_dir, GPUS + 'sim_gpu_fault = "vbios-mismatch"\n')
    done = subprocess.run(
        [sys.executable, "-m", "sovereign", "node", "exec", "--config", str(config), "--", "true"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "GPU_MEASUREMENT_MISMATCH" in done.stderr, done.stdout + done.stderr
