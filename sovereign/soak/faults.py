"""Faults on a seeded schedule, each injected, held, healed, and followed by a recovery measurement.

Kinds:

* ``serve-kill``: SIGKILL of ``sovereign serve``, then a restart on the same database and ports;
* ``serve-stop``: SIGSTOP (a stall: the process holds its sockets and its SQLite writer turn), SIGCONT;
* ``bao-seal``: OpenBao sealed through its API, unsealed with its key;
* ``bao-kill``: SIGKILL of OpenBao, restarted on its raft data and unsealed;
* ``disk-full``: the tmpfs holding the ledger's database filled to the last byte, then freed.

Not here (see docs/reliability.md): PostgreSQL restarts and raft leader loss (the replicas topology),
network partitions, and clock steps (the server has no injectable clock in dev mode).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from sovereign.soak.history import Window
from sovereign.soak.stack import Stack


class FaultKind(StrEnum):
    SERVE_KILL = "serve-kill"
    SERVE_STOP = "serve-stop"
    BAO_SEAL = "bao-seal"
    BAO_KILL = "bao-kill"
    DISK_FULL = "disk-full"


ALL_FAULTS = tuple(FaultKind)
# Decrypts this long before a SIGKILL may still have been waiting for their commit (release RPCs time
# out after a few seconds, a batch's decrypt-to-commit takes milliseconds).
INFLIGHT = timedelta(seconds=5)


class FaultError(RuntimeError):
    pass


def parse_faults(text: str) -> tuple[FaultKind, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    if text.strip().lower() == "all":
        return ALL_FAULTS
    out: list[FaultKind] = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        try:
            out.append(FaultKind(name))
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise FaultError(f"unknown fault {name!r}; known: {known}, all, none") from None
    return tuple(dict.fromkeys(out))


def schedule(
    kinds: tuple[FaultKind, ...], duration: float, seed: int, *, warmup: float, tail: float, interval: float
) -> list[tuple[float, FaultKind]]:
    """Fault start times (seconds into the run): every kind at least once, then more rounds while they fit
    one per ``interval``; kinds shuffled per round and each time jittered inside its slot, by ``seed``."""
    if not kinds:
        return []
    rng = random.Random(seed)  # noqa: S311 (a reproducible schedule, not a secret)
    active = max(duration - warmup - tail, 1.0)
    count = max(len(kinds), int(active // interval))
    order: list[FaultKind] = []
    while len(order) < count:
        batch = list(kinds)
        rng.shuffle(batch)
        order += batch
    slot = active / count
    return [(warmup + i * slot + rng.uniform(0, 0.25) * slot, kind) for i, kind in enumerate(order[:count])]


@dataclass
class FaultRecord:
    kind: FaultKind
    at: float  # seconds into the run, when injected
    healed: float = -1.0  # when the heal action finished
    served: float = -1.0  # first successful release after healing
    error: str = ""
    ops_ok: int = 0  # operations that began between injection and serving again, by outcome:
    ops_failed: int = 0  # shows the fault bit (a fault nothing noticed tested nothing)

    @property
    def recovered(self) -> bool:
        return self.served >= 0

    @property
    def recovery(self) -> float | None:
        """Heal to serving again."""
        return round(self.served - self.healed, 3) if self.recovered else None

    @property
    def outage(self) -> float | None:
        """Injection to serving again."""
        return round(self.served - self.at, 3) if self.recovered else None

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": str(self.kind),
            "at_s": round(self.at, 3),
            "healed_s": round(self.healed, 3),
            "served_s": round(self.served, 3),
            "recovery_s": self.recovery,
            "outage_s": self.outage,
            "recovered": self.recovered,
            "error": self.error,
            "ops_ok_during": self.ops_ok,
            "ops_failed_during": self.ops_failed,
        }


class Injector:
    """Performs faults on a stack; ``windows`` collects the spans where a decrypt may lose its commit."""

    def __init__(self, stack: Stack, *, hold: float, storage_errors: Callable[[], int] = lambda: 0) -> None:
        self.stack = stack
        self.hold = hold
        self.storage_errors = storage_errors  # refusals coded STORAGE_ERROR the clients saw so far
        self.windows: list[Window] = []
        self.lock = threading.Lock()  # held while a fault is in progress: the supervisor keeps off

    def inject(self, kind: FaultKind) -> None:
        """Inject ``kind`` and heal it; returns once the heal action is done (not yet serving)."""
        {
            FaultKind.SERVE_KILL: self._serve_kill,
            FaultKind.SERVE_STOP: self._serve_stop,
            FaultKind.BAO_SEAL: self._bao_seal,
            FaultKind.BAO_KILL: self._bao_kill,
            FaultKind.DISK_FULL: self._disk_full,
        }[kind]()

    def _serve_kill(self) -> None:
        proc = self.stack.plane.proc
        if proc is None or proc.poll() is not None:
            raise FaultError("sovereign serve is not running")
        now = datetime.now(UTC)
        proc.kill()
        proc.wait(30)
        self.windows.append(Window(FaultKind.SERVE_KILL.value, now - INFLIGHT, datetime.now(UTC)))
        self.stack.plane.start(timeout=90)

    def _serve_stop(self) -> None:
        proc = self.stack.plane.proc
        if proc is None or proc.poll() is not None:
            raise FaultError("sovereign serve is not running")
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(self.hold)
        finally:
            proc.send_signal(signal.SIGCONT)

    def _bao_seal(self) -> None:
        server = self.stack.bao.server
        self.stack.root_client().sys.seal()
        try:
            time.sleep(self.hold)
        finally:
            server.unseal()

    def _bao_kill(self) -> None:
        server = self.stack.bao.server
        pid = server.pid
        if pid is None or not server.running:
            raise FaultError("OpenBao is not running")
        now = datetime.now(UTC)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        # a decrypt OpenBao logged whose answer never reached the control plane has no ledger entry
        self.windows.append(Window(FaultKind.BAO_KILL.value, now - INFLIGHT, datetime.now(UTC)))
        server.start()

    def _disk_full(self) -> None:
        filler = self.stack.plane_dir / "filler.bin"
        start = datetime.now(UTC)
        seen = self.storage_errors()
        try:
            fill(filler)
            time.sleep(self.hold)
            # SQLite first reuses the space its files hold (the WAL restarts after a checkpoint): keep the
            # filesystem full, up to 4 holds, until a client has been refused for it
            deadline = time.monotonic() + 3 * self.hold
            while self.storage_errors() == seen and time.monotonic() < deadline:
                time.sleep(0.25)
        finally:
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()
            # commits that failed for lack of space may follow their decrypts by a batch's duration
            self.windows.append(
                Window(FaultKind.DISK_FULL.value, start, datetime.now(UTC) + timedelta(seconds=1))
            )


def fill(path: Path, chunk: int = 1 << 20) -> int:
    """Write zeros to ``path`` until its filesystem has no space left; the bytes written."""
    written = 0
    block = bytes(chunk)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = chunk
        while size >= 512:
            try:
                written += os.write(fd, block[:size])
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                size //= 2
        os.fsync(fd)
    finally:
        os.close(fd)
    return written
