"""The registration and release use cases over real OpenBao (transit via AppRole) and a real SQLite
file, with simulated SNP and TDX nodes: keys arrive sealed to the node's attested key and match the
owner's copy; every grant names an OpenBao decrypt that is in its audit log; revocation, lease expiry
and KEK rotation behave."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from e2e.node_client import release_body, sign_body
from e2e.world import SNP_MEASUREMENT, TDX_MRTD, prepare

from attestation.simulate import SimulatedPki, shared_pki
from enclave.identity import NodeIdentity
from enclave.providers.simulated import simulated_snp, simulated_tdx
from kms.clock import ManualClock
from kms.config import ServerConfig
from kms.domain.catalogue import Catalogue, KeyKind
from kms.domain.transit import Transit
from kms.envelope import open_sealed_key
from kms.errors import Code, KmsError, OpenBaoError
from kms.server.app import ControlPlane, build
from kms.server.codec import release_in
from kms.sql.keys import SqlKeyStore
from kms.usecases.admin import Admin
from kms.usecases.attest import EvidenceInput, NodeKeys, Outcome, RegisterInput, RenewInput
from kms.usecases.release import Released, ReleaseDenied, SignedRelease
from kms.usecases.verifier import EvidenceVerifier
from proto.contract import SIGNING_DOMAIN

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration
START = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(START)


def make_plane(
    tmp_path: Path,
    pki: SimulatedPki,
    transit: Transit,
    clock: ManualClock,
    edit_policy: Callable[[str], str] | None = None,
) -> ControlPlane:
    """A control plane on the e2e inputs; ``edit_policy`` rewrites the policy text first."""
    inputs = prepare(tmp_path / "inputs", pki, START)
    if edit_policy is not None:
        inputs.policy.write_text(edit_policy(inputs.policy.read_text()))
    config = ServerConfig(
        db=str(tmp_path / "db.sqlite"), collateral=str(inputs.collateral), policy=str(inputs.policy)
    )
    return build(config, trust=pki.trust_store(), clock=clock, transit=transit)


def register(plane: ControlPlane, pki: SimulatedPki, tee: str) -> tuple[NodeIdentity, str]:
    identity = NodeIdentity.generate()
    nonce, evidence = fresh_evidence(plane, pki, identity, tee)
    keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
    outcome = plane.attestation.register(RegisterInput(nonce, evidence, keys, f"node-{tee}", ("trainers",)))
    assert outcome.outcome is Outcome.ATTESTED, outcome.reasons
    return identity, outcome.node_id


def fresh_evidence(
    plane: ControlPlane, pki: SimulatedPki, identity: NodeIdentity, tee: str
) -> tuple[bytes, EvidenceInput]:
    """A challenge nonce and the simulated node's evidence bound to it (``tee``: snp or tdx)."""
    challenge, _ = plane.attestation.challenge(f"node-{tee}")
    provider = (
        simulated_snp(pki, measurement=SNP_MEASUREMENT) if tee == "snp" else simulated_tdx(pki, mrtd=TDX_MRTD)
    )
    evidence = provider.get_evidence(identity.report_data(challenge.nonce))
    return challenge.nonce, EvidenceInput(tee, evidence.blob, evidence.endorsements)


def renew(plane: ControlPlane, pki: SimulatedPki, identity: NodeIdentity, node_id: str, tee: str) -> Any:
    nonce, evidence = fresh_evidence(plane, pki, identity, tee)
    keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
    return plane.attestation.renew(RenewInput(node_id, nonce, evidence, keys))


def signed(
    identity: NodeIdentity, node_id: str, key: str, clock: ManualClock, purpose: str = "read"
) -> SignedRelease:
    return release_in(
        sign_body(
            identity, release_body(node_id, key, purpose, when=clock()).SerializeToString(deterministic=True)
        )
    )


def release(plane: ControlPlane, request: SignedRelease) -> Released:
    """The release use case, as the KeyRelease servicer runs it (on an event loop)."""
    return asyncio.run(plane.release.release(request))


def db_rows(plane: ControlPlane, sql: str) -> list[tuple[object, ...]]:
    path = plane.store.engine.url.database
    assert path is not None
    return sqlite3.connect(path).execute(sql).fetchall()


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_release_matches_the_owners_key_and_reconciles(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki, tee: str
) -> None:
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, kms_dev.approle(), clock)
    try:
        record = plane.admin.create_key("dataset/train", KeyKind.DATASET)
        identity, node_id = register(plane, pki, tee)
        released = release(plane, signed(identity, node_id, "dataset/train", clock))
        key = open_sealed_key(identity.kem_private_key(), released.sealed_key, released.aad)
        owner = kms_dev.admin().unwrap(record.version().ciphertext or "").plaintext
        assert key == owner and len(key) == 32
        ((bao_request_id, sequence),) = db_rows(plane, "SELECT openbao_request_id, sequence FROM grants")
        assert sequence == released.audit_sequence
        assert kms_dev.server.audit_log is not None
        audit = [
            json.loads(line) for line in kms_dev.server.audit_log.read_text().splitlines() if line.strip()
        ]
        decrypts = {
            e["request"]["id"]
            for e in audit
            if e.get("type") == "response" and "decrypt" in e["request"].get("path", "")
        }
        assert bao_request_id in decrypts
    finally:
        plane.close()


