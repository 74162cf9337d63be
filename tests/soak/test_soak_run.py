"""A 60-second soak of the real stack (raft OpenBao, ``sovereign serve`` on SQLite in a tmpfs, SNP and TDX
node agents, operators, a data owner, an auditor) with every fault kind injected at least once: each fault
bites (operations fail while it lasts), the system serves again after each, and the invariant checker, the
resource bounds and the key-material scan find nothing. Run through the same entry point as ``./dev soak``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sovereign.soak.faults import ALL_FAULTS

ROOT = Path(__file__).resolve().parents[2]


def test_a_one_minute_soak_with_every_fault_kind_ends_with_no_violation(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sovereign.soak",
            "--minutes",
            "1",
            "--seed",
            "21",
            "--rate",
            "6",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert (out / "results.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    inv = results["invariants"]
    assert inv["violations_total"] == 0, json.dumps(inv["violations"], indent=1)[:4000]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    by_kind = results["faults_by_kind"]
    assert sorted(by_kind) == sorted(str(k) for k in ALL_FAULTS)
    for kind, f in by_kind.items():
        assert f["injected"] >= 1 and f["recovered"] == f["injected"], (kind, f)
        assert f["recovery_p99_s"] is not None
    for kind in ("serve-kill", "serve-stop", "bao-seal", "disk-full"):
        assert by_kind[kind]["ops_failed_during"] > 0, f"{kind} did not bite: {by_kind[kind]}"

    ops = results["operations"]
    for name in ("register", "renew", "release", "release-write", "seal", "export", "final-export"):
        assert ops[name]["succeeded"] > 0, (name, ops.get(name))
    checker = inv["checker"]
    assert checker["received"] > 50 and checker["grants"] >= checker["received"]
    assert checker["decrypts"] == checker["matched_decrypts"] + len(checker["orphan_decrypts"])
    assert results["key_scan"]["keys"] >= 2 and results["key_scan"]["files"] > 10
    assert results["key_scan"]["hits"] == []
    nodes = results["nodes"]  # SNP nodes with simulated GPUs registered and received keys
    assert nodes["gpu_nodes_attested"] >= 1 and nodes["gpu_node_releases"] >= 1, nodes
    cores = results["core_dumps"]
    assert by_kind["serve-abort"]["injected"] >= 1
    # where core_pattern writes in the cwd the soak lets its children dump core and scans what they leave;
    # serve refuses core dumps itself (its memory holds released keys): SIGABRT leaves none
    assert cores["core_files"] == 0 and cores["files"] == [], cores
    for name in ("serve", "openbao", "driver"):
        assert results["processes"][name]["samples"] > 10
    assert (out / "summary.md").read_text().startswith("# Soak run")
    assert (out / "throughput.svg").read_text().startswith("<svg")
