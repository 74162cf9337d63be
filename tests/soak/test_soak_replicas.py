"""A short soak of the replicas topology (two ``sovereign serve`` on PostgreSQL over a three-member OpenBao
raft cluster, replica B in its own network namespace) with every replicas fault kind at least once: SIGKILL
and SIGSTOP of a replica, the active OpenBao member sealed and killed, PostgreSQL restarted, B's paths to
PostgreSQL and to OpenBao cut, a server's clock stepped forward and back. Each fault is injected and
recovered from, the clock steps reach the ledger, and the invariant checker, the resource bounds and the
key-material scan find nothing.

About two and a half minutes with its start-up, so not part of ``./dev test``: it runs with
``./dev soak --selftest`` (which sets SOVEREIGN_SOAK_REPLICAS=1). Needs root (network namespaces)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sovereign.soak.faults import REPLICA_FAULTS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("SOVEREIGN_SOAK_REPLICAS") != "1",
    reason="the replicas soak runs with ./dev soak --selftest (about 2.5 minutes)",
)


def test_a_short_replicas_soak_with_every_fault_kind_ends_with_no_violation(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sovereign.soak",
            "--topology",
            "replicas",
            "--minutes",
            "1.5",
            "--seed",
            "22",
            "--rate",
            "6",
            "--hold",
            "4",
            "--interval",
            "8",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert (out / "results.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    inv = results["invariants"]
    assert inv["violations_total"] == 0, json.dumps(inv["violations"], indent=1)[:4000]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    by_kind = results["faults_by_kind"]
    assert sorted(by_kind) == sorted(str(k) for k in REPLICA_FAULTS)
    for kind, f in by_kind.items():
        assert f["injected"] >= 1 and f["recovered"] == f["injected"], (kind, f)
    # an OpenBao leader kill, a seal or a stall may be absorbed (calls wait for a new active member within
    # --failover-budget, or for SIGCONT within the client deadline): only these must fail operations
    for kind in ("serve-kill", "pg-restart", "partition-pg"):
        assert by_kind[kind]["ops_failed_during"] > 0, f"{kind} did not bite: {by_kind[kind]}"

    checker = inv["checker"]
    assert checker["received"] > 50 and checker["grants"] >= checker["received"]
    assert checker["decrypts"] == checker["matched_decrypts"] + len(checker["orphan_decrypts"])
    assert checker["time_regressions"] >= 1, "the clock steps never reached the ledger"
    assert results["key_scan"]["hits"] == [] and results["key_scan"]["keys"] >= 2
    for name in ("serve-a", "serve-b", "openbao-bao-1", "postgres"):
        assert results["processes"][name]["samples"] > 10, name
    ops = results["operations"]
    for name in ("register", "renew", "release", "seal", "export", "final-export"):
        assert ops[name]["succeeded"] > 0, (name, ops.get(name))
