"""``sovereign audit verify``: exit codes and output for a clean export and a tampered one."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.audit.checkpoint import LocalSigner
from kms.audit.entry import Entry, Kind
from kms.audit.export import ExportBuilder
from sovereign.cli import main

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    signer = LocalSigner(key_id="sovereign-audit")
    b = ExportBuilder(signer)
    body = []
    for i in range(10):
        body.append(b.add(Entry.create(i, T0, Kind.SERVER_START, actor="system").encode()))
        if i in (4, 9):
            body.append(b.checkpoint(T0 + timedelta(seconds=i)))
    lines = [b.header(), *body]
    export, key = tmp_path / "audit.jsonl", tmp_path / "audit.pub"
    export.write_bytes(b"".join(lines))
    public = Ed25519PublicKey.from_public_bytes(signer.public_key_bytes())
    key.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return export, key, lines


def test_clean_export_exits_zero(
    files: tuple[Path, Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key, _ = files
    assert main(["audit", "verify", str(export), "--public-key", str(key)]) == 0
    assert capsys.readouterr().out.startswith("OK 10 entries, 2 checkpoints, final size 10, root ")
    assert main(["audit", "verify", str(export), "--public-key", str(key), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["entries"], out["size"], out["key_id"]) == (True, 10, 10, "sovereign-audit")


def test_tampered_export_exits_one_with_code_and_line(
    files: tuple[Path, Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key, lines = files
    del lines[3]
    export.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(export), "--public-key", str(key), "--json"]) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert (err["code"], err["line"], err["index"]) == ("AUDIT_SEQUENCE_GAP", "4", "2")
    assert main(["audit", "verify", str(export), "--public-key", str(key)]) == 1
    assert "error: AUDIT_SEQUENCE_GAP: line 4" in capsys.readouterr().err


def test_unreadable_inputs_are_coded_errors(
    files: tuple[Path, Path, list[bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, key, _ = files
    assert main(["audit", "verify", str(tmp_path / "missing"), "--public-key", str(key)]) == 1
    assert "AUDIT_MALFORMED_EXPORT" in capsys.readouterr().err
    assert main(["audit", "verify", str(export), "--public-key", str(tmp_path / "nokey")]) == 1
    assert "AUDIT_KEY_INVALID" in capsys.readouterr().err


def test_runs_as_a_command(files: tuple[Path, Path, list[bytes]]) -> None:
    export, key, _ = files
    done = subprocess.run(
        [sys.executable, "-m", "sovereign", "audit", "verify", str(export), "--public-key", str(key)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK 10 entries")


def test_remote_actions_say_an_expired_sign_in_before_calling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from kms.auth.cache import CachedToken, save_token

    cache = tmp_path / "token.json"
    then = datetime.now(UTC) - timedelta(hours=2)
    save_token(CachedToken("https://idp.invalid", "sovereign", "sovereign", "t0ken", then, then), cache)
    # nothing listens on port 9: the refusal comes before any call
    conn = ["--server", "127.0.0.1:9", "--insecure", "--token-cache", str(cache), "--json"]
    assert main(["audit", "tail", *conn]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "AUTH_TOKEN_EXPIRED" and "sovereign login" in error["hint"]
    assert "t0ken" not in json.dumps(error)
