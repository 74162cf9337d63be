"""NVIDIA GPU evidence: report verification against raw P-384 verify, RIM signatures against ``xmlsec1``.

Run: ``.venv/bin/python -m bench.bench_gpu [--quick]``. Rows:

1. GPU report verification with the device chain cached and the RIM comparison included: nvtrust's real
   sample driver and VBIOS RIMs (signatures verified to the real NVIDIA RIM root) against a *faithful*
   simulated H100 report, i.e. one the simulator signs with its own device chain but whose measurements
   are the RIMs' golden values (the shared real report, hopper-nvtrust-550, is for another driver and
   VBIOS, so its comparison would end in a mismatch); at a time inside the RIM chains' window; no OCSP
   recorded for these RIMs, so revocation is off in this row; against one raw ECDSA P-384 verify of the
   same report signature. Target 0.8x.
2. The same on simulated evidence with OCSP collateral for both chains (revocation included, the OCSP
   signatures verified once per collateral set as in the server). Target 0.8x.
3. RIM signature verification (XML signature + chain to the pinned root + parse, nothing cached) against
   ``xmlsec1 --verify --trusted-pem ROOT`` on the same files (the three shared RIMs with valid signatures).
   Process start is excluded by measurement: xmlsec1 verifies K+1 copies in one process and one copy in
   another, and the per-file figure is the difference divided by K. Target 1.0x.

Every figure is CPU time (this process's, or xmlsec1's from ``getrusage(RUSAGE_CHILDREN)``), best of
interleaved rounds: the machine is shared, and wall time would also count other processes' turns.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation import gpu
from attestation.errors import Code
from attestation.simulate.gpu import GpuSimulator
from attestation.trust import NVIDIA_RIM_ROOT_SHA256, PRODUCTION, TrustStore

HERE = Path(__file__).resolve().parent
INSIDE_RIM_WINDOW = datetime(2024, 6, 1, tzinfo=UTC)
VALID_RIMS = ("driver-nvtrust-sample", "vbios-96005E0001-nvtrust-sample", "vbios-96005E0001-mismatch")
REPORT_TARGET = 0.8
RIM_TARGET = 1.0
VBIOS_545 = bytes.fromhex("005e009601000000")  # 96.00.5E.00.01: the VBIOS of the sample RIMs


def vectors_dir() -> Path:
    env = os.environ.get("SOVEREIGN_VECTORS")
    return Path(env) if env else HERE.parents[1] / "shared" / "vectors"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU second of this process: on a shared machine, CPU time is what the work costs; wall
    time would also count other processes' turns."""
    fn()
    count, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(5):
            fn()
        count += 5
    return count / elapsed


def interleaved(
    ours: Callable[[], object], baseline: Callable[[], object], seconds: float
) -> tuple[float, float]:
    """Many short alternating rounds, best of each side: on a shared machine the best round is the one
    least disturbed by other processes, and both sides get the same number of chances."""
    rounds = max(7, int(seconds / 0.05))
    ours_rate = base_rate = 0.0
    for _ in range(rounds):
        base_rate = max(base_rate, rate(baseline, seconds / rounds))
        ours_rate = max(ours_rate, rate(ours, seconds / rounds))
    return ours_rate, base_rate


def _raw_verify(evidence: gpu.GpuEvidence) -> Callable[[], None]:
    report = gpu.parse_report(evidence.report)
    chain = gpu.chain.verify_chain(
        evidence.chain, check_root=lambda _der: None, now=INSIDE_RIM_WINDOW,
        code=Code.GPU_CHAIN_UNTRUSTED, expired_code=Code.GPU_CERT_EXPIRED, what="GPU",
    )  # fmt: skip
    key = chain.leaf_key()
    signature = encode_dss_signature(
        int.from_bytes(report.signature[:48], "big"), int.from_bytes(report.signature[48:], "big")
    )
    algorithm = ec.ECDSA(hashes.SHA384())
    return lambda: key.verify(signature, report.signed, algorithm)


