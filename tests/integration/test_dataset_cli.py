"""``sovereign dataset encrypt|decrypt`` against a real OpenBao: the data owner's and custodian's side."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from kms.audit.entry import Entry, Kind
from kms.audit.export import entry_line
from kms.audit.reconcile import parse_bao_log, reconcile
from kms.domain.catalogue import Catalogue
from kms.domain.transit import KEK_NAME
from kms.envelope import read_header
from kms.errors import OpenBaoError
from kms.openbao.bootstrap import ROLE_NAME
from kms.openbao.data_owner import OWNER_ROLE_NAME
from kms.openbao.vault import TRANSIT_MOUNT, AppRoleAuth, BaoSettings, OpenBaoTransit
from kms.sql import open_store
from kms.sql.audit_schema import audit_entries
from kms.sql.keys import SqlKeyStore
from sovereign.cli import main

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration


@pytest.fixture
def env(kms_dev: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOVEREIGN_DB", str(tmp_path / "cli.db"))
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", kms_dev.server.addr)
    monkeypatch.setenv("SOVEREIGN_BAO_ROLE_ID", kms_dev.report.role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_SECRET_ID_FILE", kms_dev.report.secret_id_file)
    monkeypatch.delenv("SOVEREIGN_BAO_TOKEN", raising=False)
    monkeypatch.setenv("SOVEREIGN_BAO_OWNER_ROLE_ID", kms_dev.report.owner_role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_OWNER_SECRET_ID_FILE", kms_dev.report.owner_secret_id_file)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_encrypt_rotate_decrypt_each_version(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = env / "data.bin"
    plain.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    assert run(capsys, "key", "create", "dataset/imagenet", "--kind", "dataset")[0] == 0
    # every owner seal is a new version the owner made (v2), a rotation adds v3, the next seal v4
    code, out = run(
        capsys, "dataset", "encrypt", "--key", "dataset/imagenet", str(plain), str(env / "v1.sealed")
    )
    assert code == 0 and out["version"] == 2
    assert run(capsys, "key", "rotate", "dataset/imagenet")[0] == 0
    code, out = run(
        capsys, "dataset", "encrypt", "--key", "dataset/imagenet", str(plain), str(env / "v2.sealed")
    )
    assert code == 0 and out["version"] == 4
    for sealed in ("v1", "v2"):
        code, out = run(
            capsys,
            "dataset",
            "decrypt",
            "--key",
            "dataset/imagenet",
            str(env / f"{sealed}.sealed"),
            str(env / sealed),
        )
        assert code == 0, out
        assert (
            hashlib.sha256((env / sealed).read_bytes()).digest()
            == hashlib.sha256(plain.read_bytes()).digest()
        )
    assert plain.read_bytes() not in (env / "v1.sealed").read_bytes()


def test_failures_are_coded_and_leave_no_output(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = env / "data.bin"
    plain.write_bytes(b"x" * 100_000)
    assert run(capsys, "key", "create", "dataset/a", "--kind", "dataset")[0] == 0
    assert run(capsys, "key", "create", "model/w", "--kind", "model")[0] == 0
    code, out = run(capsys, "dataset", "encrypt", "--key", "dataset/missing", str(plain), str(env / "o"))
    assert (code, out["error"]["code"]) == (1, "KEY_NOT_FOUND")
    code, out = run(capsys, "dataset", "encrypt", "--key", "model/w", str(plain), str(env / "o"))
    assert (code, out["error"]["code"]) == (1, "KEY_WRONG_KIND")
    assert not (env / "o").exists()
    assert run(capsys, "dataset", "encrypt", "--key", "dataset/a", str(plain), str(env / "s"))[0] == 0
    sealed = bytearray((env / "s").read_bytes())
    sealed[len(sealed) // 2] ^= 1
    (env / "t").write_bytes(bytes(sealed))
    code, out = run(capsys, "dataset", "decrypt", "--key", "dataset/a", str(env / "t"), str(env / "out"))
    assert code == 1 and out["error"]["code"].startswith("STREAM_")
    assert not (env / "out").exists()
    code, out = run(capsys, "dataset", "decrypt", "--key", "dataset/other", str(env / "s"), str(env / "out"))
    assert (code, out["error"]["code"]) == (1, "KEY_NOT_FOUND")
    assert run(capsys, "key", "disable", "dataset/a")[0] == 0
    code, out = run(capsys, "dataset", "decrypt", "--key", "dataset/a", str(env / "s"), str(env / "out"))
    assert (code, out["error"]["code"]) == (1, "KEY_DISABLED")
    assert not (env / "out").exists()


def _ledger(db: Path) -> list[bytes]:
    store = open_store(db)
    try:
        with store.reader() as conn:
            rows = conn.execute(select(audit_entries.c.canonical).order_by(audit_entries.c.seq)).all()
    finally:
        store.close()
    return [bytes(r.canonical) for r in rows]


def test_the_data_owner_seals_with_its_own_identity_and_reconcile_stays_clean(
    fresh_dev: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "owner.db"
    monkeypatch.setenv("SOVEREIGN_DB", str(db))
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", fresh_dev.server.addr)
    monkeypatch.setenv("SOVEREIGN_BAO_ROLE_ID", fresh_dev.report.role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_SECRET_ID_FILE", fresh_dev.report.secret_id_file)
    monkeypatch.delenv("SOVEREIGN_BAO_TOKEN", raising=False)
    report = fresh_dev.report
    assert report.owner_role_id and Path(report.owner_secret_id_file).stat().st_mode & 0o777 == 0o600
    owner = ["--owner-role-id", report.owner_role_id, "--owner-secret-id-file", report.owner_secret_id_file]
    plain = tmp_path / "data.bin"
    plain.write_bytes(os.urandom(70_000))
    assert run(capsys, "key", "create", "dataset/owned", "--kind", "dataset")[0] == 0
    sealed = tmp_path / "data.sealed"
    code, out = run(capsys, "dataset", "encrypt", "--key", "dataset/owned", str(plain), str(sealed), *owner)
    assert code == 0 and out["version"] == 2, out

    # reconcile: the control plane's AppRole made no decrypt, so nothing is unexplained
    assert fresh_dev.server.audit_log is not None
    log = fresh_dev.server.audit_log.read_bytes().splitlines()
    decrypts = parse_bao_log(log, role_name=ROLE_NAME, path=f"{TRANSIT_MOUNT}/decrypt/{KEK_NAME}")
    result = reconcile(decrypts, _ledger(db))
    assert result.ok and (result.decrypts, len(result.mismatched), len(result.unmatched_decrypts)) == (
        0,
        0,
        0,
    )
    # the owner's call is in OpenBao's log under the owner's role, and the ledger has the new version
    made = parse_bao_log(log, role_name=OWNER_ROLE_NAME, path=f"{TRANSIT_MOUNT}/datakey/plaintext/{KEK_NAME}")
    assert len(made) == 1
    rotations = [Entry.decode(c) for c in _ledger(db) if Entry.decode(c).kind is Kind.KEY_ROTATE]
    assert [(e.fields["key_name"], e.fields["key_version"]) for e in rotations] == [("dataset/owned", 2)]

    # the owner role cannot decrypt: OpenBao answers 403
    store = open_store(db)
    try:
        wrapped = Catalogue(SqlKeyStore(store), None, lambda: datetime.now(UTC)).get("dataset/owned")
    finally:
        store.close()
    secret = Path(report.owner_secret_id_file).read_text().strip()
    as_owner = OpenBaoTransit(
        BaoSettings(addr=fresh_dev.server.addr, auth=AppRoleAuth(report.owner_role_id, secret))
    )
    try:
        with pytest.raises(OpenBaoError) as denied:
            as_owner.unwrap(wrapped.ciphertext)
    finally:
        as_owner.close()
    assert denied.value.code == "KMS_PERMISSION_DENIED"

    # the custodian opens what the owner sealed: its decrypt is on the record, and reconcile matches it
    opened = tmp_path / "data.out"
    assert run(capsys, "dataset", "decrypt", "--key", "dataset/owned", str(sealed), str(opened))[0] == 0
    assert opened.read_bytes() == plain.read_bytes()
    log = fresh_dev.server.audit_log.read_bytes().splitlines()
    decrypts = parse_bao_log(log, role_name=ROLE_NAME, path=f"{TRANSIT_MOUNT}/decrypt/{KEK_NAME}")
    result = reconcile(decrypts, _ledger(db))
    assert result.ok and (result.decrypts, result.matched) == (1, 1), result.to_dict()
    recoveries = [Entry.decode(c) for c in _ledger(db) if Entry.decode(c).kind is Kind.DATASET_RECOVER]
    assert len(recoveries) == 1
    recovered = recoveries[0]
    assert (
        recovered.actor.startswith("local:") and recovered.fields["bao_request_id"] == decrypts[0].request_id
    )
    assert (recovered.fields["key_name"], recovered.fields["key_version"]) == ("dataset/owned", 2)
    with sealed.open("rb") as src:
        header = read_header(src).raw
    assert recovered.fields["header_sha256"] == hashlib.sha256(header).hexdigest()
    # and the operator's command says the same over the ledger's entries and OpenBao's log file
    export = tmp_path / "ledger.jsonl"
    export.write_bytes(b"".join(entry_line(c) for c in _ledger(db)))
    code, out = run(
        capsys, "audit", "reconcile", "--bao-log", str(fresh_dev.server.audit_log), "--export", str(export)
    )
    assert code == 0 and out["ok"] and (out["decrypts"], out["matched"]) == (1, 1), out


def test_sealing_without_the_owner_identity_is_refused_before_openbao_and_a_refused_owner_is_recorded(
    fresh_dev: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "refused.db"
    monkeypatch.setenv("SOVEREIGN_DB", str(db))
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", fresh_dev.server.addr)
    monkeypatch.setenv("SOVEREIGN_BAO_ROLE_ID", fresh_dev.report.role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_SECRET_ID_FILE", fresh_dev.report.secret_id_file)
    for name in ("SOVEREIGN_BAO_TOKEN", "SOVEREIGN_BAO_OWNER_ROLE_ID", "SOVEREIGN_BAO_OWNER_SECRET_ID_FILE"):
        monkeypatch.delenv(name, raising=False)
    plain = tmp_path / "data.bin"
    plain.write_bytes(os.urandom(10_000))
    assert run(capsys, "key", "create", "dataset/x", "--kind", "dataset")[0] == 0
    assert fresh_dev.server.audit_log is not None
    bao_log = fresh_dev.server.audit_log.read_bytes()
    before = _ledger(db)

    # no owner identity: refused here, before any OpenBao call (its audit log does not grow), no entry
    code, out = run(capsys, "dataset", "encrypt", "--key", "dataset/x", str(plain), str(tmp_path / "o"))
    assert (code, out["error"]["code"]) == (1, "KMS_CONFIG_INVALID"), out
    assert "--owner-role-id" in out["error"]["hint"]
    assert fresh_dev.server.audit_log.read_bytes() == bao_log
    assert _ledger(db) == before and not (tmp_path / "o").exists()

    # an owner identity OpenBao refuses (a secret id it never issued): the attempt is on the record
    wrong = tmp_path / "wrong-secret-id"
    wrong.write_text("00000000-0000-0000-0000-000000000000\n")
    owner = ["--owner-role-id", fresh_dev.report.owner_role_id, "--owner-secret-id-file", str(wrong)]
    code, out = run(
        capsys, "dataset", "encrypt", "--key", "dataset/x", str(plain), str(tmp_path / "o"), *owner
    )
    assert code == 1 and out["error"]["code"].startswith("KMS_"), out
    after = [Entry.decode(c) for c in _ledger(db)[len(before) :]]
    assert [(e.kind, e.fields["key_name"]) for e in after] == [(Kind.OPERATOR_REFUSED, "dataset/x")]
    assert [r.code for r in after[0].reasons] == [out["error"]["code"]]
    assert after[0].actor.startswith("local:") and not (tmp_path / "o").exists()


def test_a_recovery_the_ledger_cannot_record_writes_no_plaintext(
    fresh_dev: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "full.db"
    monkeypatch.setenv("SOVEREIGN_DB", str(db))
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", fresh_dev.server.addr)
    monkeypatch.setenv("SOVEREIGN_BAO_ROLE_ID", fresh_dev.report.role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_SECRET_ID_FILE", fresh_dev.report.secret_id_file)
    monkeypatch.setenv("SOVEREIGN_BAO_OWNER_ROLE_ID", fresh_dev.report.owner_role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_OWNER_SECRET_ID_FILE", fresh_dev.report.owner_secret_id_file)
    monkeypatch.delenv("SOVEREIGN_BAO_TOKEN", raising=False)
    plain = tmp_path / "data.bin"
    plain.write_bytes(os.urandom(50_000))
    assert run(capsys, "key", "create", "dataset/r", "--kind", "dataset")[0] == 0
    sealed = tmp_path / "data.sealed"
    assert run(capsys, "dataset", "encrypt", "--key", "dataset/r", str(plain), str(sealed))[0] == 0
    before = _ledger(db)
    # the database refuses every new ledger row, as a full disk or a locked ledger would
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_appends BEFORE INSERT ON audit_entries "
            "BEGIN SELECT RAISE(ABORT, 'ledger refuses appends'); END"
        )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out = run(capsys, "dataset", "decrypt", "--key", "dataset/r", str(sealed), str(out_dir / "data"))
    assert code == 1 and out["error"]["code"].startswith("STORAGE_"), out
    assert "nothing was written" in out["error"]["message"]
    assert list(out_dir.iterdir()) == []  # no output, no temp file
    assert _ledger(db) == before
    # OpenBao did decrypt: reconcile shows that unrecorded decrypt rather than hiding it
    assert fresh_dev.server.audit_log is not None
    log = fresh_dev.server.audit_log.read_bytes().splitlines()
    decrypts = parse_bao_log(log, role_name=ROLE_NAME, path=f"{TRANSIT_MOUNT}/decrypt/{KEK_NAME}")
    result = reconcile(decrypts, _ledger(db))
    assert len(result.unmatched_decrypts) == 1 and result.matched == 0


def test_a_recovery_openbao_refuses_is_recorded_and_writes_nothing(
    fresh_dev: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "refused-recovery.db"
    monkeypatch.setenv("SOVEREIGN_DB", str(db))
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", fresh_dev.server.addr)
    monkeypatch.setenv("SOVEREIGN_BAO_ROLE_ID", fresh_dev.report.role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_OWNER_ROLE_ID", fresh_dev.report.owner_role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_OWNER_SECRET_ID_FILE", fresh_dev.report.owner_secret_id_file)
    monkeypatch.delenv("SOVEREIGN_BAO_TOKEN", raising=False)
    plain = tmp_path / "data.bin"
    plain.write_bytes(os.urandom(20_000))
    sealed = tmp_path / "data.sealed"
    monkeypatch.setenv("SOVEREIGN_BAO_SECRET_ID_FILE", fresh_dev.report.secret_id_file)
    assert run(capsys, "key", "create", "dataset/q", "--kind", "dataset")[0] == 0
    assert run(capsys, "dataset", "encrypt", "--key", "dataset/q", str(plain), str(sealed))[0] == 0
    before = _ledger(db)
    # the control plane's role with a secret id OpenBao never issued: refused by OpenBao, on the record
    wrong = tmp_path / "wrong-secret-id"
    wrong.write_text("00000000-0000-0000-0000-000000000000\n")
    monkeypatch.setenv("SOVEREIGN_BAO_SECRET_ID_FILE", str(wrong))
    code, out = run(capsys, "dataset", "decrypt", "--key", "dataset/q", str(sealed), str(tmp_path / "o"))
    assert code == 1 and out["error"]["code"].startswith("KMS_"), out
    after = [Entry.decode(c) for c in _ledger(db)[len(before) :]]
    assert [(e.kind, e.fields["key_name"], e.fields["key_version"]) for e in after] == [
        (Kind.OPERATOR_REFUSED, "dataset/q", 2)
    ]
    assert [r.code for r in after[0].reasons] == [out["error"]["code"]]
    assert not (tmp_path / "o").exists()