def test_revocation_between_decision_and_commit(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(START)
    transit = kms_dev.approle()
    plane = make_plane(tmp_path, pki, transit, clock)
    try:
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        identity, node_id = register(plane, pki, "snp")
        unwrap = transit.unwrap_batch

        def revoke_then_unwrap(ciphertexts: list[str]) -> Any:  # decided already, not yet committed
            plane.admin.revoke_node(node_id, "compromised")
            return unwrap(ciphertexts)

        monkeypatch.setattr(transit, "unwrap_batch", revoke_then_unwrap)
        with pytest.raises(ReleaseDenied) as info:
            release(plane, signed(identity, node_id, "dataset/train", clock))
        assert info.value.code == "RELEASE_NODE_NOT_ATTESTED" and info.value.denial_id > 0
        assert db_rows(plane, "SELECT count(*) FROM grants") == [(0,)]
        ((code, bao_id),) = db_rows(plane, "SELECT code, openbao_request_id FROM denials")
        assert code == "RELEASE_NODE_NOT_ATTESTED" and bao_id  # the decrypt that happened is accounted for
    finally:
        plane.close()


def test_lease_expiry_and_renewal(kms_dev: Kms, tmp_path: Path, pki: SimulatedPki) -> None:
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, kms_dev.approle(), clock)
    try:
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        identity, node_id = register(plane, pki, "tdx")
        clock.advance(301)  # the demo policy's lease is 300 s
        with pytest.raises(ReleaseDenied) as info:
            release(plane, signed(identity, node_id, "dataset/train", clock))
        assert info.value.code == "RELEASE_LEASE_EXPIRED"
        renewed = renew(plane, pki, identity, node_id, "tdx")
        assert renewed.outcome is Outcome.ATTESTED and renewed.lease is not None
        assert renewed.lease.expires_at > clock()
        release(plane, signed(identity, node_id, "dataset/train", clock))
    finally:
        plane.close()


def test_a_release_right_after_a_renewal_is_checked_again_not_refused(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, kms_dev.approle(), clock)
    try:
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        identity, node_id = register(plane, pki, "snp")
        release(plane, signed(identity, node_id, "dataset/train", clock))  # caches the node
        assert renew(plane, pki, identity, node_id, "snp").outcome is Outcome.ATTESTED
        released = release(plane, signed(identity, node_id, "dataset/train", clock))
        assert len(open_sealed_key(identity.kem_private_key(), released.sealed_key, released.aad)) == 32
        # the first try, decided on the cached lease, stays in the ledger with its decrypt
        ((code, bao_id),) = db_rows(plane, "SELECT code, openbao_request_id FROM denials")
        assert code == "RELEASE_NODE_CHANGED" and bao_id
        assert db_rows(plane, "SELECT count(*) FROM grants") == [(2,)]
    finally:
        plane.close()


