"""Debian packages a test needs (promtool, xmlsec1, chromium ...), installed by the test run itself.

CI and a fresh developer machine run as root with Debian's package index reachable; a package is
installed only when its binary is missing, and the package lists are refreshed only when the first
attempt fails (a fresh image may have none). Anything else fails the test with a message saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

_lock = threading.Lock()


class DebianPackageUnavailable(RuntimeError):
    """A needed Debian package is missing and could not be installed (the test fails with this)."""


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


def ensure_binary(binary: str, package: str) -> str:
    """The path of ``binary``; installs ``package`` (no recommends) first when it is not on PATH."""
    with _lock:
        found = shutil.which(binary)
        if found:
            return found
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise DebianPackageUnavailable(
                f"{binary} is missing: install Debian's {package} (needs root and apt-get)"
            )
        done = _apt("install", "-y", "--no-install-recommends", package)
        if done.returncode != 0:
            _apt("update")
            done = _apt("install", "-y", "--no-install-recommends", package)
        found = shutil.which(binary)
        if done.returncode != 0 or not found:
            raise DebianPackageUnavailable(f"apt-get install {package} failed:\n{done.stderr[-2000:]}")
        return found
