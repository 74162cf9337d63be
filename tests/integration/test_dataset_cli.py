"""``sovereign dataset encrypt|decrypt`` against a real OpenBao: the data owner's and custodian's side."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

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
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_encrypt_rotate_decrypt_each_version(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = env / "data.bin"
    plain.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    assert run(capsys, "key", "create", "dataset/imagenet", "--kind", "dataset")[0] == 0
    code, out = run(
        capsys, "dataset", "encrypt", "--key", "dataset/imagenet", str(plain), str(env / "v1.sealed")
    )
    assert code == 0 and out["version"] == 1
    assert run(capsys, "key", "rotate", "dataset/imagenet")[0] == 0
    code, out = run(
        capsys, "dataset", "encrypt", "--key", "dataset/imagenet", str(plain), str(env / "v2.sealed")
    )
    assert code == 0 and out["version"] == 2
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
