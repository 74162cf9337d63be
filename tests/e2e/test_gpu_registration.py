"""GPU evidence at registration, against the real ``sovereign serve`` (own server: simulated NVIDIA roots
pinned, GPU collateral imported into its collateral store, a policy with ``[appraisal.gpu]``).

A node with two simulated H100s registers into the GPU-attested group and gets the key only that group
may have; another machine's GPU evidence list cannot be reused (its CPU report would have to commit to
the list, and then the list answers the wrong GPU nonce); a VBIOS that does not match its RIM is refused
with the verifier's code; a node without GPUs registers exactly as before; the GPU-attested image without
GPUs is refused by the policy."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from e2e.operators import StandinRealm
from e2e.world import SNP_MEASUREMENT, Bao, ServerProcess, prepare_inputs, server_policy

from attestation.gpu.evidence import GpuEvidence
from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from attestation.simulate.gpu_persist import dump_gpu_simulator
from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient, NodeState, Registration
from enclave.identity import NodeIdentity
from enclave.providers.gpu import GpuEvidenceSource, NoGpu, SimulatedGpus
from enclave.providers.simulated import simulated_snp
from kms.oidc.cache import CachedToken, save_token
from proto.contract import GpuEvidenceItem, gpu_commitment
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, common_pb2
from sovereign.cli import main
from sovereign.demo.training import write_pki

GPU_MEASUREMENT = b"\x55" * 48  # the image only GPU-attested nodes may run
GPU_KEY = "gpu-models/weights"


def gpu_policy() -> str:
    """The e2e policy (the demo's, with its [appraisal.gpu]) narrowed to Hopper, plus a GPU-attested group
    and a release rule only it satisfies."""
    demo_gpu = 'architectures = ["HOPPER", "BLACKWELL"]\nmin_driver = "535.0"\n'
    text = server_policy()
    assert text.count(demo_gpu) == 1
    return str(text).replace(demo_gpu, 'architectures = ["HOPPER"]\nmin_driver = "550.0"\n') + (
        f'\n[[appraisal.snp.groups]]\nname = "gpu-trainers"\nmeasurements = ["{GPU_MEASUREMENT.hex()}"]\n'
        '\n[[appraisal.gpu.groups]]\nname = "gpu-trainers"\nmin_count = 2\n'
        '\n[[release.rules]]\nname = "gpu-weights"\ngroups = ["gpu-trainers"]\nkeys = ["gpu-models/*"]\n'
        'purposes = ["read"]\nrequire_gpu_attested = true\n'
    )


@pytest.fixture(scope="module")
def gpus() -> GpuSimulator:
    return GpuSimulator(datetime.now(UTC))


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    pki: SimulatedPki,
    bao: Bao,
    realm: StandinRealm,
    gpus: GpuSimulator,
) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("e2e-gpu")
    inputs = prepare_inputs(workdir, pki, datetime.now(UTC), gpu_policy(), gpus=gpus)
    proc = ServerProcess(workdir, inputs, bao, realm).start()
    try:
        with proc.admin_channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for name in (GPU_KEY, "dataset/train"):
                kind = common_pb2.KEY_KIND_MODEL if name == GPU_KEY else common_pb2.KEY_KIND_DATASET
                admin.CreateKey(admin_pb2.CreateKeyRequest(name=name, kind=kind))
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, "sovereign serve did not stop cleanly on SIGTERM:\n" + "\n".join(proc.output[-20:])


class Recording:
    """A GPU source that remembers what it handed out (what a relaying attacker would have seen)."""

    def __init__(self, inner: GpuEvidenceSource) -> None:
        self.inner = inner
        self.last: list[GpuEvidence] = []

    def collect(self, nonce: bytes) -> list[GpuEvidence]:
        self.last = self.inner.collect(nonce)
        return self.last


@pytest.fixture
def clients(server: ServerProcess) -> Iterator[list[ControlPlaneClient]]:
    made: list[ControlPlaneClient] = []
    yield made
    for client in made:
        client.close()


def node(
    server: ServerProcess, clients: list[ControlPlaneClient], name: str, gpus: GpuEvidenceSource,
    pki: SimulatedPki, measurement: bytes = GPU_MEASUREMENT, groups: tuple[str, ...] = (),
) -> NodeAgent:  # fmt: skip
    assert server.ca is not None
    client = ControlPlaneClient(f"127.0.0.1:{server.port}", ca_pem=server.ca.read_bytes(), timeout=15)
    clients.append(client)
    provider = simulated_snp(pki, measurement=measurement)
    return NodeAgent(client, provider, NodeIdentity.generate(), node_name=name, groups=groups, gpus=gpus)


def stored_claims(server: ServerProcess, node_id: str) -> dict[str, object]:
    with sqlite3.connect(server.db) as db:
        row = db.execute("SELECT claims_json FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
    assert row, f"node {node_id} is not stored"
    claims: dict[str, object] = json.loads(row[0])
    return claims


def codes(result: Registration) -> list[str]:
    return [r.code for r in result.reasons]


def test_two_simulated_h100s_register_and_get_the_gpu_only_key(
    server: ServerProcess, pki: SimulatedPki, gpus: GpuSimulator, clients: list[ControlPlaneClient]
) -> None:
    agent = node(server, clients, "gpu-node", SimulatedGpus(gpus, 2, seed="gpu-node"), pki)
    result = agent.register()
    assert result.state is NodeState.ATTESTED, codes(result)
    assert result.groups == ("gpu-trainers",)
    assert len(agent.fetch_key(GPU_KEY)) == 32
    renewed = agent.renew()  # renewal carries fresh GPU evidence over the new transcript
    assert renewed.state is NodeState.ATTESTED, codes(renewed)
    stored = stored_claims(server, agent.node_id)["details"]
    assert isinstance(stored, dict)
    assert [g["ueid"][:13] for g in stored["gpus"]] == ["NVIDIA:GH100:", "NVIDIA:GH100:"]
    assert {g["measurement_result"] for g in stored["gpus"]} == {"success"}


def test_the_gpus_show_in_the_reply_the_audit_entry_and_admin_nodes_show(
    server: ServerProcess, pki: SimulatedPki, gpus: GpuSimulator, clients: list[ControlPlaneClient],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    agent = node(server, clients, "shown-gpus", SimulatedGpus(gpus, 2, seed="shown"), pki)
    result = agent.register()
    assert result.state is NodeState.ATTESTED, codes(result)
    stored = stored_claims(server, agent.node_id)["details"]
    assert isinstance(stored, dict)
    wanted = [
        (g["architecture"], g["driver_version"], g["vbios_version"], g["ueid"], g["measurement_result"])
        for g in stored["gpus"]
    ]
    assert len(wanted) == 2 and len({w[3] for w in wanted}) == 2
    # the Register reply's ClaimsSummary, as the node reads it
    assert [
        (g.architecture, g.driver_version, g.vbios_version, g.ueid, g.measurement_result) for g in result.gpus
    ] == wanted
    # the registration's audit entry
    with server.admin_channel("carol") as channel:
        page = audit_pb2_grpc.AuditStub(channel).ListEntries(
            audit_pb2.ListEntriesRequest(node_id=agent.node_id)
        )
    (entry,) = [e for e in page.entries if e.sequence == result.audit_sequence]
    fields = json.loads(entry.canonical)["fields"]
    assert fields["gpu_count"] == 2
    assert list(
        zip(
            fields["gpu_architectures"], fields["gpu_driver_versions"], fields["gpu_vbios_versions"],
            fields["gpu_ueids"], fields["gpu_measurement_results"], strict=True,
        )
    ) == wanted  # fmt: skip
    # `sovereign admin nodes show`
    assert server.ca is not None
    now = datetime.now(UTC)
    token = CachedToken("https://keycloak.invalid", "sovereign", "sovereign",
                        server.operators().token("dave"), now + timedelta(minutes=5), now)  # fmt: skip
    save_token(token, tmp_path / "token.json")
    assert main(["admin", "nodes", "show", agent.node_id, "--server", f"127.0.0.1:{server.admin_port}",
                 "--ca", str(server.ca), "--token-cache", str(tmp_path / "token.json"), "--json"]) == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)["claims"]["gpus"]
    assert [
        (g["architecture"], g["driver_version"], g["vbios_version"], g["ueid"], g["measurement_result"])
        for g in shown
    ] == wanted


def test_relayed_gpu_evidence_is_refused(
    server: ServerProcess, pki: SimulatedPki, gpus: GpuSimulator, clients: list[ControlPlaneClient]
) -> None:
    victim_gpus = Recording(SimulatedGpus(gpus, 2, seed="victim"))
    victim = node(server, clients, "victim", victim_gpus, pki)
    assert victim.register().state is NodeState.ATTESTED
    relayed = tuple(
        GpuEvidenceItem(g.report, g.chain, g.declared_architecture or "") for g in victim_gpus.last
    )

    attacker = node(server, clients, "relay", NoGpu(), pki)
    # (1) an honest CPU image commits to the GPUs it really has (none): the relayed list is not what it bound
    challenge = attacker.client.challenge("relay")
    evidence = attacker.provider.get_evidence(attacker.identity.report_data(challenge.nonce))
    result = attacker.client.register(
        nonce=challenge.nonce, evidence=evidence, identity=attacker.identity, node_name="relay", gpus=relayed
    )
    assert result.state is NodeState.REJECTED and codes(result) == ["BINDING_MISMATCH"]
    # (2) a CPU image that lies and commits to the relayed list: the GPUs answered another transcript's nonce
    challenge = attacker.client.challenge("relay")
    lying = attacker.identity.report_data(challenge.nonce, gpu_commitment=gpu_commitment(relayed))
    result = attacker.client.register(
        nonce=challenge.nonce, evidence=attacker.provider.get_evidence(lying), identity=attacker.identity,
        node_name="relay", gpus=relayed,
    )  # fmt: skip
    assert result.state is NodeState.REJECTED and codes(result) == ["GPU_NONCE_MISMATCH"]


def test_vbios_that_does_not_match_its_rim_is_refused(
    server: ServerProcess, pki: SimulatedPki, gpus: GpuSimulator, clients: list[ControlPlaneClient]
) -> None:
    source = SimulatedGpus(gpus, 2, seed="bad-vbios", fault="vbios-mismatch")
    result = node(server, clients, "bad-vbios", source, pki).register()
    assert result.state is NodeState.REJECTED
    assert codes(result) == ["GPU_MEASUREMENT_MISMATCH"]


def test_a_node_without_gpus_registers_as_before(
    server: ServerProcess, pki: SimulatedPki, clients: list[ControlPlaneClient]
) -> None:
    agent = node(server, clients, "cpu-only", NoGpu(), pki, measurement=SNP_MEASUREMENT, groups=("trainers",))
    result = agent.register()
    assert result.state is NodeState.ATTESTED and result.groups == ("trainers",)
    assert len(agent.fetch_key("dataset/train")) == 32
    details = stored_claims(server, agent.node_id)["details"]
    assert isinstance(details, dict) and "gpus" not in details  # its claims are as before GPUs existed


def test_the_gpu_attested_image_without_gpus_is_refused_by_policy(
    server: ServerProcess, pki: SimulatedPki, gpus: GpuSimulator, clients: list[ControlPlaneClient]
) -> None:
    result = node(server, clients, "no-gpus", NoGpu(), pki).register()
    assert result.state is NodeState.REJECTED and codes(result) == ["POLICY_GPU_COUNT"]
    one = node(server, clients, "one-gpu", SimulatedGpus(gpus, 1, seed=os.urandom(4).hex()), pki).register()
    assert one.state is NodeState.REJECTED and codes(one) == ["POLICY_GPU_COUNT"]


@pytest.mark.parametrize(("fault", "expected"), [(None, 0), ("vbios-mismatch", 1)])
def test_node_register_cli_with_simulated_gpus(
    server: ServerProcess, pki: SimulatedPki, gpus: GpuSimulator, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], fault: str | None, expected: int,
) -> None:  # fmt: skip
    """`sovereign node register --provider simulated-snp --sim-pki DIR --sim-gpus 2 [--sim-gpu-fault F]`:
    the node process loads the saved CPU and GPU simulator PKIs the control plane trusts."""
    assert server.ca is not None
    sim_pki = write_pki(pki, tmp_path / "sim-pki")
    (sim_pki / "gpu-pki.json").write_bytes(dump_gpu_simulator(gpus))
    argv = [
        "node", "register", "--server", f"127.0.0.1:{server.port}", "--ca", str(server.ca),
        "--provider", "simulated-snp", "--sim-pki", str(sim_pki), "--sim-measurement", GPU_MEASUREMENT.hex(),
        "--sim-gpus", "2", "--node-name", f"cli-gpu-{expected}", "--json",
    ]  # fmt: skip
    if fault:
        argv += ["--sim-gpu-fault", fault]
    assert main(argv) == expected
    captured = capsys.readouterr()
    if fault is None:
        assert json.loads(captured.out)["registration"]["groups"] == ["gpu-trainers"]
    else:
        assert "GPU_MEASUREMENT_MISMATCH" in captured.out + captured.err
