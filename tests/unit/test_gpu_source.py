"""The node's GPU evidence seam: "no GPU" is an empty list, simulated GPUs answer the nonce they are given
with stable device identities, survive a save/load of their PKI, and each fault knob makes the control
plane's GPU verifier (kms/usecases/gpu_appraisal.py, over the collateral store) refuse with its code;
without GPU collateral in the store the verifier fails closed, and an import applies without a restart. Node settings (flags, environment, node.toml) pick the GPU source and refuse GPU options that cannot apply."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.collateral import ItemKind
from attestation.errors import AttestationError, Code
from attestation.gpu import parse_report
from attestation.simulate.gpu import GpuSimulator
from attestation.simulate.gpu_persist import (
    GpuPkiFileError,
    dump_gpu_simulator,
    gpu_collateral,
    load_gpu_simulator,
)
from attestation.store import CollateralStore
from enclave.config import NodeConfig, build_gpu_source, load_node_toml
from enclave.errors import NodeCode, NodeError
from enclave.providers.gpu import REPORT_FAULTS, GpuEvidenceSource, NoGpu, SimulatedGpus
from enclave.providers.gpu_nvml import NvmlGpuSource
from kms.usecases.gpu_appraisal import GpuVerifier
from kms.usecases.verifier import EvidenceVerifier
from proto.contract import GpuEvidenceItem

NOW = datetime.now(UTC)  # the simulator's PKI is anchored here; the verifier is passed the same time
EXPECTED = {
    "vbios-mismatch": Code.GPU_MEASUREMENT_MISMATCH,
    "malformed": Code.GPU_REPORT_MALFORMED,
    "bad-signature": Code.GPU_SIGNATURE_INVALID,
    "foreign-chain": Code.GPU_CHAIN_UNTRUSTED,
    "expired-cert": Code.GPU_CERT_EXPIRED,
    "fwid-mismatch": Code.GPU_FWID_MISMATCH,
    "nonce-mismatch": Code.GPU_NONCE_MISMATCH,
}


@pytest.fixture(scope="module")
def sim() -> GpuSimulator:
    return GpuSimulator(NOW)


@pytest.fixture(scope="module")
def verifier(sim: GpuSimulator, tmp_path_factory: pytest.TempPathFactory) -> GpuVerifier:
    root = tmp_path_factory.mktemp("gpu-collateral")
    CollateralStore(root).import_items(gpu_collateral(sim).items(), trust=sim.trust_store(), now=NOW)
    return _over_store(sim, root)


def _over_store(sim: GpuSimulator, root: Path) -> GpuVerifier:
    """The verifier as the server wires it: the store's GPU items, re-read when an import changes it."""
    store = EvidenceVerifier(sim.trust_store(), root)
    return GpuVerifier(sim.trust_store(), lambda: store.collateral().gpu)


def _items(source: GpuEvidenceSource, nonce: bytes) -> list[GpuEvidenceItem]:
    return [GpuEvidenceItem(g.report, g.chain, g.declared_architecture or "") for g in source.collect(nonce)]


def test_no_gpu_is_an_empty_list() -> None:
    assert isinstance(NoGpu(), GpuEvidenceSource)
    assert NoGpu().collect(bytes(32)) == []
    with pytest.raises(NodeError) as info:
        NoGpu().collect(b"short")
    assert info.value.code is NodeCode.REPORT_DATA_INVALID


def test_simulated_gpus_answer_the_nonce_with_stable_identities(
    sim: GpuSimulator, verifier: GpuVerifier
) -> None:
    source = SimulatedGpus(sim, 2, seed="node-a")
    assert isinstance(source, GpuEvidenceSource)
    nonce = os.urandom(32)
    items = _items(source, nonce)
    assert [parse_report(i.report).request.nonce for i in items] == [nonce, nonce]
    first = verifier.verify(items, nonce=nonce, now=NOW)
    again = verifier.verify(_items(source, nonce), nonce=nonce, now=NOW)
    assert [e["ueid"] for e in first] == [e["ueid"] for e in again] and len({e["ueid"] for e in first}) == 2
    entry = first[0]
    assert (entry["architecture"], entry["measurement_result"], entry["rim_versions_match"]) == (
        "HOPPER", "success", True,
    )  # fmt: skip
    assert (entry["cc_mode"], entry["revocation"], entry["simulated"]) == ("on", "good", True)
    with pytest.raises(AttestationError) as info:  # another nonce: what a relayed list would answer
        verifier.verify(items, nonce=os.urandom(32), now=NOW)
    assert info.value.code == Code.GPU_NONCE_MISMATCH


