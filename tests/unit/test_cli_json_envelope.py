"""Every command with ``--json`` prints one envelope (docs/cli.md): ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code", "message", "hint"}}``, nothing else on stdout.

The parser tree is walked: a new command with ``--json`` fails ``test_every_json_command_has_a_case``
until it gets a case here. Cases run in-process and offline (a closed port for the operator and node
commands: their error envelope); the operator commands' success envelopes against the real server are in
tests/e2e/test_operator_session.py, the long-running ones are listed in ELSEWHERE with where they are
checked."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kms.oidc.cache import CachedToken, save_token
from sovereign.cli import build_parser, main

CLOSED = "127.0.0.1:9"
OP = ["--server", CLOSED, "--ca", "{ca}", "--token-cache", "{cache}"]
NODE = ["--server", CLOSED, "--insecure-dev", "--node-name", "n1"]
BAO = ["--addr", "http://127.0.0.1:9", "--token-file", "{file}"]
DB = ["--db", "{tmp}/x.db"]

CASES: dict[str, list[str]] = {
    "admin nodes list": OP,
    "admin nodes get": ["n1", *OP],
    "admin nodes show": ["n1", *OP],
    "admin nodes approve": ["n1", "--group", "g", *OP],
    "admin nodes revoke": ["n1", "--reason", "r", *OP],
    "admin nodes suspend": ["n1", "--reason", "r", *OP],
    "admin keys list": OP,
    "admin keys create": ["k", "--kind", "dataset", *OP],
    "admin keys rotate": ["k", *OP],
    "admin keys disable": ["k", "--reason", "r", *OP],
    "admin keys enable": ["k", *OP],
    "admin keys destroy": ["k", "--confirm", "k", "--reason", "r", *OP],
    "admin policy get": OP,
    "admin policy put": ["{file}", "--expected-version", "1", *OP],
    "admin pending list": OP,
    "admin pending approve": ["c1", *OP],
    "admin pending reject": ["c1", "--comment", "no", *OP],
    "admin lineage-exception grant": ["model/main", "--group", "g", "--reason", "r", *OP],
    "admin lineage-exception withdraw": ["model/main", "--group", "g", "--reason", "r", *OP],
    "admin collateral import": ["{file}", *OP],
    "audit verify": ["{file}", "--public-key", "{file}"],
    "audit checkpoint": ["-o", "{tmp}/cp.json", *OP],
    "audit tail": OP,
    "audit query": OP,
    "audit export": ["-o", "{tmp}/export.jsonl", *OP],
    "audit proof": ["--leaf", "0", "--public-key", "{file}", *OP],
    "audit public-key": ["-o", "{tmp}/audit.pub.json", *OP],
    "audit reconcile": ["--bao-log", "{file}", "--export", "{file}"],
    "bundle build": ["--key", "{tmp}/missing.key", "--out", "{tmp}/out"],
    "bundle verify": ["{file}", "--public-key", "{file}"],
    "bundle install": [
        "{file}",
        "--public-key",
        "{file}",
        "--prefix",
        "{tmp}/p",
        "--config-dir",
        "{tmp}/c",
        "--data-dir",
        "{tmp}/d",
    ],
    "collateral import": ["{file}", "--store", "{tmp}/store"],
    "collateral list": ["--store", "{tmp}/store"],
    "collateral status": ["--store", "{tmp}/store"],
    "collateral fetch": ["--key", "{tmp}/missing.key", "--out", "{tmp}/b.bin"],
    "collateral bundle verify": ["{file}", "--signer-key", "{file}"],
    "dataset encrypt": ["{file}", "{tmp}/out", "--key", "k", *DB, *BAO],
    "dataset decrypt": ["{file}", "{tmp}/out", "--key", "k", *DB, *BAO],
    "dev down": ["--dir", "{tmp}/none"],
    "evidence verify": ["{file}"],
    "evidence simulate": ["--tee", "snp", "--out", "{tmp}/sim"],
    "key create": ["Bad Name", "--kind", "dataset", *DB, *BAO],
    "key rotate": ["k", *DB, *BAO],
    "key list": DB,
    "key show": ["k", *DB],
    "key disable": ["k", *DB],
    "key enable": ["k", *DB],
    "key destroy": ["k", *DB],
    "key rotate-kek": [*DB, *BAO],
    "kms bootstrap": [*BAO, "--out", "{tmp}/bao"],
    "login": [
        "--server-url",
        "http://127.0.0.1:9",
        "--realm",
        "r",
        "--client-id",
        "c",
        "--username",
        "u",
        "--password-stdin",
    ],
    "logout": ["--cache", "{tmp}/none.json"],
    "whoami": ["--cache", "{cache}"],
    "node register": NODE,
    "node fetch-key": ["k", "--out", "{tmp}/key", *NODE],
    "node decrypt": ["{file}", "{tmp}/out", *NODE],
    "node encrypt": ["--key", "k", "{file}", "{tmp}/out", *NODE],
    "node run": NODE,
    "policy check": ["{file}"],
    "audit lineage": ["--dataset", "dataset/a", *OP],
    "provenance get": ["--output", "0" * 64, "-o", "{tmp}/statement.json", *OP],
    "provenance keys": ["--out", "{tmp}/keys", *OP],
    "provenance verify": ["{file}", "--public-keys", "{tmp}"],
    "bundle rollback": ["--prefix", "{tmp}/no-install"],
    "bundle keygen": ["--out", "{tmp}/keys", "--name", "site"],
    "policy dry-run": ["{file}", "--nodes", "{file}"],
}
# Long-running or whole-stack commands, whose --json is checked where they run for real.
ELSEWHERE = {
    "demo": "tests/cli/test_cli_demo.py",
    "dev up": "tests/cli/test_cli_dev_up.py",
    "kms dev": "tests/cli/test_cli_dev_children.py",
    "node agent": "tests/e2e/test_resident_agent.py",
    "node exec": "tests/e2e/test_resident_agent.py",
}


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _leaves(child, (*path, name))


def test_every_json_command_has_a_case() -> None:
    with_json = {
        name for name, p in _leaves(build_parser()) if any("--json" in a.option_strings for a in p._actions)
    }
    assert with_json - CASES.keys() - ELSEWHERE.keys() == set()
    assert CASES.keys() <= with_json


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    now = datetime.now(UTC)
    cache = tmp_path / "token.json"
    save_token(CachedToken("http://127.0.0.1:9/", "r", "c", "a.b.c", now + timedelta(hours=1), now), cache)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMAo=\n-----END CERTIFICATE-----\n")
    file = tmp_path / "input.txt"
    file.write_text("not what any command expects\n")
    return {"tmp": str(tmp_path), "cache": str(cache), "ca": str(ca), "file": str(file)}


def check_envelope(doc: Any) -> None:
    assert isinstance(doc, dict) and isinstance(doc.get("ok"), bool), doc
    if doc["ok"]:
        assert "error" not in doc
    else:
        error = doc["error"]
        assert {"code", "message", "hint"} <= error.keys()
        assert all(isinstance(error[k], str) for k in ("code", "message", "hint"))
        assert error["code"] and error["message"] and not error["message"].startswith(error["code"] + ":")


@pytest.mark.parametrize("command", sorted(CASES))
def test_json_prints_one_envelope(
    command: str,
    places: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(places["tmp"])
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("pw\n"))
    for name in (
        "SOVEREIGN_CONFIG",
        "SOVEREIGN_BAO_ADDR",
        "SOVEREIGN_BAO_ROLE_ID",
        "SOVEREIGN_BAO_SECRET_ID_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    argv = [*command.split(), *(a.format(**places) for a in CASES[command]), "--json"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code != 70
    check_envelope(json.loads(out))


def test_operator_commands_without_a_ca_refuse_to_guess(
    places: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(places["tmp"])
    monkeypatch.setattr("kms.config.INSTALLED_CONFIG", Path(places["tmp"]) / "absent.toml")
    for name in ("SOVEREIGN_CONFIG", "SOVEREIGN_CA"):
        monkeypatch.delenv(name, raising=False)
    for command in (["audit", "tail"], ["admin", "keys", "list"]):
        assert main([*command, "--server", CLOSED, "--token-cache", places["cache"], "--json"]) == 1
        error = json.loads(capsys.readouterr().out)["error"]
        assert error["code"] == "REQUEST_INVALID" and "no CA to pin" in error["message"]
        assert "--ca" in error["hint"]
