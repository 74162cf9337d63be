"""``sovereign collateral fetch`` against KDS/PCS-shaped responses served on loopback (recorded from a
simulated PKI): rate limiting (429 + Retry-After), server errors, caching, and the signed bundle that
results, which then imports into a fresh store. Nothing here leaves 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestation import collateral_bundle
from attestation.errors import Code, CollateralError
from attestation.simulate import SimulatedPki
from attestation.simulate.intel import pem_chain
from attestation.store import CollateralStore
from kms.collateral_fetch import Fetcher, FetchPlan, RetryPolicy, UrllibClient, parse_snp_target

NOW = datetime.now(UTC).replace(microsecond=0)
FMSPC = "90c06f000000"


class Recorded:
    """Path -> (status, headers, body) queues: each request pops the next answer (the last one sticks)."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self.hits: list[str] = []

    def add(self, path: str, *answers: tuple[int, dict[str, str], bytes]) -> None:
        self.routes[path] = list(answers)


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return SimulatedPki.generate(NOW)


@pytest.fixture
def server(pki: SimulatedPki) -> Iterator[tuple[str, Recorded]]:
    recorded = Recorded()
    minted = pki.mint_snp_report(product="Genoa")
    ca = pki.amd_ca("Genoa")
    tcb = minted.tcb
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    recorded.add(f"/vcek/v1/Genoa/{minted.chip_id.hex()}?{query}", (200, {}, minted.leaf_der))
    recorded.add("/vcek/v1/Genoa/cert_chain", (200, {}, pem_chain([minted.chain_der[0], ca.ark_der])))
    recorded.add("/vcek/v1/Genoa/crl", (200, {}, pki.amd_crl("Genoa")))
    intel = pki.intel_ca()
    signing_chain = {
        "tcb-info-issuer-chain": quote(pem_chain([intel.tcb_signing_der, intel.root_der]).decode())
    }
    recorded.add(
        f"/tdx/certification/v4/tcb?fmspc={FMSPC}",
        (429, {"Retry-After": "7"}, b""),
        (503, {}, b"busy"),
        (200, signing_chain, pki.tdx_tcb_info(fmspc=bytes.fromhex(FMSPC))),
    )
    qe_chain = {"sgx-enclave-identity-issuer-chain": signing_chain["tcb-info-issuer-chain"]}
    recorded.add("/tdx/certification/v4/qe/identity", (200, qe_chain, pki.tdx_qe_identity()))
    crl_chain = {"sgx-pck-crl-issuer-chain": quote(pem_chain([intel.platform_der, intel.root_der]).decode())}
    recorded.add("/sgx/certification/v4/pckcrl?ca=platform&encoding=der", (200, crl_chain, pki.pck_crl()))
    recorded.add("/IntelSGXRootCA.der", (200, {}, pki.root_crl()))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            recorded.hits.append(self.path)
            answers = recorded.routes.get(self.path)
            status, headers, body = (
                answers.pop(0) if answers and len(answers) > 1 else (answers or [(404, {}, b"")])[0]
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", recorded
    httpd.shutdown()
    httpd.server_close()


def plan(pki: SimulatedPki) -> FetchPlan:
    minted = pki.mint_snp_report(product="Genoa")
    t = minted.tcb
    target = f"Genoa:{minted.chip_id.hex()}:bl={t.bootloader},tee={t.tee},snp={t.snp},ucode={t.microcode}"
    return FetchPlan(snp=[parse_snp_target(target)], fmspcs=[FMSPC])


def test_fetch_backs_off_then_bundles_and_imports(
    server: tuple[str, Recorded], pki: SimulatedPki, tmp_path: Path
) -> None:
    base, recorded = server
    sleeps: list[float] = []
    fetcher = Fetcher(UrllibClient(), cache=tmp_path / "cache", amd_base=base, intel_base=base,
                      policy=RetryPolicy(attempts=4, base_delay=0.5), sleep=sleeps.append, clock=lambda: NOW)  # fmt: skip
    items = fetcher.fetch(plan(pki))
    assert sleeps == [7.0, 1.0]  # Retry-After honoured, then exponential back-off after the 503
    key = Ed25519PrivateKey.generate()
    data = collateral_bundle.create(items, key, NOW)
    report = CollateralStore(tmp_path / "store").import_bundle(
        data, signers=[key.public_key()], trust=pki.trust_store(), now=NOW
    )
    assert {r["kind"] for r in report.added} == {"certificate", "crl", "tdx-tcb-info", "tdx-qe-identity"}
    assert report.earliest_next_update

    hits = len(recorded.hits)
    Fetcher(UrllibClient(), cache=tmp_path / "cache", amd_base=base, intel_base=base,
            sleep=sleeps.append, clock=lambda: NOW).fetch(plan(pki))  # fmt: skip
    assert len(recorded.hits) == hits  # everything came from the cache


def test_persistent_rate_limit_and_unknown_chip_fail_with_codes(
    server: tuple[str, Recorded], pki: SimulatedPki, tmp_path: Path
) -> None:
    base, recorded = server
    recorded.add(f"/tdx/certification/v4/tcb?fmspc={FMSPC}", (429, {"Retry-After": "600"}, b""))
    sleeps: list[float] = []
    fetcher = Fetcher(UrllibClient(), amd_base=base, intel_base=base, sleep=sleeps.append,
                      policy=RetryPolicy(attempts=3, max_delay=30), clock=lambda: NOW)  # fmt: skip
    with pytest.raises(CollateralError) as err:
        fetcher.fetch(FetchPlan(fmspcs=[FMSPC]))
    assert err.value.code is Code.COLLATERAL_FETCH_FAILED and sleeps == [30, 30]
    with pytest.raises(CollateralError) as err:
        fetcher.fetch(FetchPlan(snp=[parse_snp_target("Genoa:" + "ab" * 64 + ":bl=1,tee=0,snp=1,ucode=1")]))
    assert err.value.code is Code.COLLATERAL_NOT_FOUND