def test_the_same_gpu_twice_is_refused(sim: GpuSimulator, verifier: GpuVerifier) -> None:
    nonce = os.urandom(32)
    item = _items(SimulatedGpus(sim, 1, seed="twice"), nonce)[0]
    with pytest.raises(AttestationError) as info:
        verifier.verify([item, item], nonce=nonce, now=NOW)
    assert info.value.code == Code.GPU_DUPLICATE_DEVICE


@pytest.mark.parametrize("fault", REPORT_FAULTS)
def test_each_fault_knob_yields_its_code(sim: GpuSimulator, verifier: GpuVerifier, fault: str) -> None:
    assert set(EXPECTED) == set(REPORT_FAULTS)
    nonce = os.urandom(32)
    with pytest.raises(AttestationError) as info:
        verifier.verify(
            _items(SimulatedGpus(sim, 1, seed=f"f-{fault}", fault=fault), nonce), nonce=nonce, now=NOW
        )
    assert info.value.code == EXPECTED[fault], info.value.message


def test_no_collateral_fails_closed(sim: GpuSimulator, tmp_path: Path) -> None:
    nonce = os.urandom(32)
    items = _items(SimulatedGpus(sim, 1), nonce)
    files = gpu_collateral(sim)
    CollateralStore(tmp_path / "cpu-only").import_items(
        [(item, source) for item, source in files.items() if item.kind is ItemKind.CERTIFICATE],
        trust=sim.trust_store(),
        now=NOW,
    )  # a store with NVIDIA CA certificates but no RIM, OCSP answer or CRL
    for verifier in (
        GpuVerifier(sim.trust_store(), None),
        _over_store(sim, tmp_path / "absent"),
        _over_store(sim, tmp_path / "cpu-only"),
    ):
        with pytest.raises(AttestationError) as info:
            verifier.verify(items, nonce=nonce, now=NOW)
        assert info.value.code == Code.GPU_COLLATERAL_MISSING
    # CRLs but no RIM for the reported versions (the RIM chains' OCSP answers are checkable only with them)
    root = tmp_path / "no-rims"
    first = [(i, s) for i, s in files.items() if i.kind in (ItemKind.CERTIFICATE, ItemKind.CRL)]
    rest = [(i, s) for i, s in files.items() if i.kind in (ItemKind.GPU_RIM, ItemKind.OCSP_RESPONSE)]
    CollateralStore(root).import_items(first, trust=sim.trust_store(), now=NOW)
    verifier = _over_store(sim, root)
    with pytest.raises(AttestationError) as missing:
        verifier.verify(items, nonce=nonce, now=NOW)
    assert missing.value.code == Code.GPU_COLLATERAL_MISSING
    # the store is re-read when an import changes it: the RIMs arrive, the same verifier accepts the GPU
    CollateralStore(root).import_items(rest, trust=sim.trust_store(), now=NOW)
    assert verifier.verify(items, nonce=nonce, now=NOW)[0]["measurement_result"] == "success"


def test_a_saved_simulator_mints_under_the_same_roots(sim: GpuSimulator, verifier: GpuVerifier) -> None:
    loaded = load_gpu_simulator(dump_gpu_simulator(sim))
    assert loaded.trust_store().nvidia_device_roots == sim.trust_store().nvidia_device_roots
    nonce = os.urandom(32)
    assert len(verifier.verify(_items(SimulatedGpus(loaded, 2), nonce), nonce=nonce, now=NOW)) == 2
    for junk in (b"", b"{}", b'{"format": "sovereign-simulated-gpu-pki/1"}', b"[1]"):
        with pytest.raises(GpuPkiFileError):
            load_gpu_simulator(junk)


