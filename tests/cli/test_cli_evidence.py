"""The evidence and collateral commands, driven as a user would: the real CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def sovereign(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_simulate_then_verify_round_trip(tmp_path: Path, tee: str) -> None:
    out = tmp_path / tee
    made = sovereign("evidence", "simulate", "--tee", tee, "--out", out, "--measurement", "ab" * 48, "--json")
    assert made.returncode == 0, made.stderr
    ok = sovereign(
        "evidence",
        "verify",
        out / "evidence.bin",
        "--collateral",
        out / "collateral",
        "--trust",
        out / "trust.json",
        "--json",
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    claims = as_json(ok)["claims"]
    assert claims["tee"] == tee
    assert claims["measurement"] == "ab" * 48
    assert claims["simulated"] is True
    # The same evidence under the production profile: refused, with the reason.
    refused = sovereign(
        "evidence", "verify", out / "evidence.bin", "--collateral", out / "collateral", "--json"
    )
    assert refused.returncode == 1
    assert as_json(refused)["error"]["code"] == "TEST_ROOT_IN_PRODUCTION"


def test_fault_knob_reaches_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    assert (
        sovereign("evidence", "simulate", "--tee", "snp", "--out", out, "--fault", "BAD_SIGNATURE").returncode
        == 0
    )
    proc = sovereign(
        "evidence",
        "verify",
        out / "evidence.bin",
        "--collateral",
        out / "collateral",
        "--trust",
        out / "trust.json",
    )
    assert proc.returncode == 1
    assert "SNP_SIGNATURE_INVALID" in proc.stderr
    assert "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_real_vector_through_imported_collateral(tmp_path: Path, vectors: Path) -> None:
    store = tmp_path / "store"
    imported = sovereign(
        "collateral",
        "import",
        "--store",
        store,
        "--json",
        vectors / "snp/genoa-v5-oak.vcek.der",
        vectors / "snp/certs/kds-cert-chain-vcek-genoa.pem",
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert len(as_json(imported)["added"]) == 3  # VCEK, ASK, ARK
    again = sovereign("collateral", "import", "--store", store, "--json", vectors / "snp/certs/ark-genoa.pem")
    assert as_json(again)["unchanged"] and not as_json(again)["added"]
    report = vectors / "snp/genoa-v5-oak.report.bin"
    # Revocation fails closed: without AMD's CRL the report is refused, and --no-revocation-check (the
    # opt-out for archived evidence) verifies it with the claims saying so.
    no_crl = sovereign(
        "evidence", "verify", report, "--collateral", store, "--at", "2026-09-01T00:00:00Z", "--json"
    )
    assert no_crl.returncode == 1 and as_json(no_crl)["error"]["code"] == "SNP_CRL_MISSING"
    archived = sovereign(
        "evidence", "verify", report, "--collateral", store, "--at", "2026-01-01T00:00:00Z",
        "--no-revocation-check", "--json",
    )  # fmt: skip
    assert archived.returncode == 0, archived.stdout
    assert as_json(archived)["claims"]["revocation_checked"] is False
    text = sovereign("evidence", "verify", report, "--collateral", store, "--at", "2026-01-01T00:00:00Z",
                     "--no-revocation-check")  # fmt: skip
    assert "NOT CHECKED" in text.stdout
    crl = sovereign(
        "collateral", "import", "--store", store, "--json", vectors / "snp/certs/kds-crl-genoa.der"
    )
    assert crl.returncode == 0 and len(as_json(crl)["added"]) == 1, crl.stdout + crl.stderr
    ok = sovereign(
        "evidence", "verify", report, "--collateral", store, "--at", "2026-09-01T00:00:00Z", "--json"
    )
    assert ok.returncode == 0, ok.stdout
    assert as_json(ok)["claims"]["product"] == "Genoa"
    assert as_json(ok)["claims"]["revocation_checked"] is True
    stale = sovereign(
        "evidence", "verify", report, "--collateral", store, "--at", "2026-01-01T00:00:00Z", "--json"
    )
    assert as_json(stale)["error"]["code"] == "SNP_CRL_EXPIRED"
    expired = sovereign(
        "evidence", "verify", report, "--collateral", store, "--at", "2040-01-01T00:00:00Z", "--json"
    )
    assert as_json(expired)["error"]["code"] == "SNP_CERT_EXPIRED"
    # Another chip's report: nothing in the store endorses it.
    other = sovereign(
        "evidence",
        "verify",
        vectors / "snp/milan-v3-oak.report.bin",
        "--collateral",
        store,
        "--at",
        "2026-01-01T00:00:00Z",
        "--json",
    )
    assert other.returncode == 1
    assert as_json(other)["error"]["code"] in {"SNP_ENDORSEMENT_NOT_FOUND", "SNP_CHAIN_INVALID"}


def test_tdx_bundle_import_decides_tcb_status(tmp_path: Path, vectors: Path) -> None:
    store = tmp_path / "store"
    assert (
        sovereign(
            "collateral", "import", "--store", store, vectors / "tdx/v4-dcapqvl.collateral.json"
        ).returncode
        == 0
    )
    ok = sovereign(
        "evidence",
        "verify",
        vectors / "tdx/v4-dcapqvl.quote.bin",
        "--collateral",
        store,
        "--at",
        "2025-07-01T00:00:00Z",
        "--json",
    )
    assert ok.returncode == 0, ok.stdout
    assert as_json(ok)["claims"]["tcb_status"] == "UpToDate"


def test_import_is_all_or_nothing_and_refuses_unpinned_roots(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    assert sovereign("evidence", "simulate", "--tee", "snp", "--out", sim).returncode == 0
    certs = sorted((sim / "collateral" / "objects").iterdir())
    store = tmp_path / "store"
    # Without the simulation trust profile, the simulator's ARK is not pinned: nothing may be stored.
    proc = sovereign("collateral", "import", "--store", store, "--json", *certs)
    assert proc.returncode == 1
    assert as_json(proc)["error"]["code"] == "TEST_ROOT_IN_PRODUCTION"
    assert not (store / "index.json").exists()


def test_tampered_store_object_is_detected(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    assert sovereign("evidence", "simulate", "--tee", "snp", "--out", sim).returncode == 0
    victim = next((sim / "collateral" / "objects").iterdir())
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    proc = sovereign(
        "evidence",
        "verify",
        sim / "evidence.bin",
        "--collateral",
        sim / "collateral",
        "--trust",
        sim / "trust.json",
        "--json",
    )
    assert proc.returncode == 1
    assert as_json(proc)["error"]["code"] == "COLLATERAL_STORE_ERROR"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x02\x00\x00\x00" + bytes(100),
        bytes(5000),
        b"{not json",
        b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    ],
)
def test_bad_input_gets_a_code_not_a_traceback(tmp_path: Path, payload: bytes) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(payload)
    for args in (
        ("evidence", "verify", bad, "--json"),
        ("collateral", "import", "--store", tmp_path / "s", bad, "--json"),
    ):
        proc = sovereign(*args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert as_json(proc)["error"]["code"]
