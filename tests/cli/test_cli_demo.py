"""``sovereign demo`` (what ``./dev demo`` runs): real OpenBao, real control plane, simulated nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_lifecycle_and_every_outcome_is_expected(tmp_path: Path, vectors: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sovereign", "demo", "--json", "--keep", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    steps = {(s["actor"], s["step"]): s for s in out["lifecycle"]}
    assert all(s["as_expected"] for s in out["lifecycle"])
    # the refusals the issue names, each with its code
    assert steps[("debug guest", "register")]["outcome"] == "POLICY_DEBUG_FORBIDDEN"
    assert steps[("wrong measurement", "register")]["outcome"] == "POLICY_MEASUREMENT_NOT_ALLOWED"
    assert steps[("below-minimum TCB", "register")]["outcome"] == "POLICY_TCB_BELOW_MINIMUM"
    # issue 17: an SNP node with two simulated H100s registers; one whose VBIOS is not its RIM's is refused
    assert steps[("SNP node + 2 H100s", "register with GPUs")]["outcome"] == "ATTESTED"
    assert steps[("SNP node + 2 H100s", "register with GPUs")]["detail"].startswith("2 GPUs verified")
    assert steps[("H100 VBIOS not its RIM", "register with GPUs")]["outcome"] == "GPU_MEASUREMENT_MISMATCH"
    assert steps[("TDX node", "fetch key after revocation")]["outcome"] == "RELEASE_NODE_NOT_ATTESTED"
    for tee in ("SNP", "TDX"):
        assert steps[(f"{tee} node", "fetch key + stream-decrypt dataset")]["outcome"] == "ok"
    for step in (
        "export the ledger (Audit RPC)",
        "verify the export offline",
        "reconcile OpenBao's audit log with the ledger",
    ):
        assert steps[("auditor carol", step)]["outcome"] == "ok"
    assert steps[("operator alice", "sign in (Keycloak realm, password grant)")]["outcome"] == "ok"
    # the training checkpoint's provenance statement verifies offline; a tampered copy is refused
    assert steps[("auditor carol", "verify the statement offline (public keys only)")]["outcome"] == "ok"
    assert steps[("auditor carol", "verify a tampered copy (a dataset hidden)")]["outcome"] == (
        "PROVENANCE_PREDICATE_MISMATCH"
    )
    training = [s for s in out["lifecycle"] if s["step"].startswith("train.py under `node exec`")]
    assert [s["outcome"] for s in training] == ["ok"]  # checked by the owner against the expected weights
    assert all(r["as_expected"] for r in out["evidence"])
    assert {"simulated SNP", "simulated TDX", "real SNP", "real TDX"} <= {
        r["source"] for r in out["evidence"]
    }
    # the demo's control plane really recorded the grants it made (nothing for the refused requests)
    import sqlite3

    db = sqlite3.connect(tmp_path / "demo" / "sovereign.db")
    (grants,) = db.execute("SELECT COUNT(*) FROM grants").fetchone()
    assert grants == 5  # dataset reads by two nodes and train.py, model writes by a node and train.py
