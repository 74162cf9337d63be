"""The operator CLI end to end: ``sovereign login`` at the Keycloak stand-in, then ``sovereign admin``
commands against the real server with the cached token; the two-person rule across two users; an
expired cache refused locally with the command to sign in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from e2e.operators import StandinRealm
from e2e.world import ROOT, ServerProcess
from oidc.provider import CLIENT_ID, REALM, password_of

from kms.oidc.cache import CachedToken, save_token


def sovereign(args: list[str], cache: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    env["SOVEREIGN_TOKEN_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def login(realm: StandinRealm, username: str, cache: Path) -> None:
    run = sovereign(
        ["login", "--server-url", realm.standin.server_url, "--realm", REALM, "--client-id", CLIENT_ID,
         "--username", username, "--password-stdin"],
        cache, stdin=password_of(username) + "\n",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


def admin(server: ServerProcess, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--server", f"127.0.0.1:{server.admin_port}", "--ca", str(server.ca), "--json"]
    return sovereign(["admin", *args, *where], cache)


def test_login_then_admin_commands_with_two_person_rule(
    server: ServerProcess, realm: StandinRealm, tmp_path: Path
) -> None:
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    login(realm, "alice", alice)
    login(realm, "bob", bob)
    listed = admin(server, alice, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert "dataset/train" in [k["name"] for k in json.loads(listed.stdout)["keys"]]
    held = admin(
        server, alice, "keys", "destroy", "model-main", "--confirm", "model-main", "--reason", "retired"
    )
    assert held.returncode == 0, held.stderr
    change = json.loads(held.stdout)["pending_change"]
    assert change["method"] == "DestroyKey" and change["state"] == "PENDING_CHANGE_STATE_PENDING"
    same = admin(server, alice, "pending", "approve", change["change_id"])
    assert same.returncode == 1 and json.loads(same.stdout)["error"]["code"] == "AUTH_SAME_APPROVER"
    done = admin(server, bob, "pending", "approve", change["change_id"], "--comment", "agreed")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["key"]["state"] == "KEY_STATE_DESTROYED"


def test_expired_cache_is_refused_with_the_login_command(server: ServerProcess, tmp_path: Path) -> None:
    cache = tmp_path / "old.json"
    past = datetime.now(UTC) - timedelta(hours=1)
    save_token(
        CachedToken("http://kc.example/", REALM, CLIENT_ID, "x.y.z", past, past - timedelta(minutes=5)), cache
    )
    run = admin(server, cache, "nodes", "list")
    assert run.returncode == 1
    error = json.loads(run.stdout)["error"]
    assert error["code"] == "AUTH_TOKEN_EXPIRED" and "sovereign login" in error["hint"]


def test_no_cached_token_is_a_clear_error(server: ServerProcess, tmp_path: Path) -> None:
    run = admin(server, tmp_path / "none.json", "policy", "get")
    assert run.returncode == 1 and json.loads(run.stdout)["error"]["code"] == "AUTH_NOT_LOGGED_IN"
