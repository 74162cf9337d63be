"""``sovereign key`` and ``sovereign kms`` end to end against a real OpenBao dev server."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from kms.audit.entry import Entry, Kind
from kms.openbao.bootstrap import POLICY_HCL
from kms.sql import open_store
from kms.sql.audit_schema import audit_entries
from sovereign.cli import main

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration


@pytest.fixture
def env(kms_dev: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("SOVEREIGN_DB", str(db))
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", kms_dev.server.addr)
    monkeypatch.setenv("SOVEREIGN_BAO_ROLE_ID", kms_dev.report.role_id)
    monkeypatch.setenv("SOVEREIGN_BAO_SECRET_ID_FILE", kms_dev.report.secret_id_file)
    monkeypatch.delenv("SOVEREIGN_BAO_TOKEN", raising=False)
    return db


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any]:
    capsys.readouterr()  # drop earlier output
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_key_commands(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _json(capsys, ["key", "create", "weights", "--kind", "model", "--json"])
    assert code == 0 and out["key"]["current_version"] == 1
    assert main(["key", "rotate", "weights"]) == 0
    assert main(["key", "disable", "weights"]) == 0
    code, out = _json(capsys, ["key", "rotate", "weights", "--json"])
    assert code == 1 and out["error"]["code"] == "KEY_DISABLED"
    assert main(["key", "enable", "weights"]) == 0
    code, out = _json(capsys, ["key", "list", "--json"])
    # one vocabulary: the JSON says what the table says, and what 'admin keys' says (KEY_STATE_ENABLED)
    assert [(k["name"], k["state"], k["current_version"]) for k in out["keys"]] == [("weights", "enabled", 2)]
    code, out = _json(capsys, ["key", "show", "weights", "--json"])
    assert out["key"]["state"] == "enabled"
    assert main(["key", "list"]) == 0
    table = capsys.readouterr().out
    assert "enabled" in table and "active" not in table
    assert main(["key", "destroy", "weights"]) == 0
    capsys.readouterr()
    code, out = _json(capsys, ["key", "create", "weights", "--kind", "model", "--json"])
    assert code == 1 and out["error"]["code"] == "KEY_EXISTS"


def test_errors_print_code_and_hint(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["key", "create", "Bad Name", "--kind", "dataset"]) == 1
    err = capsys.readouterr().err
    assert "KEY_NAME_INVALID" in err and "hint:" in err
    assert main(["key", "create", "x", "--kind", "dataset", "--addr", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "KMS_UNAVAILABLE" in err and "http://127.0.0.1:9" in err


def test_rotate_kek_needs_an_operator_token(
    env: Path, kms_dev: Kms, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["key", "create", "ds", "--kind", "dataset"]) == 0
    capsys.readouterr()
    code, out = _json(capsys, ["key", "rotate-kek", "--json"])
    assert code == 1 and out["error"]["code"] == "KMS_CONFIG_INVALID"


def test_policy_command_prints_the_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kms", "policy"]) == 0
    assert capsys.readouterr().out == POLICY_HCL


def test_bootstrap_command_is_idempotent(
    kms_dev: Kms, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text(kms_dev.root_token)
    argv = [
        "kms",
        "bootstrap",
        "--addr",
        kms_dev.server.addr,
        "--token-file",
        str(token),
        "--out",
        str(tmp_path / "o"),
    ]
    code, out = _json(capsys, [*argv, "--json"])
    assert code == 0 and out["changed"] is False
    assert main(argv) == 0
    assert "new secret id issued" in capsys.readouterr().out


def ledger(db: Path) -> list[Entry]:
    store = open_store(db)
    try:
        with store.reader() as conn:
            rows = conn.execute(select(audit_entries.c.canonical).order_by(audit_entries.c.seq)).all()
    finally:
        store.close()
    return [Entry.decode(bytes(r.canonical)) for r in rows]


def test_every_local_key_change_leaves_a_ledger_entry(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["key", "create", "ledger/k", "--kind", "dataset"],
        ["key", "rotate", "ledger/k"],
        ["key", "disable", "ledger/k"],
        ["key", "enable", "ledger/k"],
        ["key", "destroy", "ledger/k"],
    ):
        assert main(argv) == 0, capsys.readouterr()
    assert main(["key", "rotate", "ledger/k"]) == 1  # refused: no change, no entry
    entries = [e for e in ledger(env) if e.fields.get("key_name") == "ledger/k"]
    assert [str(e.kind) for e in entries] == [
        "key.create", "key.rotate", "key.disable", "key.enable", "key.destroy"
    ]  # fmt: skip
    user = getpass.getuser()
    assert {(e.actor, e.fields["username"]) for e in entries} == {(f"local:{user}", user)}
    assert [e.fields["key_version"] for e in entries] == [1, 2, 2, 2, 2]
    assert entries[-1].fields["state"] == "destroyed"


def test_a_local_kek_rotation_leaves_a_ledger_entry(
    fresh_dev: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "kek.db"
    monkeypatch.setenv("SOVEREIGN_DB", str(db))
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", fresh_dev.server.addr)
    monkeypatch.setenv("SOVEREIGN_BAO_TOKEN", fresh_dev.root_token)
    monkeypatch.delenv("SOVEREIGN_BAO_ROLE_ID", raising=False)
    assert main(["key", "create", "ds", "--kind", "dataset"]) == 0
    code, out = _json(capsys, ["key", "rotate-kek", "--json"])
    assert code == 0, out
    kek = [e for e in ledger(db) if e.kind is Kind.KEK_ROTATE]
    assert (
        len(kek) == 1 and kek[0].fields["kek_version"] == out["kek_version"] and kek[0].fields["count"] == 1
    )
    assert kek[0].actor.startswith("local:")
