"""Collateral paths against the real server process (its own server: these tests revoke the simulated
AMD ASK in its store). The server runs with a collateral signer (``--collateral-signers``): the Admin
import takes only bundles signed by it; a CRL imported with the CLI into the store the running server
uses is enforced from the next registration, without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from e2e.node_client import NodeClient, rpc_error
from e2e.operators import StandinRealm
from e2e.world import ROOT, SNP_MEASUREMENT, TDX_MRTD, Bao, ServerProcess, prepare

from attestation import collateral_bundle
from attestation.collateral import CollateralItem, ItemKind
from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp, simulated_tdx
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2

SIGNER = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, bao: Bao, realm: StandinRealm
) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("collateral-e2e")
    signer_pem = workdir / "collateral-signer.pub.pem"
    signer_pem.write_bytes(
        SIGNER.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    inputs = prepare(workdir, pki, datetime.now(UTC))
    proc = ServerProcess(workdir, inputs, bao, realm, extra=["--collateral-signers", str(signer_pem)])
    proc.start()
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, "sovereign serve did not stop cleanly:\n" + "\n".join(proc.output[-20:])


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(server.admin_channel("alice"))


def register(server: ServerProcess, pki: SimulatedPki, tee: str, name: str) -> tuple[int, list[str]]:
    provider = (
        simulated_snp(pki, measurement=SNP_MEASUREMENT) if tee == "snp" else simulated_tdx(pki, mrtd=TDX_MRTD)
    )
    result = NodeClient(server.channel(), provider, name=name).register()
    return result.state, [r.code for r in result.reasons]


def revoking_crl(pki: SimulatedPki) -> bytes:
    """The Milan ARK's CRL listing the ASK that signs every simulated SNP node's VCEK."""
    ask_der, _ = pki.mint_snp_report(measurement=SNP_MEASUREMENT).chain_der
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ask = x509.load_der_x509_certificate(ask_der)
    return pki.amd_crl("Milan", revoked_serials=[ask.serial_number], this_update=pki.now)


def sovereign(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_admin_import_follows_the_configured_signer(
    server: ServerProcess, admin: admin_pb2_grpc.AdminStub, pki: SimulatedPki
) -> None:
    crl = revoking_crl(pki)
    status, reason, detail = rpc_error(admin.ImportCollateral, admin_pb2.ImportCollateralRequest(bundle=crl))
    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "COLLATERAL_BUNDLE_INVALID")
    assert "sovereign collateral" in detail.hint
    other = collateral_bundle.create(
        [(CollateralItem(ItemKind.CRL, crl), "kds-crl.der")], Ed25519PrivateKey.generate(), pki.now
    )
    status, reason, _ = rpc_error(admin.ImportCollateral, admin_pb2.ImportCollateralRequest(bundle=other))
    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "COLLATERAL_BUNDLE_INVALID")
    # nothing of either reached the store: SNP nodes still attest
    assert register(server, pki, "snp", "signer-snp-1") == (common_pb2.NODE_STATE_ATTESTED, [])
    newer = pki.pck_crl(this_update=pki.now)
    signed = collateral_bundle.create([(CollateralItem(ItemKind.CRL, newer), "pck-crl.der")], SIGNER, pki.now)
    reply = admin.ImportCollateral(admin_pb2.ImportCollateralRequest(bundle=signed))
    assert reply.added == 1 and [i.kind for i in reply.items] == ["crl"]
    assert register(server, pki, "tdx", "signer-tdx-1") == (common_pb2.NODE_STATE_ATTESTED, [])


def test_a_crl_imported_with_the_cli_is_enforced_without_a_restart(
    server: ServerProcess, pki: SimulatedPki, tmp_path: Path
) -> None:
    assert register(server, pki, "snp", "reload-snp-1") == (common_pb2.NODE_STATE_ATTESTED, [])
    crl = tmp_path / "kds-crl.der"
    crl.write_bytes(revoking_crl(pki))
    done = sovereign(
        "collateral", "import", str(crl),
        "--store", str(server.inputs.collateral), "--trust", str(server.inputs.trust), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["kind"] for row in json.loads(done.stdout)["added"]] == ["crl"]
    state, codes = register(server, pki, "snp", "reload-snp-2")
    assert state == common_pb2.NODE_STATE_REJECTED and "SNP_CERT_REVOKED" in codes, codes
    assert register(server, pki, "tdx", "reload-tdx") == (common_pb2.NODE_STATE_ATTESTED, [])
    assert server.proc.poll() is None  # the same process, never restarted
