"""Replica processes for ``--processes N``: the same server, started N-1 more times on the same port.

The control plane is stateless between requests (nonces, request ids, grants, nodes and policy live in the
database; caches are re-checked at commit), so replicas need no coordination: the kernel spreads incoming
connections over the processes bound with SO_REUSEPORT (gRPC's default on Linux). Each replica is its own
interpreter, so the GIL no longer caps the node-facing throughput at one core.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Sequence

from kms.errors import Code, KmsError

READY = "listening on "


def start(command: Sequence[str], count: int, timeout: float = 60.0) -> list[subprocess.Popen[str]]:
    """Start ``count`` replicas running ``command``; return once each prints its ready line."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(count):
            proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            _await_ready(proc, timeout)
    except BaseException:
        stop(procs)
        raise
    return procs


def _await_ready(proc: subprocess.Popen[str], timeout: float) -> None:
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY):
                ready.set()
        ready.set()  # ended without the line: the check below reports it

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or proc.poll() is not None:
        raise KmsError(
            f"a replica did not start (exit status {proc.poll()})",
            code=Code.SERVER_CONFIG_INVALID,
            hint="run the same command with --processes 1 to see its error",
        )


def stop(procs: Sequence[subprocess.Popen[str]], grace: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
