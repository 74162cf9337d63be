"""``sovereign evidence simulate --save-pki DIR``: the saved PKI is private, and its trust.json pins the
roots that signed the evidence minted in the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from attestation.simulate.gpu_persist import load_gpu_simulator, pin_gpu_roots
from attestation.simulate.persist import load_pki
from attestation.store import CollateralStore
from sovereign.cli._common import dump_trust

ROOT = Path(__file__).resolve().parents[2]


def test_save_pki_writes_a_private_pki_and_its_trust_profile(tmp_path: Path) -> None:
    out, saved = tmp_path / "ev", tmp_path / "pki"
    done = subprocess.run(
        [sys.executable, "-m", "sovereign", "evidence", "simulate", "--tee", "tdx", "--out", str(out),
         "--save-pki", str(saved), "--json"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["saved_pki"]["pki"] == str(saved / "pki.json")
    assert (saved / "pki.json").stat().st_mode & 0o777 == 0o600
    assert (saved / "gpu-pki.json").stat().st_mode & 0o777 == 0o600
    pki = load_pki((saved / "pki.json").read_bytes())
    gpus = load_gpu_simulator((saved / "gpu-pki.json").read_bytes())
    saved_trust = json.loads((saved / "trust.json").read_text())
    assert saved_trust == json.loads(dump_trust(pin_gpu_roots(pki.trust_store(), gpus)))
    cpu_roots = {k: v for k, v in saved_trust.items() if not k.startswith("nvidia_")}
    assert cpu_roots == json.loads((out / "trust.json").read_text())  # the same roots
    store = CollateralStore(saved / "collateral")
    assert not (saved / "collateral" / "gpu").exists()  # GPU collateral is in the store, not beside it
    gpu = store.load().gpu
    assert len(gpu.rims) == 2  # driver and VBIOS RIMs, imported as items
    assert len(gpu.revocation.crls) == 2 and gpu.revocation.responses  # provisioner CRLs, OCSP answers
    verify = subprocess.run(
        [sys.executable, "-m", "sovereign", "evidence", "verify", str(out / "evidence.bin"), "--collateral",
         str(saved / "collateral"), "--trust", str(saved / "trust.json")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and verify.stdout.startswith("VALID TDX"), verify.stdout + verify.stderr
