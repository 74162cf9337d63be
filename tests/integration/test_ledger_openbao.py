"""The ledger over real OpenBao and a real SQLite file: grants and denials of SNP and TDX nodes,
checkpoints signed by the transit audit key, an export that verifies offline with only the public key,
and reconciliation against OpenBao's file audit log (batched decrypts included) that flags a decrypt
made with the AppRole outside the server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from integration.test_control_plane_release import START, make_plane, register, release, signed

from attestation.simulate import SimulatedPki, shared_pki
from kms.audit.checkpoint import load_audit_keys
from kms.audit.entry import Entry, Kind
from kms.audit.export import write_items
from kms.audit.reconcile import parse_bao_log, reconcile
from kms.audit.verify import verify_export
from kms.clock import ManualClock
from kms.domain.catalogue import KeyKind
from kms.openbao.bootstrap import ROLE_NAME
from kms.sql.audit_checkpointer import TransitSigner
from kms.sql.audit_ledger import StoredEntry
from kms.usecases.release import Released, ReleaseDenied

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration
DECRYPT_PATH = "transit/decrypt/sovereign-kek"


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return shared_pki(START)


def test_traffic_exports_verifies_offline_and_reconciles(
    fresh_dev: Kms, tmp_path: Path, pki: SimulatedPki
) -> None:
    clock = ManualClock(START)
    plane = make_plane(tmp_path, pki, fresh_dev.approle(), clock)
    try:
        record = plane.admin.create_key("dataset/train", KeyKind.DATASET)
        nodes = [register(plane, pki, tee) for tee in ("snp", "tdx")]
        requests = [
            signed(identity, node_id, "dataset/train", clock) for identity, node_id in nodes for _ in range(6)
        ]

        async def all_at_once() -> list[Released]:  # concurrent: several items share one batch decrypt
            return list(await asyncio.gather(*(plane.release.release(r) for r in requests)))

        released = asyncio.run(all_at_once())
        assert len({r.audit_sequence for r in released}) == 12
        plane.admin.revoke_node(nodes[1][1], "lost")
        with pytest.raises(ReleaseDenied) as denied:
            release(plane, signed(*nodes[1], "dataset/train", clock))
        assert denied.value.audit_sequence > max(r.audit_sequence for r in released)
        assert plane.audit is not None
        reader = plane.audit.reader
    finally:
        plane.close()  # server.stop and the final checkpoint
    items = [i.canonical if isinstance(i, StoredEntry) else i for i in reader.export(0, 0)]
    entries = [Entry.decode(i) for i in items if isinstance(i, bytes)]
    kinds = [e.kind for e in entries]
    assert kinds[0] is Kind.SERVER_START and kinds[-1] is Kind.SERVER_STOP
    assert kinds.count(Kind.REGISTRATION) == 2 and kinds.count(Kind.RELEASE_GRANT) == 12
    assert {e.fields["tee"] for e in entries if e.kind is Kind.REGISTRATION} == {"snp", "tdx"}
    grants = {e.seq: e for e in entries if e.kind is Kind.RELEASE_GRANT}
    for r in released:  # the AAD's sequence is the grant entry's
        assert grants[r.audit_sequence].fields["key_version"] == r.key_version
    deny = next(e for e in entries if e.kind is Kind.RELEASE_DENY)
    assert deny.seq == denied.value.audit_sequence and deny.reasons[0].code == "RELEASE_NODE_NOT_ATTESTED"
    # offline: only the public key, as OpenBao publishes it
    key_json = json.dumps(fresh_dev.admin().client.secrets.transit.read_key("sovereign-audit")).encode()
    out = tmp_path / "audit.jsonl"
    with out.open("wb") as f, (tmp_path / "spool").open("w+b") as spool:
        final = write_items(f, items, spool)
    report = verify_export(out.read_bytes().splitlines(keepends=True), load_audit_keys(key_json))
    assert report.size == final.size == len(entries)
    assert final.signature.version == TransitSigner(fresh_dev.approle()).key_version
    # reconcile: every decrypt by the control plane's AppRole has its entries, batch by batch
    assert fresh_dev.server.audit_log is not None
    canonical = [i for i in items if isinstance(i, bytes)]
    log = fresh_dev.server.audit_log.read_text().splitlines()
    decrypts = parse_bao_log(log, role_name=ROLE_NAME, path=DECRYPT_PATH)
    result = reconcile(decrypts, canonical)
    assert result.ok and result.matched == len(decrypts) >= 2, result.to_dict()
    # 12 grants + the revoked node's request: passed on a cached read, decrypted, refused at commit; its
    # deny entry carries the decrypt's request id
    assert sum(d.batch_size for d in decrypts) == 13 and deny.fields.get("bao_request_id")
    # a decrypt with the AppRole's credentials made outside the server has no entry
    outside = fresh_dev.approle().unwrap(record.version().ciphertext or "")
    log = fresh_dev.server.audit_log.read_text().splitlines()
    flagged = reconcile(parse_bao_log(log, role_name=ROLE_NAME, path=DECRYPT_PATH), canonical)
    assert not flagged.ok and [d.request_id for d in flagged.unmatched_decrypts] == [outside.request_id]
    # and a ledger missing one item of a batch is a mismatch, not a match
    batch = next(d for d in decrypts if d.batch_size > 1)
    dropped = next(c for c in canonical if Entry.decode(c).fields.get("bao_request_id") == batch.request_id)
    partial = reconcile(decrypts, [c for c in canonical if c != dropped])
    assert [m.request_id for m in partial.mismatched] == [batch.request_id]
