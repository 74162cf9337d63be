"""Reconciliation core: OpenBao file-audit records (as the device writes them: HMAC'd values, clear
request ids) against ledger entries; batches match only when every item is accounted for."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kms.audit.entry import Decision, Entry, Kind
from kms.audit.errors import AuditError
from kms.audit.reconcile import parse_bao_log, reconcile
from sovereign.cli import main

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
    assert info.value.code == "AUDIT_RECONCILE_NOT_BAO_LOG"


def random_json_lines(count: int) -> list[bytes]:
    rng = random.Random(20)
    return [
        json.dumps({f"k{rng.randrange(100)}": rng.random(), "type": rng.choice(["x", 1, None])}).encode()
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(random_json_lines(20), id="random JSON lines"),
        pytest.param([*LOG, json.dumps({"hello": "world"})], id="an audit log with a foreign line"),
        pytest.param([json.dumps([1, 2, 3])], id="a JSON array"),
        pytest.param([os.urandom(4096) + bytes(range(256))], id="binary"),
        pytest.param([b"\x00\x01\x02\xff\n"], id="control bytes"),
        pytest.param([], id="empty"),
        pytest.param(["", "  "], id="blank lines"),
    ],
)
def test_a_file_that_is_not_an_openbao_audit_log_is_refused_with_a_hint(lines: list[bytes | str]) -> None:
    with pytest.raises(AuditError) as info:
        parse_bao_log(lines, role_name=ROLE, path=PATH)
    assert info.value.code == "AUDIT_RECONCILE_NOT_BAO_LOG"
    assert info.value.hint is not None and "file audit device" in info.value.hint


@pytest.mark.parametrize("content", ["json", "binary"])
def test_the_cli_refuses_a_file_that_is_not_an_openbao_audit_log(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log, export = tmp_path / "bao.log", tmp_path / "export.jsonl"
    log.write_bytes(b"\n".join(random_json_lines(5)) if content == "json" else os.urandom(2048))
    export.write_bytes(b"")
    argv = ["audit", "reconcile", "--bao-log", str(log), "--export", str(export), "--json"]
    assert main(argv) != 0
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "AUDIT_RECONCILE_NOT_BAO_LOG" and "file audit device" in error["hint"]
    assert main(argv[:-1]) != 0
    err = capsys.readouterr()
    assert "MISMATCH" not in err.out and "AUDIT_RECONCILE_NOT_BAO_LOG" in err.err


def recovery(seq: int, rid: str, kind: Kind = Kind.DATASET_RECOVER) -> bytes:
    fields = {"key_name": "dataset/x", "key_version": 2, "bao_request_id": rid,
              "bao_batch_index": 0, "bao_batch_size": 1, "username": "root"}  # fmt: skip
    return Entry.create(seq, T, kind, actor="local:root", fields=fields).encode()


def test_a_custodian_recovery_matches_its_single_decrypt_and_other_kinds_do_not() -> None:
    decrypts = parse_bao_log([record("r-2", None)], role_name=ROLE, path=PATH)
    matched = reconcile(decrypts, [recovery(0, "r-2")])
    assert matched.ok and (matched.entries, matched.matched) == (1, 1)
    # the same fields on a kind that records no decrypt explain nothing
    unexplained = reconcile(decrypts, [recovery(0, "r-2", kind=Kind.KEY_ROTATE)])
    assert not unexplained.ok and [d.request_id for d in unexplained.unmatched_decrypts] == ["r-2"]
    # and a recovery naming a request id OpenBao never logged is reported
    stray = reconcile(decrypts, [recovery(0, "r-2"), recovery(1, "r-9")])
    assert not stray.ok and stray.unmatched_entries == [1]
