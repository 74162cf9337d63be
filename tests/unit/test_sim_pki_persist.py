"""A saved simulator PKI signs, in another process's hands, evidence the original trust profile accepts;
the production profile still refuses it; a damaged file is a coded refusal, not a traceback."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation import trust
from attestation.errors import AttestationError, Code
from attestation.evidence import verify_evidence
from attestation.simulate import SimulatedPki
from attestation.simulate.persist import PkiFileError, dump_pki, load_pki
from attestation.store import CollateralStore
from enclave.config import NodeConfig, build_provider
from enclave.errors import NodeCode, NodeError
from sovereign.cli._sim_pki import save_sim_pki

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedPki, Path]:
    pki = SimulatedPki.generate(NOW)
    directory = tmp_path_factory.mktemp("sim") / "pki"
    save_sim_pki(pki, directory, NOW)
    return pki, directory


def test_saved_files_are_private(saved: tuple[SimulatedPki, Path]) -> None:
    _, directory = saved
    assert (directory / "pki.json").stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("provider", ["simulated-snp", "simulated-tdx"])
def test_a_loaded_pki_mints_what_the_saved_trust_profile_accepts(
    saved: tuple[SimulatedPki, Path], provider: str
) -> None:
    original, directory = saved
    config = NodeConfig(
        server="127.0.0.1:1", node_name="n1", insecure_dev=True, provider=provider, sim_pki=directory
    )
    evidence = build_provider(config).get_evidence(b"\x07" * 64)
    collateral = CollateralStore(directory / "collateral").load()
    claims = verify_evidence(
        evidence.blob,
        trust=original.trust_store(),
        collateral=collateral,
        now=NOW,
        endorsements=list(evidence.endorsements),
    )
    assert claims.report_data == b"\x07" * 64
    with pytest.raises(AttestationError) as refused:
        verify_evidence(
            evidence.blob,
            trust=trust.PRODUCTION,
            collateral=collateral,
            now=NOW,
            endorsements=list(evidence.endorsements),
        )
    assert refused.value.code is Code.TEST_ROOT_IN_PRODUCTION


def test_round_trip_keeps_the_roots() -> None:
    pki = SimulatedPki.generate(NOW)
    again = load_pki(dump_pki(pki))
    assert again.trust_store() == pki.trust_store()
    assert again.now == pki.now


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        json.dumps({"format": "other"}).encode(),
        json.dumps({"format": "sovereign-simulated-pki/1"}).encode(),
    ],
)
def test_damaged_pki_files_are_refused(data: bytes) -> None:
    with pytest.raises(PkiFileError):
        load_pki(data)


def test_node_without_the_pki_or_with_a_bad_one_is_a_coded_refusal(tmp_path: Path) -> None:
    bare = NodeConfig(server="127.0.0.1:1", node_name="n1", insecure_dev=True, provider="simulated-snp")
    with pytest.raises(NodeError) as missing:
        build_provider(bare)
    assert missing.value.code is NodeCode.PROVIDER_UNAVAILABLE and "--sim-pki" in missing.value.hint
    (tmp_path / "pki.json").write_text("{}")
    bad = NodeConfig(
        server="127.0.0.1:1", node_name="n1", insecure_dev=True, provider="simulated-tdx", sim_pki=tmp_path
    )
    with pytest.raises(NodeError) as damaged:
        build_provider(bad)
    assert damaged.value.code is NodeCode.PROVIDER_UNAVAILABLE


def test_saving_a_new_pki_over_an_old_one_replaces_its_collateral(tmp_path: Path) -> None:
    """``evidence simulate --save-pki DIR`` twice: the store holds the second PKI's collateral only (the
    first's GPU RIMs would conflict with the second's, its CPU items name roots no longer trusted)."""
    directory = tmp_path / "pki"
    save_sim_pki(SimulatedPki.generate(NOW), directory, NOW)
    first = {e["sha256"] for e in CollateralStore(directory / "collateral").entries()}
    second_pki = SimulatedPki.generate(NOW)
    save_sim_pki(second_pki, directory, NOW)
    store = CollateralStore(directory / "collateral")
    assert not first & {e["sha256"] for e in store.entries()}
    assert len(store.load().gpu.rims) == 2
    config = NodeConfig(
        server="127.0.0.1:1", node_name="n1", insecure_dev=True, provider="simulated-snp", sim_pki=directory
    )
    evidence = build_provider(config).get_evidence(b"\x09" * 64)
    claims = verify_evidence(
        evidence.blob, trust=second_pki.trust_store(), collateral=store.load(), now=NOW,
        endorsements=list(evidence.endorsements),
    )  # fmt: skip
    assert claims.report_data == b"\x09" * 64
