"""Debian's ``xmlsec1`` (OpenSSL), the independent XML-DSig peer for RIM signatures; installed on demand.

A plain helper module (like vectorlib): the tests that compare RIM verdicts import it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest


def ensure_xmlsec1() -> str:
    """The ``xmlsec1`` binary; apt-get installs Debian's package when it is missing (as root)."""
    found = shutil.which("xmlsec1")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("xmlsec1 is missing and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "xmlsec1"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # a fresh image may have no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    found = shutil.which("xmlsec1")
    if not found:
        pytest.fail(f"apt-get install xmlsec1 failed:\n{done.stderr[-2000:]}")
    return found


def xmlsec1_accepts(binary: str, rim: Path, root_pem: Path, now: datetime) -> bool:
    """xmlsec1's verdict on one file: signature and chain to ``root_pem`` at ``now``."""
    when = now.strftime("%Y-%m-%d %H:%M:%S")
    command = [binary, "--verify", "--trusted-pem", str(root_pem), "--verification-time", when, str(rim)]
    done = subprocess.run(command, capture_output=True, check=False, timeout=60)
    return done.returncode == 0
