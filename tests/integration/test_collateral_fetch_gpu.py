"""``sovereign collateral fetch --gpu`` against NVIDIA-shaped RIM service and OCSP responder answers served
on loopback (recorded from the simulated NVIDIA PKI): the RIMs and OCSP answers it gathers go into a signed
bundle, which imports into a fresh store (through the real CLI too), shows its windows in ``collateral
status`` and feeds ``verify_gpu`` through the store's lookup. Nothing here leaves 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509 import load_der_x509_certificate, ocsp

from attestation import collateral_bundle, gpu
from attestation.errors import AttestationError, Code, CollateralError
from attestation.gpu_collateral import rim_ids
from attestation.simulate.gpu import GpuSimulator, MintedGpu
from attestation.store import CollateralStore
from kms.collateral_fetch import Fetcher, RetryPolicy, UrllibClient
from kms.collateral_fetch.gpu import GpuFetcher, GpuPlan
from sovereign.cli._common import dump_trust

NOW = datetime.now(UTC).replace(microsecond=0)
NONCE = hashlib.sha256(b"fetch-gpu").digest()


@dataclass
class NvidiaServices:
    rims: dict[str, bytes] = field(default_factory=dict)  # RIM id -> JSON answer
    ocsp: dict[int, bytes] = field(default_factory=dict)  # serial -> DER OCSP response
    hits: list[str] = field(default_factory=list)


def _ocsp_by_serial(minted: MintedGpu) -> dict[int, bytes]:
    return {ocsp.load_der_ocsp_response(r).serial_number: r for r in minted.ocsp_responses}


@pytest.fixture(scope="module")
def sim() -> GpuSimulator:
    return GpuSimulator(NOW)


@pytest.fixture(scope="module")
def minted(sim: GpuSimulator) -> MintedGpu:
    return sim.mint(nonce=NONCE, seed="fetched-gpu")


@pytest.fixture
def nvidia(minted: MintedGpu) -> Iterator[tuple[str, NvidiaServices]]:
    services = NvidiaServices()
    ids = rim_ids(minted.evidence)
    for rim_id, rim in ((ids.driver_id, minted.driver_rim), (ids.vbios_id, minted.vbios_rim)):
        answer = {
            "id": rim_id,
            "rim": base64.b64encode(rim).decode(),
            "sha256": hashlib.sha256(rim).hexdigest(),
        }
        services.rims[rim_id] = json.dumps(answer).encode()
    services.ocsp = _ocsp_by_serial(minted)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            services.hits.append(self.path)
            answer = services.rims.get(self.path.removeprefix("/v1/rim/"))
            self._answer(200 if answer else 404, answer or b'{"error":"not found"}', "application/json")

        def do_POST(self) -> None:
            services.hits.append(f"POST {self.path}")
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["Content-Type"] == "application/ocsp-request"
            request = ocsp.load_der_ocsp_request(body)
            answer = services.ocsp.get(request.serial_number)
            if answer is None:  # what a responder says about a certificate it does not know
                answer = ocsp.OCSPResponseBuilder.build_unsuccessful(
                    ocsp.OCSPResponseStatus.UNAUTHORIZED
                ).public_bytes(serialization.Encoding.DER)
            self._answer(200, answer, "application/ocsp-response")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", services
    httpd.shutdown()
    httpd.server_close()


def _fetcher(base: str, cache: Path | None = None) -> GpuFetcher:
    inner = Fetcher(UrllibClient(), cache=cache, policy=RetryPolicy(attempts=2, base_delay=0), sleep=lambda _: None,
                    clock=lambda: NOW)  # fmt: skip
    return GpuFetcher(inner, rim_base=base, ocsp_base=base)


def _evidence_json(m: MintedGpu) -> bytes:
    pem = b"".join(
        load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in m.evidence.chain
    )
    entry = {"arch": "HOPPER", "certificate": base64.b64encode(pem).decode(),
             "evidence": base64.b64encode(m.evidence.report).decode(), "nonce": m.nonce.hex()}  # fmt: skip
    return json.dumps([entry]).encode()


def test_fetch_bundle_import_and_verify(
    nvidia: tuple[str, NvidiaServices], sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    base, services = nvidia
    items = _fetcher(base, tmp_path / "cache").fetch(GpuPlan(evidence=[minted.evidence]))
    kinds = [i.kind.value for i, _ in items]
    assert kinds.count("gpu-rim") == 2 and kinds.count("certificate") == 4
    # 3 device CAs below the root (BROM, provisioner, identity) + 3 per RIM signer chain, one shared L3/CA
    assert kinds.count("ocsp-response") == 3 + 3 + 1
    key = Ed25519PrivateKey.generate()
    data = collateral_bundle.create(items, key, NOW)
    store = CollateralStore(tmp_path / "store")
    report = store.import_bundle(data, signers=[key.public_key()], trust=sim.trust_store(), now=NOW)
    assert not report.warnings
    inputs = store.load().gpu.inputs_for(minted.evidence)
    claims = gpu.verify_gpu(
        minted.evidence, nonce=NONCE, trust=sim.trust_store(), now=NOW, collateral=inputs.collateral,
        driver_rim=inputs.driver_rim, vbios_rim=inputs.vbios_rim,
    )  # fmt: skip
    assert claims.measurement_result == "success" and claims.details["revocation"]["status"] == "good"
    with pytest.raises(AttestationError) as err:  # a week later the recorded OCSP answers are stale
        gpu.verify_gpu(
            minted.evidence, nonce=NONCE, trust=sim.trust_store(), now=NOW + timedelta(days=8),
            collateral=inputs.collateral, driver_rim=inputs.driver_rim, vbios_rim=inputs.vbios_rim,
        )  # fmt: skip
    assert err.value.code is Code.GPU_COLLATERAL_EXPIRED

    hits = len(services.hits)
    _fetcher(base, tmp_path / "cache").fetch(GpuPlan(evidence=[minted.evidence]))
    assert len(services.hits) == hits  # RIMs and OCSP answers (per request body) came from the cache


def test_missing_rim_and_altered_answers_fail_with_codes(
    nvidia: tuple[str, NvidiaServices], minted: MintedGpu
) -> None:
    base, services = nvidia
    with pytest.raises(CollateralError) as err:
        _fetcher(base).fetch(GpuPlan(rim_ids=["NV_GPU_DRIVER_GH100_999.99"]))
    assert err.value.code is Code.COLLATERAL_NOT_FOUND
    ids = rim_ids(minted.evidence)
    answer = json.loads(services.rims[ids.driver_id])
    services.rims[ids.driver_id] = json.dumps({**answer, "sha256": "00" * 32}).encode()
    with pytest.raises(CollateralError) as err:
        _fetcher(base).fetch(GpuPlan(evidence=[minted.evidence]))
    assert err.value.code is Code.COLLATERAL_FETCH_FAILED and "sha256" in err.value.message
    services.rims[ids.driver_id] = json.dumps(answer).encode()
    services.ocsp.clear()  # the responder knows none of the certificates
    with pytest.raises(CollateralError) as err:
        _fetcher(base).fetch(GpuPlan(evidence=[minted.evidence]))
    assert err.value.code is Code.COLLATERAL_FETCH_FAILED
    with pytest.raises(CollateralError) as err:
        _fetcher(base).fetch(GpuPlan(rim_ids=["../../etc/passwd"]))
    assert err.value.code is Code.COLLATERAL_MALFORMED


def _sovereign(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sovereign", *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_cli_fetches_imports_and_shows_gpu_windows(
    nvidia: tuple[str, NvidiaServices], sim: GpuSimulator, minted: MintedGpu, tmp_path: Path
) -> None:
    base, _ = nvidia
    evidence = tmp_path / "gpus.json"
    evidence.write_bytes(_evidence_json(minted))
    key = tmp_path / "signer.key"
    key.write_text(bytes(range(32)).hex())
    pub = tmp_path / "signer.pub.pem"
    pub.write_bytes(collateral_bundle.signing_key_from_seed_hex(key.read_text()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    trust = tmp_path / "trust.json"
    trust.write_text(dump_trust(sim.trust_store()))
    bundle = tmp_path / "gpu.bundle"
    fetched = _sovereign("collateral", "fetch", "--gpu", evidence, "--rim-base", base, "--ocsp-base", base,
                         "--key", key, "--out", bundle, "--cache", tmp_path / "cache", "--json")  # fmt: skip
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert json.loads(fetched.stdout)["items"] == 2 + 4 + 7
    store = tmp_path / "store"
    imported = _sovereign("collateral", "import", "--bundle", bundle, "--signer-key", pub, "--store", store,
                          "--trust", trust, "--json")  # fmt: skip
    assert imported.returncode == 0, imported.stdout + imported.stderr
    status = _sovereign("collateral", "status", "--store", store, "--json")
    rows = json.loads(status.stdout)["items"]
    gpu_rows = [r for r in rows if r["kind"] in ("gpu-rim", "ocsp-response")]
    assert len(gpu_rows) == 9 and all(r["valid_from"] < r["expires"] for r in gpu_rows)
    # OCSP answers live a week: "expires soon" at once (under 7 days left); the RIMs' signers for years
    assert {r["state"] for r in gpu_rows if r["kind"] == "ocsp-response"} == {"expires soon"}
    assert {r["state"] for r in gpu_rows if r["kind"] == "gpu-rim"} == {"ok"}
    again = _sovereign("collateral", "import", "--bundle", bundle, "--signer-key", pub, "--store", store,
                       "--trust", trust, "--json")  # fmt: skip
    assert again.returncode == 0 and json.loads(again.stdout)["added"] == []
