"""Foreground dev commands leave no child behind: ``kms dev`` stopped by SIGTERM stops its OpenBao."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != b"Z":
            found.append(int(entry.name))
    return found


def wait_gone(text: str, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_kms_dev_stops_openbao_on_sigterm(tmp_path: Path) -> None:
    workdir = tmp_path / "bao"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sovereign", "kms", "dev", "--workdir", str(workdir), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        while lines[-1] and lines[-1].rstrip() != "}":  # one indented JSON document
            lines.append(proc.stdout.readline())
        ready = json.loads("".join(lines))
        assert ready["ok"] is True
        assert processes_mentioning(str(workdir)), "no bao server runs for this workdir"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert wait_gone(str(workdir)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in processes_mentioning(str(workdir)):
            os.kill(pid, signal.SIGKILL)
