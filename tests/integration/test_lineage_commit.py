"""Lineage-restricted releases are checked again inside the grant's commit transaction (real OpenBao,
real SQLite): an exception withdrawn, or an output recorded, after the release was decided and while its
key was being unwrapped refuses the grant, recorded as a denial that names the decrypt. Also the
withdrawal itself (``Admin.withdraw_lineage_exception``): only an exception in force can be withdrawn, and
a later grant makes a new one."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from e2e.world import SNP_MEASUREMENT
from integration.test_control_plane_release import START, db_rows, make_plane, release, signed

from attestation.simulate import SimulatedPki, shared_pki
from enclave.identity import NodeIdentity
from enclave.output_request import sign_output
from enclave.providers.simulated import simulated_snp
from enclave.workload.output_report import OutputReport
from kms.clock import ManualClock
from kms.domain.catalogue import KeyKind
from kms.errors import Code, KmsError
from kms.server.app import ControlPlane
from kms.usecases.attest import EvidenceInput, NodeKeys, Outcome, RegisterInput
from kms.usecases.release import ReleaseDenied

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration

INFERENCE = f"""
[[appraisal.snp.groups]]
name = "inference"
measurements = ["{SNP_MEASUREMENT.hex()}"]

[appraisal.tdx]
"""
RULE = """
[[release.rules]]
name = "inference-models"
groups = ["inference"]
keys = ["model/*"]
purposes = ["read"]
lineage_restricted = true
"""


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(START)


def restricted(policy: str) -> str:
    return policy.replace("[appraisal.tdx]\n", INFERENCE, 1) + RULE


def node(plane: ControlPlane, pki: SimulatedPki, name: str, group: str) -> tuple[NodeIdentity, str]:
    identity = NodeIdentity.generate()
    challenge, _ = plane.attestation.challenge(name)
    blob = simulated_snp(pki, measurement=SNP_MEASUREMENT).get_evidence(identity.report_data(challenge.nonce))
    nonce, evidence = challenge.nonce, EvidenceInput("snp", blob.blob, blob.endorsements)
    keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
    outcome = plane.attestation.register(RegisterInput(nonce, evidence, keys, name, (group,)))
    assert outcome.outcome is Outcome.ATTESTED, outcome.reasons
    return identity, outcome.node_id


def record_output(
    plane: ControlPlane, trainer: tuple[NodeIdentity, str], key: str, version: int, now: datetime
) -> int:
    identity, node_id = trainer
    report = OutputReport(
        key, version, secrets.token_hex(32), secrets.token_hex(32), secrets.token_hex(32), 10
    )
    out = sign_output(identity, node_id, report, request_id=os.urandom(16), timestamp=now)
    assert plane.outputs is not None
    return plane.outputs.record(out.body, out.signature, None)


def denied(plane: ControlPlane, request: Any) -> ReleaseDenied:
    with pytest.raises(ReleaseDenied) as info:
        release(plane, request)
    return info.value


def test_a_withdrawal_or_an_output_between_decision_and_commit_refuses_the_grant(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(START)
    transit = kms_dev.approle()
    plane = make_plane(tmp_path, pki, transit, clock, restricted)
    try:
        for name, kind in (("dataset/train", KeyKind.DATASET), ("model/main", KeyKind.MODEL),
                           ("model/next", KeyKind.MODEL)):  # fmt: skip
            plane.admin.create_key(name, kind)
        trainer = node(plane, pki, "trainer", "trainers")
        reader = node(plane, pki, "reader", "inference")
        release(plane, signed(*trainer, "dataset/train", clock))
        main = release(plane, signed(*trainer, "model/main", clock, "write"))
        record_output(plane, trainer, "model/main", main.key_version, clock())
        assert denied(plane, signed(*reader, "model/main", clock)).code == "RELEASE_LINEAGE_RESTRICTED"
        plane.admin.grant_lineage_exception("model/main", "inference", "ticket 7")
        release(plane, signed(*reader, "model/main", clock))  # the exception lets it through

        unwrap = transit.unwrap_batch
        between: list[Any] = []

        def act_then_unwrap(ciphertexts: list[str]) -> Any:  # decided already, not yet committed
            for action in between:
                action()
            between.clear()
            return unwrap(ciphertexts)

        monkeypatch.setattr(transit, "unwrap_batch", act_then_unwrap)
        # 1. the exception is withdrawn while the release's key is unwrapped
        between.append(lambda: plane.admin.withdraw_lineage_exception("model/main", "inference", "ticket 9"))
        refused = denied(plane, signed(*reader, "model/main", clock))
        assert refused.code == "RELEASE_LINEAGE_RESTRICTED" and refused.denial_id > 0
        assert "dataset/train" in refused.reasons[0].message
        # 2. model/next has no recorded output when the release is decided; one lands before the commit
        nxt = release(plane, signed(*trainer, "model/next", clock, "write"))
        between.append(lambda: record_output(plane, trainer, "model/next", nxt.key_version, clock()))
        assert denied(plane, signed(*reader, "model/next", clock)).code == "RELEASE_LINEAGE_RESTRICTED"
        monkeypatch.undo()

        rows = db_rows(plane, "SELECT key_name, code, openbao_request_id FROM denials ORDER BY id")
        at_commit = [(k, c) for k, c, bao in rows if bao]  # refused after a decrypt: at commit
        assert at_commit == [
            ("model/main", "RELEASE_LINEAGE_RESTRICTED"),
            ("model/next", "RELEASE_LINEAGE_RESTRICTED"),
        ]
        granted = [
            (k, p)
            for k, p, n in db_rows(plane, "SELECT key_name, purpose, node_id FROM grants")
            if n == reader[1]
        ]
        assert granted == [("model/main", "read")]  # only the one before the withdrawal
    finally:
        plane.close()


def test_only_an_exception_in_force_can_be_withdrawn(kms_dev: Kms, tmp_path: Path, pki: SimulatedPki) -> None:
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, kms_dev.approle(), clock, restricted)
    try:
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        plane.admin.create_key("model/main", KeyKind.MODEL)
        trainer = node(plane, pki, "trainer", "trainers")
        reader = node(plane, pki, "reader", "inference")
        release(plane, signed(*trainer, "dataset/train", clock))
        main = release(plane, signed(*trainer, "model/main", clock, "write"))
        record_output(plane, trainer, "model/main", main.key_version, clock())
        for key, group, reason in (("model/main", "inference", "x"), ("model/main", "inference", "")):
            with pytest.raises(KmsError) as none:  # nothing to withdraw / no reason
                plane.admin.withdraw_lineage_exception(key, group, reason)
            assert none.value.code is Code.REQUEST_INVALID
        plane.admin.grant_lineage_exception("model/main", "inference", "ticket 7")
        assert plane.admin.withdraw_lineage_exception("model/main", "inference", "ticket 9") == (
            "model/main",
            "inference",
        )
        assert denied(plane, signed(*reader, "model/main", clock)).code == "RELEASE_LINEAGE_RESTRICTED"
        with pytest.raises(KmsError) as twice:
            plane.admin.withdraw_lineage_exception("model/main", "inference", "again")
        assert twice.value.code is Code.REQUEST_INVALID
        plane.admin.grant_lineage_exception("model/main", "inference", "ticket 11")  # a new exception
        assert release(plane, signed(*reader, "model/main", clock)).key_name == "model/main"
        kinds = db_rows(plane, "SELECT kind FROM audit_entries WHERE kind LIKE 'lineage.%' ORDER BY seq")
        assert [k for (k,) in kinds] == [
            "lineage.exception",
            "lineage.exception.withdraw",
            "lineage.exception",
        ]
    finally:
        plane.close()