def _row(work: str, ours: float, base: float, target: float, unit: str, **extra: Any) -> dict[str, Any]:
    ratio = ours / base
    return {
        "work": work, "ours": round(ours, 1), "baseline": round(base, 1), "unit": unit,
        "ratio": round(ratio, 3), "target": target, "met": ratio >= target, **extra,
    }  # fmt: skip


def _faithful_report(driver: gpu.Rim, vbios: gpu.Rim) -> tuple[gpu.GpuEvidence, TrustStore]:
    """A simulator-signed H100 report whose measurements are the real RIMs' golden values (the shared real
    report, hopper-nvtrust-550, is for another driver and VBIOS than the shared RIMs), and a trust store
    pinning the simulator's device root and NVIDIA's real RIM root."""
    golden = {i: m.alternatives[0] for rim in (driver, vbios) for i, m in rim.measurements.items()}
    sim = GpuSimulator(INSIDE_RIM_WINDOW)
    minted = sim.mint(
        nonce=bytes(range(32)), driver_version=driver.version, vbios=VBIOS_545, measurements=golden
    )
    trust = TrustStore(
        name="simulated-device+nvidia-rims", amd_arks={}, intel_roots=frozenset(), allow_simulated=True,
        nvidia_device_roots=sim.trust_store().nvidia_device_roots, nvidia_rim_roots=NVIDIA_RIM_ROOT_SHA256,
    )  # fmt: skip
    return minted.evidence, trust


def bench_real_rims(vectors: Path, seconds: float) -> dict[str, Any]:
    driver = (vectors / "gpu/rims/driver-nvtrust-sample.swidtag").read_bytes()
    vbios = (vectors / "gpu/rims/vbios-96005E0001-nvtrust-sample.swidtag").read_bytes()
    evidence, trust = _faithful_report(
        *(gpu.verify_rim(r, trust=PRODUCTION, now=INSIDE_RIM_WINDOW) for r in (driver, vbios))
    )
    nonce = gpu.parse_report(evidence.report).request.nonce
    cache = gpu.GpuVerifierCache()
    options = gpu.GpuVerifyOptions(require_revocation=False)

    def ours() -> object:
        claims = gpu.verify_gpu(
            evidence, nonce=nonce, trust=trust, now=INSIDE_RIM_WINDOW, collateral=None,
            driver_rim=driver, vbios_rim=vbios, options=options, cache=cache,
        )  # fmt: skip
        assert claims.measurement_result == "success"
        return claims

    ours_rate, base_rate = interleaved(ours, _raw_verify(evidence), seconds)
    return _row(
        "GPU report verification against real RIMs (chain cached, RIM comparison included)", ours_rate,
        base_rate, REPORT_TARGET, "verifications/s",
        vector="simulated H100 report carrying the golden values of nvtrust's sample driver and VBIOS RIMs",
        baseline_is="one raw ECDSA P-384 verify of the report signature",
        note=(
            "faithful simulated report (simulator device key and chain) + the real sample RIMs under the "
            "real NVIDIA RIM root, every compared index matching; no real report in the shared vectors "
            "matches these RIMs. No recorded OCSP for the real RIM chains: revocation off in this row"
        ),
    )  # fmt: skip


