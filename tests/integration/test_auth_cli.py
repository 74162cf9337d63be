"""``sovereign login|whoami|logout`` against the Keycloak stand-in; the token cache's permissions."""

from __future__ import annotations

import io
import json
import re
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from oidc.provider import CLIENT_ID, REALM, Standin, keycloak_fixture, password_of  # noqa: F401

from kms.oidc.cache import CachedToken, load_cached_token, read_cached_token, save_token
from kms.oidc.errors import AuthError, Code
from kms.oidc.tokens import keycloak_validator
from sovereign.cli import main

pytestmark = pytest.mark.integration


def login_args(keycloak: Standin, cache: Path, *extra: str) -> list[str]:
    return [
        "login", "--server-url", keycloak.server_url, "--realm", REALM, "--client-id", CLIENT_ID,
        "--cache", str(cache), *extra,
    ]  # fmt: skip


def test_password_login_caches_a_private_token_the_server_accepts(
    keycloak: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cfg" / "sovereign" / "token.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(password_of("alice") + "\n"))
    assert main(login_args(keycloak, cache, "--username", "alice", "--password-stdin", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["username"] == "alice" and "sovereign-admin" in out["realm_roles"] and not out["expired"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert "access_token" not in capsys.readouterr().out

    cached = load_cached_token(cache, now=datetime.now(UTC))
    assert cached.access_token not in repr(cached)
    actor = keycloak_validator(keycloak.server_url, REALM, CLIENT_ID).validate(
        dict(cached.metadata())["authorization"].removeprefix("Bearer "), now=datetime.now(UTC)
    )
    assert actor.username == "alice"

    assert main(["whoami", "--cache", str(cache)]) == 0
    shown = capsys.readouterr().out
    assert "alice" in shown and "sovereign-key-custodian" in shown and "left" in shown
    assert main(["logout", "--cache", str(cache)]) == 0
    assert not cache.exists()
    assert main(["whoami", "--cache", str(cache)]) == 1
    assert "AUTH_NOT_LOGGED_IN" in capsys.readouterr().err


def test_wrong_password_is_a_clear_refusal(
    keycloak: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    cache = tmp_path / "token.json"
    assert main(login_args(keycloak, cache, "--username", "alice", "--password-stdin")) == 1
    err = capsys.readouterr().err
    assert "AUTH_LOGIN_FAILED" in err and "invalid_grant" in err and "wrong" not in err
    assert not cache.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    args = login_args(keycloak, cache, "--username", "alice", "--password-stdin")
    args[args.index("--realm") + 1] = "no-such-realm"
    assert main(args) == 1
    assert "AUTH_PROVIDER_UNAVAILABLE" in capsys.readouterr().err


def test_device_login(
    keycloak: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    polls: list[float] = []

    def operator_confirms_in_a_browser(seconds: float) -> None:
        polls.append(seconds)
        code = re.search(r"confirm the code (\S+)", capsys.readouterr().err)
        if code:
            keycloak.approve_device(code.group(1), "carol")

    monkeypatch.setattr("sovereign.cli.login.time", SimpleNamespace(sleep=operator_confirms_in_a_browser))
    cache = tmp_path / "token.json"
    assert main(login_args(keycloak, cache, "--device", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["realm_roles"] == sorted(
        ["sovereign-auditor", "default-roles-sovereign", "offline_access"]
    )
    assert polls == [5]  # one pending answer, then the token
    assert read_cached_token(cache).realm == REALM


def test_expired_cache_says_what_to_run(
    keycloak: Standin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = int(time.time())
    expired = keycloak.mint(claims={"exp": t - 60, "iat": t - 400})
    cache = tmp_path / "token.json"
    save_token(
        CachedToken(
            keycloak.server_url,
            REALM,
            CLIENT_ID,
            expired,
            datetime.fromtimestamp(t - 60, UTC),
            datetime.now(UTC),
        ),
        cache,
    )
    with pytest.raises(AuthError) as info:
        load_cached_token(cache, now=datetime.now(UTC))
    assert info.value.code is Code.AUTH_TOKEN_EXPIRED
    assert f"sovereign login --server-url {keycloak.server_url} --realm {REALM}" in info.value.hint
    assert main(["whoami", "--cache", str(cache)]) == 1
    err = capsys.readouterr()
    assert "EXPIRED" in err.out and "sovereign login --server-url" in err.err


def test_cache_readable_by_others_is_refused(keycloak: Standin, tmp_path: Path) -> None:
    cache = tmp_path / "token.json"
    save_token(
        CachedToken(
            keycloak.server_url, REALM, CLIENT_ID, keycloak.mint(), datetime.now(UTC), datetime.now(UTC)
        ),
        cache,
    )
    cache.chmod(0o644)
    with pytest.raises(AuthError) as info:
        read_cached_token(cache)
    assert info.value.code is Code.AUTH_CACHE_INSECURE
    cache.chmod(0o600)
    cache.write_text("{}")
    with pytest.raises(AuthError) as info:
        read_cached_token(cache)
    assert info.value.code is Code.AUTH_CACHE_INVALID
