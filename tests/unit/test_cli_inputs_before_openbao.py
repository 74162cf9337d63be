"""Key lifecycle commands and ``dataset encrypt`` refuse bad input with its code before any OpenBao
call: the OpenBao address is a listening socket that no one answers, and no connection reaches it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.sql import open_store
from sovereign.cli import main


@pytest.fixture
def bao_listener() -> Iterator[socket.socket]:
    """An address that would accept a TCP connection (so a call would be seen), never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def contacted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.fixture
def env(tmp_path: Path, bao_listener: socket.socket) -> dict[str, Path | str]:
    token = tmp_path / "token"
    token.write_text("s.not-a-real-token")
    db = tmp_path / "keys.db"
    open_store(db)  # an existing (empty) catalogue: the commands that only open one get that far
    (tmp_path / "in.bin").write_bytes(b"data")
    addr = f"http://127.0.0.1:{bao_listener.getsockname()[1]}"
    return {"db": db, "token": token, "addr": addr, "tmp": tmp_path}


def bao(env: dict[str, Path | str]) -> list[str]:
    return ["--db", str(env["db"]), "--addr", str(env["addr"]), "--token-file", str(env["token"]), "--json"]


CASES: dict[str, tuple[list[str], str]] = {
    "key create": (["key", "create", "Bad Name", "--kind", "dataset"], "KEY_NAME_INVALID"),
    "key rotate": (["key", "rotate", "../etc"], "KEY_NAME_INVALID"),
    "key disable": (["key", "disable", "Bad Name"], "KEY_NAME_INVALID"),
    "dataset encrypt, bad key name": (["dataset", "encrypt", "{in}", "{tmp}/out", "--key", "Bad Name"], "KEY_NAME_INVALID"),
    "dataset encrypt, no output folder": (
        ["dataset", "encrypt", "{in}", "{tmp}/no-such-folder/out", "--key", "dataset/train"],
        "STORAGE_ERROR",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_with_its_code_before_openbao_is_contacted(
    name: str,
    env: dict[str, Path | str],
    bao_listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, code = CASES[name]
    argv = [
        a.replace("{in}", str(Path(env["tmp"]) / "in.bin")).replace("{tmp}", str(env["tmp"])) for a in argv
    ]
    with_bao = argv[:2] != ["key", "disable"]
    assert main([*argv, *(bao(env) if with_bao else ["--db", str(env["db"]), "--json"])]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["error"]["code"] == code
    assert not contacted(bao_listener)


def test_a_bad_name_is_reported_before_missing_openbao_credentials_and_makes_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in (
        "SOVEREIGN_BAO_TOKEN",
        "SOVEREIGN_BAO_TOKEN_FILE",
        "SOVEREIGN_BAO_ROLE_ID",
        "SOVEREIGN_BAO_ADDR",
    ):
        monkeypatch.delenv(var, raising=False)
    db = tmp_path / "new.db"
    assert main(["key", "create", "Bad Name", "--kind", "dataset", "--db", str(db), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "KEY_NAME_INVALID"
    assert not db.exists()
