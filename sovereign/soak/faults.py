"""Faults on a seeded schedule, each injected, held, healed, and followed by a recovery measurement.

Kinds (topology: single S, replicas R):

* ``serve-kill`` (S, R): SIGKILL of a ``sovereign serve`` (a replica picked by the seed), then a restart on
  the same database and ports;
* ``serve-abort`` (S, R): SIGABRT of a ``serve`` (it dies and, where ``sovereign.soak.cores`` enabled it,
  dumps core into its own folder for the key-material scan), then a restart like ``serve-kill``;
* ``serve-stop`` (S, R): SIGSTOP (a stall: the process holds its sockets and its writer turn), SIGCONT;
* ``bao-seal`` (S, R): OpenBao sealed through its API (R: the active member), unsealed with its key;
* ``bao-kill`` (S): SIGKILL of OpenBao, restarted on its raft data and unsealed;
* ``bao-leader-kill`` (R): SIGKILL of the active raft member; the others elect a leader; it is restarted,
  rejoins and is unsealed;
* ``pg-restart`` (R): PostgreSQL stopped in immediate mode (as a crash: no shutdown checkpoint) and
  started again (crash recovery from its WAL);
* ``partition-pg``, ``partition-bao`` (R): replica B's path to PostgreSQL or to OpenBao cut by a
  ``blackhole`` route in its network namespace (``sovereign.soak.netns``), then restored;
* ``disk-full`` (S): the tmpfs holding the ledger's database filled to the last byte, then freed;
* ``clock-step`` (S, R): one server's clock stepped forward, then back (``serve --dev-clock-file``), then
  restored; ledger times then run backwards while sequence numbers do not, and the checker judges
  order by sequence.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import hvac

from sovereign.soak.history import Window
from sovereign.soak.replicas import ReplicaStack
from sovereign.soak.stack import Stack

AnyStack = Stack | ReplicaStack


class FaultKind(StrEnum):
    SERVE_KILL = "serve-kill"
    SERVE_STOP = "serve-stop"
    SERVE_ABORT = "serve-abort"
    BAO_SEAL = "bao-seal"
    BAO_KILL = "bao-kill"
    DISK_FULL = "disk-full"
    CLOCK_STEP = "clock-step"
    BAO_LEADER_KILL = "bao-leader-kill"
    PG_RESTART = "pg-restart"
    PARTITION_PG = "partition-pg"
    PARTITION_BAO = "partition-bao"


K = FaultKind
SINGLE_FAULTS = (K.SERVE_KILL, K.SERVE_ABORT, K.SERVE_STOP, K.BAO_SEAL, K.BAO_KILL, K.DISK_FULL, K.CLOCK_STEP)
REPLICA_FAULTS = (
    K.SERVE_KILL, K.SERVE_ABORT, K.SERVE_STOP, K.BAO_SEAL, K.BAO_LEADER_KILL, K.PG_RESTART, K.PARTITION_PG,
    K.PARTITION_BAO, K.CLOCK_STEP,
)  # fmt: skip
FAULTS = {"single": SINGLE_FAULTS, "replicas": REPLICA_FAULTS}
ALL_FAULTS = SINGLE_FAULTS  # the single topology's (the suite's one-minute soak)
CLOCK_STEP_S = 90.0  # within the release skew (120 s): the servers keep granting with times out of order
# Decrypts this long before a SIGKILL may still have been waiting for their commit (release RPCs time
# out after a few seconds, a batch's decrypt-to-commit takes milliseconds).
INFLIGHT = timedelta(seconds=5)


class FaultError(RuntimeError):
    pass


def parse_faults(text: str, topology: str = "single") -> tuple[FaultKind, ...]:
    allowed = FAULTS[topology]
    if text.strip().lower() in ("", "none"):
        return ()
    if text.strip().lower() == "all":
        return allowed
    out: list[FaultKind] = []
    known = ", ".join(k.value for k in allowed)
    for name in (t.strip() for t in text.split(",") if t.strip()):
        try:
            kind = FaultKind(name)
        except ValueError:
            raise FaultError(f"unknown fault {name!r}; known for {topology}: {known}, all, none") from None
        if kind not in allowed:
            raise FaultError(f"fault {name!r} does not apply to the {topology} topology; known: {known}")
        out.append(kind)
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

    def __init__(
        self,
        stack: AnyStack,
        *,
        hold: float,
        storage_errors: Callable[[], int] = lambda: 0,
        seed: int = 1,
    ) -> None:
        self.stack = stack
        self.hold = hold
        self.storage_errors = storage_errors  # refusals coded STORAGE_ERROR the clients saw so far
        self.windows: list[Window] = []
        self.lock = threading.Lock()  # held while a fault is in progress: the supervisor keeps off
        self._rng = random.Random(seed ^ 0x5EED)  # noqa: S311 (which replica a fault hits, reproducibly)

    def inject(self, kind: FaultKind) -> int:
        """Inject ``kind`` and heal it; returns once the heal action is done (not yet serving), with the
        replica whose recovery to measure."""
        actions: dict[FaultKind, Callable[[], int]] = {
            FaultKind.SERVE_KILL: self._serve_kill,
            FaultKind.SERVE_ABORT: lambda: self._serve_kill(FaultKind.SERVE_ABORT),
            FaultKind.SERVE_STOP: self._serve_stop,
            FaultKind.BAO_SEAL: self._bao_seal,
            FaultKind.BAO_KILL: self._bao_kill,
            FaultKind.DISK_FULL: self._disk_full,
            FaultKind.CLOCK_STEP: self._clock_step,
            FaultKind.BAO_LEADER_KILL: self._bao_leader_kill,
            FaultKind.PG_RESTART: self._pg_restart,
            FaultKind.PARTITION_PG: lambda: self._partition("pg"),
            FaultKind.PARTITION_BAO: lambda: self._partition("bao"),
        }
        return actions[kind]()

    def _replica(self) -> int:
        return self._rng.randrange(self.stack.replicas)

    def _window(self, kind: FaultKind, start: datetime, end: datetime | None = None) -> None:
        self.windows.append(Window(kind.value, start, end or datetime.now(UTC) + timedelta(seconds=1)))

    def _serve_kill(self, kind: FaultKind = FaultKind.SERVE_KILL) -> int:
        """SIGKILL (never a core dump) or, for ``serve-abort``, SIGABRT (a core dump where enabled)."""
        i = self._replica()
        plane = self.stack.planes[i]
        proc = plane.proc
        if proc is None or proc.poll() is not None:
            raise FaultError(f"sovereign serve (replica {i}) is not running")
        now = datetime.now(UTC)
        proc.send_signal(signal.SIGABRT if kind is FaultKind.SERVE_ABORT else signal.SIGKILL)
        try:
            proc.wait(60)  # writing a core dump takes a while
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        self._window(kind, now - INFLIGHT, datetime.now(UTC))
        plane.start(timeout=90)
        return i

    def _serve_stop(self) -> int:
        i = self._replica()
        proc = self.stack.planes[i].proc
        if proc is None or proc.poll() is not None:
            raise FaultError(f"sovereign serve (replica {i}) is not running")
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(self.hold)
        finally:
            proc.send_signal(signal.SIGCONT)
        return i

    def _bao_seal(self) -> int:
        stack = self.stack
        if isinstance(stack, Stack):
            stack.root_client().sys.seal()
            try:
                time.sleep(self.hold)
            finally:
                stack.bao.server.unseal()
            return 0
        # the active member seals itself; a standby takes over; a request it was answering may be lost
        start = datetime.now(UTC)
        leader = stack.cluster.leader()
        hvac.Client(url=leader.addr, token=stack.root_token).sys.seal()
        try:
            time.sleep(self.hold)
        finally:
            leader.unseal()  # RaftNode: until active or standby
            self._window(FaultKind.BAO_SEAL, start - INFLIGHT)
        return self._replica()

    def _bao_kill(self) -> int:
        stack = self.stack
        if not isinstance(stack, Stack):
            raise FaultError("bao-kill is for the single topology (replicas: bao-leader-kill)")
        server = stack.bao.server
        pid = server.pid
        if pid is None or not server.running:
            raise FaultError("OpenBao is not running")
        now = datetime.now(UTC)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        # a decrypt OpenBao logged whose answer never reached the control plane has no ledger entry
        self._window(FaultKind.BAO_KILL, now - INFLIGHT, datetime.now(UTC))
        server.start()
        return 0

    def _bao_leader_kill(self) -> int:
        stack = self._replicas("bao-leader-kill")
        leader = stack.cluster.leader()
        pid = leader.pid
        if pid is None:
            raise FaultError("the active OpenBao member has no process")
        now = datetime.now(UTC)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while leader.running and time.monotonic() < deadline:
            time.sleep(0.05)
        self._window(FaultKind.BAO_LEADER_KILL, now - INFLIGHT, datetime.now(UTC))
        try:
            stack.cluster.wait_for_leader(timeout=60, not_=leader)
        finally:
            leader.start()  # rejoins from its raft data, unsealed
        return self._replica()

    def _pg_restart(self) -> int:
        stack = self._replicas("pg-restart")
        start = datetime.now(UTC)
        stack.pg.stop()  # immediate mode: a crash, recovered from the WAL on start
        try:
            time.sleep(1.0)
        finally:
            try:
                stack.pg_start()
            finally:
                self._window(FaultKind.PG_RESTART, start - INFLIGHT)
        return self._replica()

    def _partition(self, peer: str) -> int:
        stack = self._replicas(f"partition-{peer}")
        netns = stack.netns
        assert netns is not None
        kind = FaultKind.PARTITION_PG if peer == "pg" else FaultKind.PARTITION_BAO
        start = datetime.now(UTC)
        netns.partition(peer)
        try:
            time.sleep(self.hold)
        finally:
            netns.heal(peer)
            # a request B sent into the cut and then gave up on is retransmitted by TCP after the heal
            # (exponential backoff: the next try comes at most about the cut's length later) and may
            # then be decrypted with nobody waiting for the answer
            healed = datetime.now(UTC)
            self._window(kind, start - INFLIGHT, healed + timedelta(seconds=self.hold + 1))
        return stack.replicas - 1  # the replica in the namespace

    def _replicas(self, what: str) -> ReplicaStack:
        if not isinstance(self.stack, ReplicaStack):
            raise FaultError(f"{what} is for the replicas topology")
        return self.stack

    def _clock_step(self) -> int:
        i = self._replica()
        path = self.stack.clock_file(i)
        try:
            for offset in (CLOCK_STEP_S, -CLOCK_STEP_S):
                write_offset(path, offset)
                time.sleep(self.hold / 2)
        finally:
            write_offset(path, 0.0)
        return i

    def _disk_full(self) -> int:
        stack = self.stack
        if not isinstance(stack, Stack):
            raise FaultError("disk-full is for the single topology (the ledger's SQLite on a tmpfs)")
        filler = stack.plane_dir / "filler.bin"
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
        # no orphan window: a decrypt whose commit failed for lack of space gets its release.deny once
        # the space is back (kms.usecases.unrecorded), so the checker holds every such decrypt to that
        return 0


def write_offset(path: Path, seconds: float) -> None:
    """Replace the dev clock file in one step (the server never reads a half-written number)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{seconds}\n")
    os.replace(tmp, path)


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