def bench_simulated_report(seconds: float) -> dict[str, Any]:
    now = datetime(2026, 12, 3, tzinfo=UTC)
    sim = GpuSimulator(now)
    minted = sim.mint(nonce=bytes(range(32)))
    collateral = minted.collateral()
    trust = sim.trust_store()
    cache = gpu.GpuVerifierCache()

    def ours() -> object:
        return gpu.verify_gpu(
            minted.evidence, nonce=minted.nonce, trust=trust, now=now, collateral=collateral,
            driver_rim=minted.driver_rim, vbios_rim=minted.vbios_rim, cache=cache,
        )  # fmt: skip

    report = gpu.parse_report(minted.evidence.report)
    chain = gpu.chain.verify_chain(
        minted.evidence.chain, check_root=trust.check_nvidia_device_root, now=now,
        code=Code.GPU_CHAIN_UNTRUSTED, expired_code=Code.GPU_CERT_EXPIRED, what="GPU",
    )  # fmt: skip
    key = chain.leaf_key()
    sig = encode_dss_signature(
        int.from_bytes(report.signature[:48], "big"), int.from_bytes(report.signature[48:], "big")
    )
    ours_rate, base_rate = interleaved(
        ours, lambda: key.verify(sig, report.signed, ec.ECDSA(hashes.SHA384())), seconds
    )
    return _row(
        "GPU report verification with OCSP revocation (simulated H100, caches warm)", ours_rate, base_rate,
        REPORT_TARGET, "verifications/s", baseline_is="one raw ECDSA P-384 verify of the report signature",
    )  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _xmlsec1_seconds(binary: str, root: Path, files: list[Path]) -> float:
    """CPU seconds (user + system) xmlsec1 spent verifying ``files`` in one process."""
    command = [binary, "--verify", "--trusted-pem", str(root), "--verification-time", "2024-06-01 00:00:00"]
    start = _children_cpu()
    done = subprocess.run([*command, *map(str, files)], capture_output=True, check=False, timeout=600)
    elapsed = _children_cpu() - start
    if done.returncode != 0:
        raise RuntimeError(f"xmlsec1 refused a valid RIM: {done.stderr[-300:]!r}")
    return elapsed


def bench_rim_signatures(vectors: Path, seconds: float, copies: int) -> dict[str, Any]:
    files = [vectors / f"gpu/rims/{name}.swidtag" for name in VALID_RIMS]
    datas = [f.read_bytes() for f in files]

    def ours() -> object:
        return [gpu.verify_rim(d, trust=PRODUCTION, now=INSIDE_RIM_WINDOW) for d in datas]

    binary = shutil.which("xmlsec1")
    ours_rate = 0.0
    rounds = max(7, int(seconds / 0.1))
    for _ in range(rounds):
        ours_rate = max(ours_rate, rate(ours, seconds / rounds) * len(datas))
    if binary is None:
        row = _row("RIM signature verification vs xmlsec1", ours_rate, 1.0, RIM_TARGET, "RIM files/s")
        row.update(
            baseline=None, ratio=None, met=False, note="xmlsec1 not installed (apt-get install xmlsec1)"
        )
        return row
    root = vectors / "gpu/certs/nvidia-rim-root.pem"
    per_file = float("inf")
    for _ in range(5):  # best of five, each one the difference of a long and a one-file run
        one = min(_xmlsec1_seconds(binary, root, [f]) for f in files)
        many = _xmlsec1_seconds(binary, root, files + files * copies)
        per_file = min(per_file, max(many - one, 1e-9) / (len(files) * copies + len(files) - 1))
    return _row(
        "RIM signature verification (signature + chain to the pinned root, uncached) vs xmlsec1 --verify",
        ours_rate, 1.0 / per_file, RIM_TARGET, "RIM files/s",
        baseline_is="xmlsec1 1.2 (OpenSSL) per file, CPU time, process start excluded: (t[K+1 files] - t[1 file]) / K",
        files=list(VALID_RIMS),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 1 s per side instead of 5 s")
    args = parser.parse_args()
    vectors = vectors_dir()
    if not (vectors / "MANIFEST.json").is_file():
        raise SystemExit(f"vectors not found at {vectors}; set SOVEREIGN_VECTORS")
    tiny = os.environ.get("SOVEREIGN_BENCH_TINY") == "1"
    seconds = 0.2 if tiny else 1.0 if args.quick else 5.0
    copies = 2 if tiny else 10 if args.quick else 30
    with tempfile.TemporaryDirectory():
        print(json.dumps(bench_real_rims(vectors, seconds)))
        print(json.dumps(bench_simulated_report(seconds)))
        print(json.dumps(bench_rim_signatures(vectors, seconds, copies)))


if __name__ == "__main__":
    main()
