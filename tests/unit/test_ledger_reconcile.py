"""Reconciliation core: OpenBao file-audit records (as the device writes them: HMAC'd values, clear
request ids) against ledger entries; batches match only when every item is accounted for."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from kms.audit.entry import Decision, Entry, Kind
from kms.audit.errors import AuditError
from kms.audit.reconcile import parse_bao_log, reconcile

PATH = "transit/decrypt/sovereign-kek"
ROLE = "sovereign-control-plane"
T = datetime(2026, 1, 1, tzinfo=UTC)


def record(rid: str, items: int | None, *, kind: str = "response", role: str = ROLE, path: str = PATH,
           error: str = "") -> str:  # fmt: skip
    data = (
        {"batch_input": [{"ciphertext": "hmac-sha256:ab"}] * items}
        if items
        else {"ciphertext": "hmac-sha256:cd"}
    )
    out = {"type": kind, "time": "2026-01-01T00:00:00Z",
           "auth": {"client_token": "hmac-sha256:ef", "metadata": {"role_name": role}},
           "request": {"id": rid, "path": path, "operation": "update", "data": data}}  # fmt: skip
    if error:
        out["error"] = error
    return json.dumps(out)


def entry(seq: int, rid: str, index: int, size: int, kind: Kind = Kind.RELEASE_GRANT) -> bytes:
    fields = {"node_id": "n-1", "bao_request_id": rid, "bao_batch_index": index, "bao_batch_size": size}
    decision = Decision.GRANT if kind is Kind.RELEASE_GRANT else Decision.DENY
    return Entry.create(seq, T, kind, actor="node:n-1", decision=decision, fields=fields).encode()


LOG = [
    record("r-1", 3, kind="request"),
    record("r-1", 3),
    record("r-2", None),
    record("r-3", None, role="someone-else"),  # not the control plane's AppRole
    record("r-4", None, path="transit/decrypt/other"),
    record("r-5", 2, error="permission denied"),
]


def test_only_successful_decrypts_of_the_kek_by_the_approle_count() -> None:
    decrypts = parse_bao_log(LOG, role_name=ROLE, path=PATH)
    assert [(d.request_id, d.batch_size) for d in decrypts] == [("r-1", 3), ("r-2", 1)]


def test_a_batch_matches_when_every_item_has_its_entry() -> None:
    decrypts = parse_bao_log(LOG, role_name=ROLE, path=PATH)
    entries = [entry(0, "r-1", 0, 3), entry(1, "r-1", 2, 3), entry(2, "r-1", 1, 3, Kind.RELEASE_DENY),
               entry(3, "r-2", 0, 1)]  # fmt: skip
    report = reconcile(decrypts, entries)
    assert report.ok and report.matched == 2 and report.entries == 4


def test_missing_items_outside_decrypts_and_unknown_request_ids_are_reported() -> None:
    decrypts = parse_bao_log([*LOG, record("r-9", None)], role_name=ROLE, path=PATH)
    entries = [entry(0, "r-1", 0, 3), entry(1, "r-1", 1, 3), entry(2, "r-2", 0, 1), entry(3, "r-x", 0, 1)]
    report = reconcile(decrypts, entries)
    assert not report.ok
    assert [m.request_id for m in report.mismatched] == ["r-1"] and report.mismatched[0].indices == (0, 1)
    assert [d.request_id for d in report.unmatched_decrypts] == ["r-9"]
    assert report.unmatched_entries == [3]


def test_a_duplicated_index_does_not_pass_for_a_full_batch() -> None:
    decrypts = parse_bao_log(LOG[:2], role_name=ROLE, path=PATH)
    report = reconcile(decrypts, [entry(0, "r-1", 0, 3), entry(1, "r-1", 0, 3), entry(2, "r-1", 1, 3)])
    assert [m.request_id for m in report.mismatched] == ["r-1"]


def test_a_log_that_is_not_json_lines_is_refused() -> None:
    with pytest.raises(AuditError) as info:
        parse_bao_log(["{not json"], role_name=ROLE, path=PATH)
    assert info.value.code == "AUDIT_RECONCILE_INPUT_INVALID"
