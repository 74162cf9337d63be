"""`sovereign node decrypt` keeps plaintext off disks: a disk-backed OUT (a path, or stdout redirected to
a file) is refused with PLAINTEXT_OUTPUT_UNSAFE before the node registers or asks for a key, unless
--force-non-tmpfs; tmpfs paths and a piped '-' pass. The real CLI in a subprocess, with no TEE and a
closed control-plane port: an output that passes the check fails at the next step, registration
(PROVIDER_UNAVAILABLE here; CONTROL_PLANE_UNAVAILABLE on TEE hardware).
The streaming itself, against a real server: tests/e2e/test_node_agent.py::test_cli_node_decrypt_streams_to_stdout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import pytest

from kms.envelope import encrypt_stream

REGISTRATION_FAILURES = {"PROVIDER_UNAVAILABLE", "CONTROL_PLANE_UNAVAILABLE"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sealed(tmp_path: Path) -> Path:
    path = tmp_path / "train.sov"
    with path.open("wb") as out:
        encrypt_stream(os.urandom(32), b"secret rows" * 100, out, key_ref="ds-train@v1", chunk_size=256)
    return path


def decrypt(
    sealed: Path, out: str, *extra: str, stdout: int | IO[Any] = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    args = ["node", "decrypt", str(sealed), out, "--server", f"127.0.0.1:{closed_port()}", "--insecure-dev"]
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args, "--node-name", "n1", "--timeout", "2", "--json", *extra],
        check=False,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def test_a_disk_backed_output_path_is_refused_before_registering(sealed: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.bin"  # tmp_path is on the machine's disk filesystem
    proc = decrypt(sealed, str(out))
    assert proc.returncode == 1, proc.stderr
    error = json.loads(proc.stdout)["error"]  # not a registration failure: the check came first
    assert error["code"] == "PLAINTEXT_OUTPUT_UNSAFE" and "not tmpfs" in error["message"]
    assert "--force-non-tmpfs" in error["hint"]
    assert not out.exists()


def test_stdout_redirected_to_a_disk_file_is_refused(sealed: Path, tmp_path: Path) -> None:
    redirect = tmp_path / "redirect.bin"
    with redirect.open("wb") as target:
        proc = decrypt(sealed, "-", stdout=target)
    assert proc.returncode == 1
    assert json.loads(proc.stderr)["error"]["code"] == "PLAINTEXT_OUTPUT_UNSAFE"  # reports go to stderr
    assert redirect.read_bytes() == b""


@pytest.mark.parametrize("how", ["pipe", "tmpfs", "forced"])
def test_allowed_outputs_pass_the_check(sealed: Path, tmp_path: Path, how: str) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        if how == "pipe":
            proc = decrypt(sealed, "-")
            report = proc.stderr
            assert proc.stdout == ""
        else:
            out = str(Path(shm) / "plain.bin") if how == "tmpfs" else str(tmp_path / "plain.bin")
            extra = ("--force-non-tmpfs",) if how == "forced" else ()
            proc = decrypt(sealed, out, *extra)
            report = proc.stdout
        assert proc.returncode == 1
        assert json.loads(report)["error"]["code"] in REGISTRATION_FAILURES


def test_node_run_checks_every_decrypt_output_before_registering(sealed: Path, tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        args = ["node", "run", "--decrypt", f"{sealed}:{shm}/a", "--decrypt", f"{sealed}:{tmp_path / 'b'}"]
        args += ["--server", f"127.0.0.1:{closed_port()}", "--insecure-dev", "--node-name", "n1", "--json"]
        proc = subprocess.run(
            [sys.executable, "-m", "sovereign", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        error = json.loads(proc.stdout)["error"]
        assert error["code"] == "PLAINTEXT_OUTPUT_UNSAFE" and str(tmp_path) in error["message"]
        forced = subprocess.run(
            [sys.executable, "-m", "sovereign", *args, "--force-non-tmpfs"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert json.loads(forced.stdout)["error"]["code"] in REGISTRATION_FAILURES