def test_node_settings_for_simulated_gpus(sim: GpuSimulator, tmp_path: Path) -> None:
    def config(**kw: object) -> NodeConfig:
        return NodeConfig.resolve({}, server="h:1", node_name="n", insecure_dev=True, **kw)  # type: ignore[arg-type]

    assert isinstance(build_gpu_source(config(provider="simulated-snp")), NoGpu)
    for bad in (
        {"provider": "auto", "sim_gpus": 2},
        {"provider": "simulated-snp", "sim_gpus": 9},
        {"provider": "simulated-snp", "sim_gpus": 2, "sim_gpu_fault": "revoked"},
        {"provider": "simulated-snp", "sim_gpu_fault": "vbios-mismatch"},
    ):
        with pytest.raises(NodeError) as info:
            config(**bad)
        assert info.value.code is NodeCode.CONFIG_INVALID, bad
    with pytest.raises(NodeError) as missing:
        build_gpu_source(config(provider="simulated-snp", sim_gpus=2, sim_pki=tmp_path))
    assert missing.value.code is NodeCode.PROVIDER_UNAVAILABLE
    (tmp_path / "gpu-pki.json").write_bytes(dump_gpu_simulator(sim))
    source = build_gpu_source(
        config(provider="simulated-snp", sim_gpus=2, sim_gpu_fault="vbios-mismatch", sim_pki=tmp_path)
    )
    assert isinstance(source, SimulatedGpus) and (source.count, source.fault) == (2, "vbios-mismatch")
    env = NodeConfig.resolve(
        {"SOVEREIGN_NODE_SIM_GPUS": "2"},
        server="h:1",
        node_name="n",
        insecure_dev=True,
        provider="simulated-tdx",
    )
    assert env.sim_gpus == 2


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'server = "h:1"\nnode_name = "n"\ninsecure_dev = true\n{body}')
    return path


def test_node_toml_gpu_settings(sim: GpuSimulator, tmp_path: Path) -> None:
    (tmp_path / "gpu-pki.json").write_bytes(dump_gpu_simulator(sim))
    config, _ = load_node_toml(_toml(tmp_path, ""), {})
    assert (config.gpu, config.require_gpus) == ("none", False)
    assert isinstance(build_gpu_source(config), NoGpu)
    config, _ = load_node_toml(_toml(tmp_path, 'gpu = "nvml"\nrequire_gpus = true\n'), {})
    source = build_gpu_source(config)
    assert isinstance(source, NvmlGpuSource) and source.require_gpus is True
    simulated = (
        f'provider = "simulated-snp"\nsim_pki = "{tmp_path}"\ngpu = "simulated"\nsim_gpus = 3\n'
        'sim_gpu_fault = "nonce-mismatch"\n'
    )
    config, _ = load_node_toml(_toml(tmp_path, simulated), {})
    source = build_gpu_source(config)
    assert isinstance(source, SimulatedGpus) and (source.count, source.fault) == (3, "nonce-mismatch")
    # the environment fills what the file leaves out
    config, _ = load_node_toml(
        _toml(tmp_path, ""), {"SOVEREIGN_NODE_GPU": "nvml", "SOVEREIGN_NODE_REQUIRE_GPUS": "1"}
    )
    assert (config.gpu, config.require_gpus) == ("nvml", True)


@pytest.mark.parametrize(
    "body",
    [
        'gpu = "cuda"\n',  # not a source
        "gpu = 1\n",  # wrong type
        'require_gpus = "yes"\n',  # wrong type
        "require_gpus = true\n",  # nothing to require GPUs from
        'provider = "simulated-snp"\ngpu = "simulated"\n',  # simulated without a count
        'provider = "simulated-snp"\ngpu = "nvml"\nsim_gpus = 2\n',  # a count for another source
        'gpu = "simulated"\nsim_gpus = 2\n',  # simulated GPUs beside a hardware CPU provider
        'provider = "simulated-snp"\nsim_gpus = "2"\n',  # wrong type
        'provider = "simulated-snp"\nsim_gpus = 2\nsim_gpu_fault = "revoked"\n',  # not a fault knob
    ],
)
def test_node_toml_refuses_gpu_settings_that_cannot_apply(tmp_path: Path, body: str) -> None:
    with pytest.raises(NodeError) as info:
        load_node_toml(_toml(tmp_path, body), {})
    assert info.value.code is NodeCode.CONFIG_INVALID, body
