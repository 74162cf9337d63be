"""``sovereign demo --keep DIR``: the kept folder is owner-only, holds no plaintext of the demo's data, and
holds what an auditor needs to verify later, offline: the ledger export, the audit public key, the
checkpoint seen before exporting and OpenBao's audit log (real OpenBao, real control plane)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

from sovereign.demo import training


def _sovereign(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_kept_folder_is_private_plaintext_free_and_verifiable_later(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    demo = _sovereign("demo", "--only", "lifecycle", "--json", "--keep", kept, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    steps = json.loads(demo.stdout)["lifecycle"]
    sealed_step = next(s for s in steps if s["step"].startswith("seal dataset"))
    dataset_sha256_prefix = sealed_step["detail"].split()[1].rstrip(".")
    assert len(dataset_sha256_prefix) == 16
    assert "audit verify" in demo.stderr and str(kept / "audit-export.jsonl") in demo.stderr

    # Owner-only: every folder 0700, every file 0600 (nothing readable by group or others).
    entries = [kept, *kept.rglob("*")]
    assert len(entries) > 10
    for path in entries:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        expected = 0o700 if stat.S_ISDIR(mode) else 0o600
        assert stat.S_IMODE(mode) == expected, f"{path}: {oct(stat.S_IMODE(mode))}"

    # No plaintext: not the dataset (by its SHA-256, which the demo printed), not the training shard's
    # bytes, no plaintext model output file.
    shard, _ = training.shard_bytes()
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:  # each sample's .npy bytes: header + random floats
        probes = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".npy")]  # type: ignore[union-attr]
    assert len(probes) == training.SAMPLES
    for path in kept.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        content = path.read_bytes()
        assert not hashlib.sha256(content).hexdigest().startswith(dataset_sha256_prefix), path
        assert not any(p in content for p in probes), f"{path} holds training shard plaintext"
    assert not (kept / "train.bin").exists() and not (kept / "weights.bin").exists()

    # What an auditor verifies later, offline, with only the kept files.
    export, key, checkpoint = (
        kept / "audit-export.jsonl",
        kept / "audit-public-key.json",
        kept / "audit-checkpoint.json",
    )
    bao_log = kept / "bao" / "audit.log"
    for needed in (export, key, checkpoint, bao_log):
        assert needed.is_file() and needed.stat().st_size > 0, needed
    verify = _sovereign("audit", "verify", export, "--public-key", key, "--checkpoint", checkpoint, "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] is True and report["fresh"] is True, report
    reconcile = _sovereign("audit", "reconcile", "--export", export, "--bao-log", bao_log, "--json")
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert json.loads(reconcile.stdout)["decrypts"] >= 1

    # Tampering with the kept export is caught with the kept key (the check is not vacuous).
    lines = export.read_bytes().splitlines(keepends=True)
    victim = next(i for i, line in enumerate(lines) if b"trainer-snp" in line)
    lines[victim] = lines[victim].replace(b"trainer-snp", b"trainer-SNP", 1)
    export.write_bytes(b"".join(lines))
    tampered = _sovereign("audit", "verify", export, "--public-key", key, "--checkpoint", checkpoint)
    assert tampered.returncode == 1 and "AUDIT_" in tampered.stderr + tampered.stdout
