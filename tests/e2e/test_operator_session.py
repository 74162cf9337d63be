"""Operator sessions and output against the real server and the dev realm (Keycloak stand-in):
``sovereign login`` keeps the refresh token, admin and audit commands refresh the access token before it
expires and save the new one; an ended session is AUTH_TOKEN_EXPIRED with the login command. Then the
``--json`` envelope of the operator commands and their tables for people."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from e2e.operators import StandinRealm
from e2e.test_operator_auth_cli import admin, login, sovereign
from e2e.world import ROOT, ServerProcess
from oidc.provider import CLIENT_ID, REALM

from kms.oidc.cache import read_cached_token, save_token


def _age(cache: Path, **changes: object) -> None:
    token = read_cached_token(cache)
    save_token(dataclasses.replace(token, **changes), cache)  # type: ignore[arg-type]


def test_login_keeps_a_refresh_token_and_commands_refresh_before_expiry(
    server: ServerProcess, realm: StandinRealm, tmp_path: Path
) -> None:
    cache = tmp_path / "alice.json"
    login(realm, "alice", cache)
    first = read_cached_token(cache)
    assert first.refresh_token and first.refresh_expires_at is not None
    assert "refresh_token" not in repr(first) and first.refresh_token not in repr(first)
    who = sovereign(["whoami", "--json"], cache)
    assert who.returncode == 0 and json.loads(who.stdout)["refresh"].startswith("automatic")

    # about to expire (less than the margin left): refreshed before the call
    _age(cache, expires_at=datetime.now(UTC) + timedelta(seconds=20))
    listed = admin(server, cache, "keys", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    second = read_cached_token(cache)
    assert second.access_token != first.access_token
    assert second.refresh_token != first.refresh_token  # rotated, and saved
    assert second.expires_at > datetime.now(UTC) + timedelta(seconds=60)

    # already expired locally: refreshed too, and the audit commands do the same (carol: auditor)
    _age(cache, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    assert admin(server, cache, "nodes", "list").returncode == 0
    assert read_cached_token(cache).access_token != second.access_token
    auditor = tmp_path / "carol.json"
    login(realm, "carol", auditor)
    before = read_cached_token(auditor)
    _age(auditor, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    where = ["--server", f"127.0.0.1:{server.admin_port}", "--ca", str(server.ca)]
    tail = sovereign(["audit", "tail", "-n", "1", "--json", *where], auditor)
    assert tail.returncode == 0, tail.stdout + tail.stderr
    assert json.loads(tail.stdout)["ok"] is True
    assert read_cached_token(auditor).access_token != before.access_token


def test_an_ended_session_asks_to_sign_in_again(
    server: ServerProcess, realm: StandinRealm, tmp_path: Path
) -> None:
    cache = tmp_path / "bob.json"
    login(realm, "bob", cache)
    _age(cache, expires_at=datetime.now(UTC) - timedelta(minutes=1), refresh_token="not-a-refresh-token")
    run = admin(server, cache, "keys", "list")
    assert run.returncode == 1
    error = json.loads(run.stdout)["error"]
    assert error["code"] == "AUTH_TOKEN_EXPIRED" and "sovereign login" in error["hint"]
    assert "not-a-refresh-token" not in run.stdout + run.stderr


def test_operator_commands_share_one_json_envelope_and_read_as_tables(
    server: ServerProcess, realm: StandinRealm, tmp_path: Path
) -> None:
    cache = tmp_path / "alice.json"
    login(realm, "alice", cache)
    for args in (("nodes", "list"), ("keys", "list"), ("policy", "get"), ("pending", "list")):
        run = admin(server, cache, *args)
        doc = json.loads(run.stdout)
        assert run.returncode == 0 and doc["ok"] is True and "error" not in doc, (args, run.stdout)
    refused = admin(server, cache, "keys", "create", "dataset/train", "--kind", "dataset")
    doc = json.loads(refused.stdout)
    assert refused.returncode == 1 and doc["ok"] is False
    assert set(doc["error"]) >= {"code", "message", "hint"}
    assert not doc["error"]["message"].startswith(doc["error"]["code"])  # the code is said once

    where = ["--server", f"127.0.0.1:{server.admin_port}", "--ca", str(server.ca)]
    keys = sovereign(["admin", "keys", "list", *where], cache)
    assert keys.returncode == 0 and keys.stdout.split()[:5] == [
        "NAME",
        "KIND",
        "STATE",
        "VERSION",
        "UPDATED_AT",
    ]
    assert "dataset/train" in keys.stdout and "enabled" in keys.stdout and "KEY_STATE_" not in keys.stdout
    nodes = sovereign(["admin", "nodes", "list", *where], cache)
    assert nodes.returncode == 0 and "LEASE_EXPIRES" in nodes.stdout.splitlines()[0]
    assert "NODE_STATE_" not in nodes.stdout and "['" not in nodes.stdout
    active = json.loads(admin(server, cache, "policy", "get").stdout)
    proposed = tmp_path / "policy.toml"
    proposed.write_text(active["toml"] + "\n# reviewed by alice\n")
    dry = sovereign(
        [
            "admin",
            "policy",
            "put",
            str(proposed),
            "--expected-version",
            active["version"],
            "--dry-run",
            *where,
        ],
        cache,
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run: nothing changed" in dry.stdout and "+# reviewed by alice" in dry.stdout
    assert "nodes re-appraised" in dry.stdout and not dry.stdout.lstrip().startswith("{")
    broken = tmp_path / "broken.toml"
    broken.write_text("schema = 1\n[groups\n")
    bad = sovereign(["admin", "policy", "put", str(broken), "--expected-version", "1", *where], cache)
    assert bad.returncode == 1 and f"error: POLICY_INVALID: {broken}" in bad.stderr

    # who acted reads as a username in the table (the ledger records the subject too)
    auditor = tmp_path / "carol.json"
    login(realm, "carol", auditor)
    query = sovereign(["audit", "query", "--limit", "1000", *where], auditor)
    assert query.returncode == 0 and "WHO" in query.stdout.splitlines()[0]
    assert "alice" in query.stdout


def test_device_login_end_to_end_then_commands_refresh(
    server: ServerProcess, realm: StandinRealm, tmp_path: Path
) -> None:
    """``sovereign login`` with the device authorization grant, as a separate process polling the realm
    at the interval it asks for: the operator confirms the code (the stand-in's test endpoint plays the
    browser), the process saves access and refresh tokens, and an audit command against the real server
    works with them and refreshes them once they run out."""
    cache = tmp_path / "carol-device.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    env["SOVEREIGN_TOKEN_CACHE"] = str(cache)
    argv = [sys.executable, "-m", "sovereign", "login", "--server-url", realm.standin.server_url,
            "--realm", REALM, "--client-id", CLIENT_ID, "--device"]  # fmt: skip
    with subprocess.Popen(
        argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        shown = []
        for line in proc.stderr:  # the prompt comes before the first poll
            shown.append(line)
            code = re.search(r"confirm the code (\S+)", line)
            if code:
                realm.standin.approve_device(code.group(1), "carol")
                break
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(shown) + err
    assert any(line.startswith("open http") for line in shown)
    token = read_cached_token(cache)
    assert token.refresh_token and token.refresh_expires_at is not None
    where = ["--server", f"127.0.0.1:{server.admin_port}", "--ca", str(server.ca)]
    tail = sovereign(["audit", "tail", "-n", "1", "--json", *where], cache)
    assert tail.returncode == 0 and json.loads(tail.stdout)["ok"] is True, tail.stdout + tail.stderr
    _age(cache, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    again = sovereign(["audit", "tail", "-n", "1", "--json", *where], cache)
    assert again.returncode == 0, again.stdout + again.stderr
    assert read_cached_token(cache).access_token != token.access_token
