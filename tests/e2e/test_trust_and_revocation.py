"""Against a real ``sovereign serve``: SEV-SNP revocation fails closed, and ``simulated`` follows the root
the chain ended in, not the trust file (security review, findings 3 and 6).

The server here is fed what the review used: a collateral store from which the AMD CRL was dropped, and
a trust file that pins the simulator's roots while calling itself "production" with allow_simulated
false, under the demo policy with ``simulated_evidence = "deny"``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e.node_client import NodeClient
from e2e.operators import StandinRealm
from e2e.world import SNP_MEASUREMENT, TDX_MRTD, Bao, Inputs, ServerProcess, prepare, server_policy
from vectorlib import vectors_dir

from attestation.collateral import ItemKind
from attestation.simulate import SimulatedPki
from attestation.store import CollateralStore
from enclave.providers.simulated import simulated_snp, simulated_tdx
from proto.sovereign.v1 import attestation_pb2, common_pb2
from sovereign.cli._common import dump_trust


def _without_amd_crls(inputs: Inputs, pki: SimulatedPki, workdir: Path, now: datetime) -> Path:
    """A copy of the site's collateral store without the ARKs' CRLs (the review's reproduction)."""
    kept = [
        (item, "copy")
        for item in CollateralStore(inputs.collateral).items()
        if not (item.kind is ItemKind.CRL and item.describe().startswith("CRL by ARK-"))
    ]
    assert len(kept) < len(CollateralStore(inputs.collateral).items())  # an AMD CRL was dropped
    store = workdir / "collateral-no-amd-crl"
    CollateralStore(store).import_items(kept, trust=pki.trust_store(), now=now)
    return store


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki) -> Inputs:
    workdir = tmp_path_factory.mktemp("e2e-trust")
    now = datetime.now(UTC)
    inputs = prepare(workdir, pki, now)
    disguised = workdir / "disguised-trust.json"
    disguised.write_text(dump_trust(replace(pki.trust_store(), name="production", allow_simulated=False)))
    policy = workdir / "deny-simulated.toml"
    text = server_policy().replace('simulated_evidence = "allow"', 'simulated_evidence = "deny"')
    assert 'simulated_evidence = "deny"' in text
    policy.write_text(text)
    return Inputs(disguised, _without_amd_crls(inputs, pki, workdir, now), policy)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, site: Inputs, bao: Bao, realm: StandinRealm
) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("e2e-trust-server"), site, bao, realm).start()
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, "\n".join(proc.output[-20:])


def test_snp_evidence_is_refused_when_the_store_has_no_amd_crl(
    server: ServerProcess, pki: SimulatedPki
) -> None:
    node = NodeClient(server.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="no-crl-snp")
    result = node.register(requested_groups=["trainers"])
    assert result.state == common_pb2.NODE_STATE_REJECTED
    assert [r.code for r in result.reasons] == ["SNP_CRL_MISSING"]


def test_simulator_evidence_is_simulated_whatever_the_trust_file_says(
    server: ServerProcess, pki: SimulatedPki
) -> None:
    node = NodeClient(server.channel(), simulated_tdx(pki, mrtd=TDX_MRTD), name="disguised-tdx")
    result = node.register(requested_groups=["trainers"])
    assert result.state == common_pb2.NODE_STATE_REJECTED
    assert result.claims.simulated is True
    assert [r.code for r in result.reasons] == ["POLICY_SIMULATED_EVIDENCE"]


def test_serve_refuses_a_non_production_trust_file_without_dev_trust(
    tmp_path: Path, site: Inputs, bao: Bao, realm: StandinRealm
) -> None:
    command = [arg for arg in ServerProcess(tmp_path, site, bao, realm).command() if arg != "--dev-trust"]
    assert "--trust" in command
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "SERVER_CONFIG_INVALID" in done.stdout + done.stderr
    assert "--dev-trust" in done.stdout + done.stderr


def test_a_pck_certificate_with_a_duplicated_extension_is_a_coded_rejection(
    server: ServerProcess, pki: SimulatedPki
) -> None:
    """Finding 7, against the server: the real dcap-qvl quote with bit 0 of byte 4548 flipped (a PCK
    certificate then carries basicConstraints twice) was answered INTERNAL with a traceback."""
    vectors = vectors_dir()
    if vectors is None:
        pytest.skip("needs the shared vectors")
    quote = bytearray((vectors / "tdx/v4-dcapqvl.quote.bin").read_bytes())
    quote[4548] ^= 0x01
    node = NodeClient(server.channel(), simulated_tdx(pki, mrtd=TDX_MRTD), name="dup-ext-tdx")
    evidence = attestation_pb2.Evidence(tee=common_pb2.TEE_TDX, report=bytes(quote))
    result = node.attestation.Register(node.register_request(evidence=evidence))
    assert result.state == common_pb2.NODE_STATE_REJECTED
    assert [r.code for r in result.reasons] == ["TDX_PCK_CHAIN_INVALID"]
