"""The Attestation use case with GPU evidence, over the fakes of tests/node_fakes.py and the real GPU
verifier over simulated GPUs: GPU claims stored beside CPU claims and listed in the reply's ClaimsSummary and
the registration's audit entry, a server without a GPU verifier fails
closed, a GPU refusal is recorded with the (authenticated) CPU claims, out-of-limit lists are malformed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from node_fakes import FakeNodes, FakeNonces, FakePolicies, FakeVerifier, evidence, keys_of

from attestation.simulate.gpu import GpuSimulator
from attestation.simulate.gpu_persist import gpu_collateral
from attestation.store import CollateralStore
from enclave.identity import NodeIdentity
from enclave.providers.gpu import SimulatedGpus
from kms.audit.entry import Decision, Entry, Kind, format_time
from kms.clock import ManualClock
from kms.errors import Code, KmsError
from kms.server.codec import claims_out
from kms.usecases.attest import Attestation, AttestationOutcome, Outcome, RegisterInput, registration_draft
from kms.usecases.gpu_appraisal import GpuVerifier
from kms.usecases.verifier import EvidenceVerifier
from proto.contract import GpuEvidenceItem, gpu_commitment, gpu_nonce

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def sim() -> GpuSimulator:
    return GpuSimulator(NOW)


def use_case(gpus: GpuVerifier | None) -> tuple[Attestation, FakeNonces, FakeNodes]:
    nonces, nodes, policies = FakeNonces(), FakeNodes(), FakePolicies()
    nodes.active_version = lambda: policies.version
    attestation = Attestation(
        nodes, nonces=nonces, verifier=FakeVerifier(), policies=policies, clock=ManualClock(NOW), gpus=gpus
    )
    return attestation, nonces, nodes


def register(
    attestation: Attestation,
    nonces: FakeNonces,
    sim: GpuSimulator,
    *,
    fault: str | None = None,
    count: int = 2,
) -> AttestationOutcome:
    identity = NodeIdentity.generate()
    nonce = nonces.issue("gpu-node").nonce
    expected = gpu_nonce(nonce, identity.kem_suite, identity.kem_public, identity.signing_public)
    items = tuple(
        GpuEvidenceItem(g.report, g.chain, g.declared_architecture or "")
        for g in SimulatedGpus(sim, count, seed="uc", fault=fault).collect(expected)
    )
    report = evidence(identity.report_data(nonce, gpu_commitment=gpu_commitment(items)))
    report = dataclasses.replace(report, gpus=items)
    return attestation.register(RegisterInput(nonce, report, keys_of(identity), "gpu-node", ("trainers",)))


@pytest.fixture(scope="module")
def verifier(sim: GpuSimulator, tmp_path_factory: pytest.TempPathFactory) -> GpuVerifier:
    root: Path = tmp_path_factory.mktemp("collateral")
    CollateralStore(root).import_items(gpu_collateral(sim).items(), trust=sim.trust_store(), now=NOW)
    store = EvidenceVerifier(sim.trust_store(), root)
    return GpuVerifier(sim.trust_store(), lambda: store.collateral().gpu)


def test_gpu_claims_are_stored_beside_the_cpu_claims(sim: GpuSimulator, verifier: GpuVerifier) -> None:
    attestation, nonces, nodes = use_case(verifier)
    result = register(attestation, nonces, sim)
    assert result.outcome is Outcome.ATTESTED
    assert result.claims is not None and len(result.claims.details["gpus"]) == 2
    stored = nodes.get(result.node_id)
    assert (
        stored is not None and [g["architecture"] for g in stored.claims["details"]["gpus"]] == ["HOPPER"] * 2
    )


def test_without_a_gpu_verifier_gpu_evidence_fails_closed(sim: GpuSimulator) -> None:
    attestation, nonces, _ = use_case(None)
    result = register(attestation, nonces, sim)
    assert result.outcome is Outcome.REJECTED and [r.code for r in result.reasons] == [
        "GPU_COLLATERAL_MISSING"
    ]
    assert result.authenticated  # the CPU evidence bound the nonce: the refusal is recorded with its claims


def test_a_gpu_refusal_carries_the_cpu_claims(sim: GpuSimulator, verifier: GpuVerifier) -> None:
    attestation, nonces, _ = use_case(verifier)
    result = register(attestation, nonces, sim, fault="vbios-mismatch")
    assert [r.code for r in result.reasons] == ["GPU_MEASUREMENT_MISMATCH"] and result.authenticated


def test_out_of_limit_gpu_lists_are_malformed_requests(sim: GpuSimulator, verifier: GpuVerifier) -> None:
    attestation, nonces, _ = use_case(verifier)
    identity = NodeIdentity.generate()
    nonce = nonces.issue("gpu-node").nonce
    report = dataclasses.replace(
        evidence(identity.report_data(nonce)), gpus=(GpuEvidenceItem(b"r", (), "HOPPER"),)
    )
    with pytest.raises(KmsError) as info:
        attestation.register(RegisterInput(nonce, report, keys_of(identity), "gpu-node", ()))
    assert info.value.code is Code.REQUEST_INVALID


def test_the_reply_and_the_audit_entry_list_the_gpus(sim: GpuSimulator, verifier: GpuVerifier) -> None:
    attestation, nonces, _ = use_case(verifier)
    result = register(attestation, nonces, sim)
    assert result.claims is not None
    stored = result.claims.details["gpus"]
    summary = claims_out(result.claims)
    assert [
        (g.architecture, g.driver_version, g.vbios_version, g.ueid, g.measurement_result)
        for g in summary.gpus
    ] == [
        (s["architecture"], s["driver_version"], s["vbios_version"], s["ueid"], s["measurement_result"])
        for s in stored
    ]
    assert len(summary.gpus) == 2 and len({g.ueid for g in summary.gpus}) == 2
    assert all(g.simulated and g.cc_mode == "on" and g.revocation == "good" for g in summary.gpus)
    fields = registration_draft(result, "gpu-node", "SNP", None).fields
    assert fields["gpu_count"] == 2
    assert fields["gpu_ueids"] == tuple(s["ueid"] for s in stored)
    assert fields["gpu_architectures"] == ("HOPPER", "HOPPER")
    assert fields["gpu_driver_versions"] == tuple(s["driver_version"] for s in stored)
    assert fields["gpu_vbios_versions"] == tuple(s["vbios_version"] for s in stored)
    assert fields["gpu_measurement_results"] == ("success", "success")
    as_ledger = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}  # as audit_append does
    entry = Entry(1, format_time(NOW), Kind.REGISTRATION, "node:x", Decision.GRANT, (), as_ledger)
    assert Entry.decode(entry.encode()).fields["gpu_ueids"] == fields["gpu_ueids"]  # in the entry grammar


def test_a_node_without_gpus_has_no_gpu_fields(verifier: GpuVerifier) -> None:
    attestation, nonces, _ = use_case(verifier)
    identity = NodeIdentity.generate()
    nonce = nonces.issue("cpu-node").nonce
    report = evidence(identity.report_data(nonce))
    result = attestation.register(RegisterInput(nonce, report, keys_of(identity), "cpu-node", ("trainers",)))
    assert result.outcome is Outcome.ATTESTED and result.claims is not None
    assert not claims_out(result.claims).gpus
    assert not [k for k in registration_draft(result, "n", "SNP", None).fields if k.startswith("gpu")]