def test_renewal_keeps_the_groups_an_operator_approved(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    """With operator approval required, the groups the operator assigned are the node's until the
    policy rejects it; a renewal must not replace them with the groups of the rule it matched."""

    def approval(text: str) -> str:
        # the node's image is in both groups; the operator approves it into one of them
        evaluators = '[[appraisal.snp.groups]]\nname = "evaluators"\nmeasurements = ["' + "11" * 48 + '"]\n\n'
        text = text.replace("[appraisal.tdx]", evaluators + "[appraisal.tdx]")
        return text.replace("require_operator_approval = false", "require_operator_approval = true")

    plane = make_plane(tmp_path, pki, kms_dev.approle(), ManualClock(START), approval)
    try:
        identity = NodeIdentity.generate()
        keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
        nonce, evidence = fresh_evidence(plane, pki, identity, "snp")
        registered = plane.attestation.register(RegisterInput(nonce, evidence, keys, "node-snp", ()))
        assert registered.outcome is Outcome.PENDING_APPROVAL
        assert registered.groups == ("trainers", "evaluators")
        plane.admin.approve_node(registered.node_id, ["evaluators"], "read-only evaluation node")
        renewed = renew(plane, pki, identity, registered.node_id, "snp")
        assert renewed.outcome is Outcome.ATTESTED and renewed.groups == ("evaluators",)
        assert plane.admin.get_node(registered.node_id).groups == ("evaluators",)
    finally:
        plane.close()


def test_a_policy_change_restores_only_the_groups_a_node_asked_for(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    """A node that asked for one of two eligible groups, suspended by a policy change and restored by
    the next, gets back what it asked for, not every group it is eligible for."""
    policies: list[str] = []

    def two_groups(text: str) -> str:
        evaluators = '[[appraisal.snp.groups]]\nname = "evaluators"\nmeasurements = ["' + "11" * 48 + '"]\n\n'
        policies.append(text.replace("[appraisal.tdx]", evaluators + "[appraisal.tdx]"))
        return policies[0]

    plane = make_plane(tmp_path, pki, kms_dev.approle(), ManualClock(START), two_groups)
    try:
        identity = NodeIdentity.generate()
        keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
        nonce, evidence = fresh_evidence(plane, pki, identity, "snp")
        node = plane.attestation.register(RegisterInput(nonce, evidence, keys, "node-snp", ("evaluators",)))
        assert node.outcome is Outcome.ATTESTED and node.groups == ("evaluators",)
        above_tcb = policies[0].replace("snp = 8\n", "snp = 99\n")  # Milan's minimum SNP firmware
        assert above_tcb.count("snp = 99") == 1
        plane.admin.put_policy(above_tcb, 1, dry_run=False)
        assert plane.admin.get_node(node.node_id).state.value == "suspended"
        plane.admin.put_policy(policies[0], 2, dry_run=False)
        restored = plane.admin.get_node(node.node_id)
        assert restored.state.value == "attested" and restored.groups == ("evaluators",)
    finally:
        plane.close()


def test_renewal_keeps_operator_groups_only_while_the_new_claims_match_them(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    """An approved node that renews with another image keeps none of the approved groups that image
    does not match: it waits for an operator again instead of keeping keys its evidence no longer earns."""
    other = b"\x55" * 48

    def approval(text: str) -> str:
        evaluators = f'[[appraisal.snp.groups]]\nname = "evaluators"\nmeasurements = ["{other.hex()}"]\n\n'
        text = text.replace("[appraisal.tdx]", evaluators + "[appraisal.tdx]")
        return text.replace("require_operator_approval = false", "require_operator_approval = true")

    plane = make_plane(tmp_path, pki, kms_dev.approle(), ManualClock(START), approval)
    try:
        identity = NodeIdentity.generate()
        keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
        nonce, evidence = fresh_evidence(plane, pki, identity, "snp")
        registered = plane.attestation.register(RegisterInput(nonce, evidence, keys, "node-snp", ()))
        assert registered.groups == ("trainers",)
        plane.admin.approve_node(registered.node_id, ["trainers"], "checked")
        challenge, _ = plane.attestation.challenge("node-snp")
        report = simulated_snp(pki, measurement=other).get_evidence(identity.report_data(challenge.nonce))
        renewed = plane.attestation.renew(
            RenewInput(
                registered.node_id,
                challenge.nonce,
                EvidenceInput("snp", report.blob, report.endorsements),
                keys,
            )
        )
        assert renewed.outcome is Outcome.PENDING_APPROVAL and renewed.lease is None
        node = plane.admin.get_node(registered.node_id)
        assert node.state.value == "pending" and node.groups == ()
    finally:
        plane.close()


def test_an_approval_checked_under_a_policy_that_changed_meanwhile_is_not_committed(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    def approval(text: str) -> str:
        return text.replace("require_operator_approval = false", "require_operator_approval = true")

    plane = make_plane(tmp_path, pki, kms_dev.approle(), ManualClock(START), approval)
    try:
        identity = NodeIdentity.generate()
        keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
        nonce, evidence = fresh_evidence(plane, pki, identity, "snp")
        node = plane.attestation.register(RegisterInput(nonce, evidence, keys, "node-snp", ()))
        checked_under = plane.policies.active()
        # the image leaves the trainers group while the approval is being checked under version 1
        plane.admin.put_policy(checked_under.row.toml.replace("1" * 96, "3" * 96), 1, dry_run=False)
        monkeypatch.setattr(plane.policies, "active", lambda **_: checked_under)
        with pytest.raises(KmsError) as info:
            plane.admin.approve_node(node.node_id, ["trainers"], "checked")
        assert info.value.code is Code.POLICY_VERSION_CONFLICT
        monkeypatch.undo()
        assert plane.admin.get_node(node.node_id).state.value != "attested"
        with pytest.raises(KmsError) as info:
            plane.admin.approve_node(node.node_id, ["trainers"], "checked")
        assert info.value.code is Code.NODE_EVIDENCE_FAILS_POLICY
    finally:
        plane.close()


def test_a_policy_change_narrows_the_groups_of_nodes_that_stay_attested(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    """A node keeps only the groups its stored claims match under the new policy, though it still
    passes through another group; with none of its groups left it is suspended."""
    policies: list[str] = []

    def two_groups(text: str) -> str:
        evaluators = '[[appraisal.snp.groups]]\nname = "evaluators"\nmeasurements = ["' + "11" * 48 + '"]\n\n'
        policies.append(text.replace("[appraisal.tdx]", evaluators + "[appraisal.tdx]"))
        return policies[0]

    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, kms_dev.approle(), clock, two_groups)
    try:
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        nodes = {}
        for asked in ((), ("trainers",)):
            identity = NodeIdentity.generate()
            keys = NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
            nonce, evidence = fresh_evidence(plane, pki, identity, "snp")
            node = plane.attestation.register(RegisterInput(nonce, evidence, keys, "node-snp", asked))
            nodes[asked] = (identity, node.node_id)
        assert plane.admin.get_node(nodes[()][1]).groups == ("trainers", "evaluators")
        # the image leaves "trainers" (another measurement there); "evaluators" still admits it
        trainers_elsewhere = policies[0].replace("1" * 96, "7" * 96, 1)
        change = plane.admin.put_policy(trainers_elsewhere, 1, dry_run=False)
        both, only_trainers = (plane.admin.get_node(node_id) for _, node_id in nodes.values())
        assert both.state.value == "attested" and both.groups == ("evaluators",)
        assert only_trainers.state.value == "suspended"
        assert [s.node_id for s in change.suspended] == [only_trainers.node_id]
        assert "POLICY_MEASUREMENT_NOT_ALLOWED" in [r.code for r in only_trainers.reasons]
        identity, node_id = nodes[()]
        with pytest.raises(ReleaseDenied) as info:
            release(plane, signed(identity, node_id, "dataset/train", clock))
        assert info.value.code == "RELEASE_NO_RULE"
    finally:
        plane.close()


def test_a_suspension_while_a_renewal_verifies_stands(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator suspends the node while its renewal's evidence is being verified: the renewal
    records the new claims but neither lifts the suspension nor reports the node attested."""
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, kms_dev.approle(), clock)
    try:
        identity, node_id = register(plane, pki, "snp")
        verify = plane.attestation._verify

        def verify_then_suspend(*args: Any) -> Any:
            claims = verify(*args)
            plane.admin.suspend_node(node_id, "pulled for inspection")
            return claims

        monkeypatch.setattr(plane.attestation, "_verify", verify_then_suspend)
        renewed = renew(plane, pki, identity, node_id, "snp")
        assert renewed.outcome is Outcome.REJECTED and renewed.lease is None
        assert [r.code for r in renewed.reasons] == ["NODE_SUSPENDED_BY_OPERATOR"]
        node = plane.admin.get_node(node_id)
        assert node.state.value == "suspended" and node.lease_id is None
        assert [r.code for r in node.reasons] == ["NODE_SUSPENDED_BY_OPERATOR"]
    finally:
        plane.close()


def test_kek_rotation_rewraps_and_releases_continue(
    fresh_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, fresh_dev.approle(), clock)
    try:
        plane.admin.create_key("model/main", KeyKind.MODEL)
        identity, node_id = register(plane, pki, "snp")
        before = release(plane, signed(identity, node_id, "model/main", clock, "write"))
        with pytest.raises(OpenBaoError) as info:  # the control plane's AppRole may not rotate the KEK
            plane.admin.rotate_kek("")
        assert info.value.code is Code.KMS_PERMISSION_DENIED
        operator = Admin(
            plane.store,
            Catalogue(SqlKeyStore(plane.store), fresh_dev.admin(), clock),
            plane.policies,
            EvidenceVerifier(pki.trust_store(), None),
            clock,
        )
        version, report = operator.rotate_kek("yearly")
        assert version == 2 and report.rewrapped == 1
        after = release(plane, signed(identity, node_id, "model/main", clock, "write"))
        k1 = open_sealed_key(identity.kem_private_key(), before.sealed_key, before.aad)
        k2 = open_sealed_key(identity.kem_private_key(), after.sealed_key, after.aad)
        assert k1 == k2 and after.audit_sequence > before.audit_sequence
    finally:
        plane.close()


def test_signature_domain_is_required(kms_dev: Kms, tmp_path: Path, pki: SimulatedPki) -> None:
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, kms_dev.approle(), clock)
    try:
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        identity, node_id = register(plane, pki, "snp")
        good = signed(identity, node_id, "dataset/train", clock)
        bad = type(good)(good.body, identity.sign(good.body), good.fields)
        assert identity.sign(SIGNING_DOMAIN + good.body) == good.signature
        with pytest.raises(Exception) as info:
            release(plane, bad)
        assert getattr(info.value, "code", None) is Code.REQUEST_SIGNATURE_INVALID
    finally:
        plane.close()
