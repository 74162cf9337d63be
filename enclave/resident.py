"""The resident node agent: one registration kept alive, keys held in memory, handed to local workloads.

``ResidentAgent`` owns a ``NodeAgent`` (identity, provider, control-plane client) and one background
thread that:

- registers (retrying with jittered exponential backoff while the control plane is unreachable);
- renews the lease at a jittered point between 50% and 75% of its life, with fresh evidence;
- re-registers with a fresh identity and fresh evidence when a renewal is refused (other than for an
  operator's revocation or suspension) or the control plane no longer knows the node;
- re-checks a held key every ``check_interval`` so that a revocation or suspension is seen without
  waiting for the next renewal.

A revoked or suspended node drops every key at once and answers ``AGENT_NODE_REVOKED`` from then on
(it does not re-register: an operator restarts it deliberately); with ``revocation_action =
"terminate"`` it also signals the workloads attached to it (``attach``: the processes ``sovereign node
exec`` started). Keys are handed out only while the lease is current. Nothing here writes a key to disk
or a log.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from attestation.coded import CodedError
from enclave.agent import Clock, NodeAgent, system_clock
from enclave.client import ControlPlaneError, NodeState, Registration
from enclave.errors import NodeCode, NodeError
from enclave.release_request import ReleasedKey, check_key_name, check_purpose
from enclave.workload import agent_api
from enclave.workload.output_report import OUTPUT_REFUSED, OutputReport

log = logging.getLogger(__name__)

REVOCATION_ACTIONS = ("deny", "terminate")
# Renewal refusals that mean an operator (or the policy) took the node out: never re-register for them.
_OPERATOR_REASONS = frozenset(
    {
        "NODE_NOT_RENEWABLE",
        "NODE_SUSPENDED_BY_OPERATOR",
        "NODE_REVOKED_BY_OPERATOR",
        "NODE_SUSPENDED_BY_POLICY",
    }
)
_NODE_OUT = frozenset({"RELEASE_NODE_NOT_ATTESTED"})


class AgentState(StrEnum):
    STARTING = "STARTING"
    ATTESTED = "ATTESTED"
    LAPSED = "LAPSED"  # the lease ended before it could be renewed; re-attesting
    PENDING = "PENDING"  # registered, waiting for an operator's approval (renewed until then)
    REVOKED = "REVOKED"
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class Timing:
    check_interval: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    renew_low: float = 0.5  # renew between these fractions of the lease's life
    renew_high: float = 0.75
    terminate_grace: float = 5.0


class Refused(CodedError):
    """A local request the agent refuses; ``code`` is one of ``agent_api``'s refusal codes."""

    def to_reply(self) -> dict[str, Any]:
        return agent_api.refusal(self.code, self.message, self.hint)


@dataclass
class Counters:
    """What the agent did since it started (``status`` and the Prometheus endpoint read them)."""

    registrations: int = 0
    renewals: int = 0
    renewal_failures: int = 0
    handouts: int = 0
    refusals: int = 0
    by_uid: dict[int, int] = field(default_factory=dict)
    by_key: dict[tuple[str, str], int] = field(default_factory=dict)  # (key name, purpose) -> handouts
    refusals_by_reason: dict[str, int] = field(default_factory=dict)
    chunks: dict[tuple[str, str], int] = field(default_factory=dict)  # (key name, open|seal) -> chunks
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def handed(self, uid: int, key_name: str, purpose: str) -> None:
        with self._lock:
            self.handouts += 1
            self.by_uid[uid] = self.by_uid.get(uid, 0) + 1
            self.by_key[(key_name, purpose)] = self.by_key.get((key_name, purpose), 0) + 1

    def refused(self, reason: str) -> None:
        with self._lock:
            self.refusals += 1
            self.refusals_by_reason[reason] = self.refusals_by_reason.get(reason, 0) + 1

    def chunk(self, key_name: str, op: str) -> None:
        with self._lock:
            self.chunks[(key_name, op)] = self.chunks.get((key_name, op), 0) + 1

    def snapshot(self) -> Counters:
        with self._lock:
            return Counters(
                self.registrations,
                self.renewals,
                self.renewal_failures,
                self.handouts,
                self.refusals,
                dict(self.by_uid),
                dict(self.by_key),
                dict(self.refusals_by_reason),
                dict(self.chunks),
            )


class ResidentAgent:
    """See the module doc. ``make_agent()`` returns a fresh ``NodeAgent`` (new identity) each call."""

    def __init__(
        self,
        make_agent: Callable[[], NodeAgent],
        *,
        revocation_action: str = "deny",
        timing: Timing = Timing(),
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        if revocation_action not in REVOCATION_ACTIONS:
            raise NodeError(
                f"revocation_action {revocation_action!r} is not one of {REVOCATION_ACTIONS}",
                code=NodeCode.CONFIG_INVALID,
            )
        self._make_agent = make_agent
        self.revocation_action = revocation_action
        self.timing = timing
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._agent: NodeAgent | None = None
        self._keys: dict[tuple[str, int, str], ReleasedKey] = {}
        self._latest: dict[tuple[str, str], int] = {}
        self._attached: set[int] = set()
        self._on_drop: list[Callable[[], None]] = []
        self.state = AgentState.STARTING
        self.counters = Counters()
        self.last_error: NodeError | None = None
        self._ready = threading.Event()
        self._attempted = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew_at: datetime = clock()

    def __repr__(self) -> str:
        return f"ResidentAgent(state={self.state.value}, node_id={self.node_id!r})"

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        agent = self._agent
        return agent.node_id if agent is not None else ""

    @property
    def registration(self) -> Registration | None:
        agent = self._agent
        return agent.registration if agent is not None else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="node-agent-lease", daemon=True)
        self._thread.start()

    def wait_first_attempt(self, timeout: float | None = None) -> bool:
        """True if the first registration attempt left the node ATTESTED; False once it did not (the
        reason is in ``last_error``), without waiting for the retries."""
        self._attempted.wait(timeout)
        return self.state is AgentState.ATTESTED

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the first registration was ATTESTED (or the agent gave up / was revoked)."""
        self._ready.wait(timeout)
        return self.state is AgentState.ATTESTED

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._drop_keys()
            self.state = AgentState.STOPPED
            agent, self._agent = self._agent, None
        if agent is not None:
            agent.client.close()

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (or a wake-up); True if the agent is stopping."""
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()
        return self._stop.is_set()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.timing.backoff_max, self.timing.backoff_initial * (2 ** min(attempt, 16)))
        return float(ceiling * self._rng.uniform(0.5, 1.0))

    def _run(self) -> None:
        attempt = 0
        next_check = 0.0
        while not self._stop.is_set():
            if self.state is AgentState.REVOKED:
                self._sleep(3600)
                continue
            try:
                if self.state is AgentState.PENDING:
                    self._await_approval()
                elif self.state is not AgentState.ATTESTED:
                    self._register()
                elif self._now() >= self._renew_at:
                    self._renew()
                elif time.monotonic() >= next_check:
                    self._probe()
                    next_check = time.monotonic() + self.timing.check_interval
                attempt = 0
            except NodeError as exc:
                self.last_error = exc
                attempt += 1
                log.warning("node agent: %s (retry %d)", exc, attempt)
                self._expire_if_lapsed()
                if self._sleep(self._backoff(attempt)):
                    return
                continue
            finally:
                self._attempted.set()
                if self.state in (AgentState.ATTESTED, AgentState.REVOKED):
                    self._ready.set()
            if self.state is AgentState.ATTESTED:
                until_renew = (self._renew_at - self._now()).total_seconds()
                until_check = next_check - time.monotonic()
                self._sleep(min(until_renew, until_check))

    def _now(self) -> datetime:
        return self._clock()

    def _schedule_renewal(self, registration: Registration) -> None:
        lease = registration.lease
        if lease is None:
            self._renew_at = self._now()
            return
        life = (lease.expires_at - lease.issued_at).total_seconds()
        fraction = self._rng.uniform(self.timing.renew_low, self.timing.renew_high)
        self._renew_at = lease.issued_at + timedelta(seconds=max(0.2, life * fraction))

    def _register(self) -> None:
        with self._lock:
            old, self._agent = self._agent, self._make_agent()
            self._drop_keys()
            agent = self._agent
        if old is not None and old.client is not agent.client:
            old.client.close()
        result = agent.register()
        if result.state is NodeState.PENDING_APPROVAL:
            self.state = AgentState.PENDING  # renewed (same identity) until an operator approves it
            agent.require_attested(result)
        if result.state is not NodeState.ATTESTED:
            self.state = AgentState.LAPSED  # rejected: register again with backoff (policy may change)
            agent.require_attested(result)
        with self._lock:
            self.counters.registrations += 1
            self.state = AgentState.ATTESTED
        self._schedule_renewal(result)
        log.info(
            "node agent: registered as %s until %s",
            result.node_id,
            result.lease.expires_at if result.lease else "-",
        )

    def _await_approval(self) -> None:
        agent = self._agent
        assert agent is not None
        result = agent.renew()
        if result.state is NodeState.ATTESTED:
            with self._lock:
                self.counters.registrations += 1
                self.state = AgentState.ATTESTED
            self._schedule_renewal(result)
            log.info("node agent: node %s approved", result.node_id)
            return
        if result.state is not NodeState.PENDING_APPROVAL:
            self._revoked(f"the pending registration ended {result.state.value}")
            return
        agent.require_attested(result)  # NODE_NOT_ATTESTED: wait with backoff

    def _renew(self) -> None:
        agent = self._agent
        assert agent is not None
        try:
            result = agent.renew()
        except ControlPlaneError as exc:
            if exc.reason == "NODE_NOT_FOUND":
                log.warning("node agent: the control plane lost node %s; registering afresh", agent.node_id)
                self._register()
                return
            self.counters.renewal_failures += 1
            raise
        if result.state is NodeState.ATTESTED:
            self.counters.renewals += 1
            self._schedule_renewal(result)
            return
        codes = {r.code for r in result.reasons}
        if result.state in (NodeState.REVOKED, NodeState.SUSPENDED) or codes & _OPERATOR_REASONS:
            self._revoked(
                f"renewal answered {result.state.value} ({', '.join(sorted(codes)) or 'no reason'})"
            )
            return
        log.warning(
            "node agent: renewal refused (%s); registering with fresh evidence", ", ".join(sorted(codes))
        )
        self._register()

    def _probe(self) -> None:
        """Re-release one held key: the cheapest authenticated call that shows the node's state."""
        with self._lock:
            held = next(iter(self._keys.values()), None)
        if held is None or self._agent is None:
            return
        try:
            self._agent.release(held.key_name, held.purpose, held.key_version)
        except ControlPlaneError as exc:
            if exc.reason in _NODE_OUT:
                self._revoked(f"the control plane refuses this node's releases ({exc.reason})")
                return
            if exc.code is NodeCode.RELEASE_DENIED:
                with self._lock:  # this key only: disabled, destroyed or no longer granted
                    self._keys.pop((held.key_name, held.key_version, held.purpose), None)
                    self._latest.pop((held.key_name, held.purpose), None)
                return
            raise

    def _expire_if_lapsed(self) -> None:
        registration = self.registration
        lease = registration.lease if registration else None
        if self.state is AgentState.ATTESTED and (lease is None or lease.expires_at <= self._now()):
            with self._lock:
                self._drop_keys()
                self.state = AgentState.LAPSED
            log.warning("node agent: the lease lapsed; keys dropped until the node attests again")

    def on_keys_dropped(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the agent drops its keys (what was derived from them goes too)."""
        self._on_drop.append(callback)

    @property
    def keys_held(self) -> int:
        return len(self._keys)

    def _drop_keys(self) -> None:
        self._keys.clear()
        self._latest.clear()
        for callback in self._on_drop:
            callback()

    def _revoked(self, why: str) -> None:
        with self._lock:
            self._drop_keys()
            self.state = AgentState.REVOKED
            attached = sorted(self._attached)
        log.error("node agent: node %s is out (%s); keys dropped", self.node_id, why)
        self._ready.set()
        if self.revocation_action == "terminate" and attached:
            threading.Thread(target=self._terminate, args=(attached,), daemon=True).start()

    def _terminate(self, pids: list[int]) -> None:
        for pid in pids:
            _signal_group(pid, signal.SIGTERM)
            log.warning("node agent: revocation_action=terminate: SIGTERM to workload %d", pid)
        deadline = time.monotonic() + self.timing.terminate_grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                _signal_group(pid, signal.SIGKILL)

    # --- local requests ----------------------------------------------------------------------------

    def attach(self, pid: int) -> None:
        """A workload to signal on revocation (``terminate``)."""
        with self._lock:
            self._attached = {p for p in self._attached if _alive(p)} | {pid}

    def require_attested(self) -> None:
        """``Refused`` (``AGENT_NODE_REVOKED`` / ``AGENT_NOT_READY``) unless keys may be used now."""
        self._require_attested()

    def _require_attested(self) -> None:
        if self.state is AgentState.REVOKED:
            raise Refused(
                agent_api.NODE_REVOKED,
                f"node {self.node_id or '-'} was revoked or suspended; its keys were dropped",
                "an operator must approve or re-admit the node; then restart the agent",
            )
        registration = self.registration
        lease = registration.lease if registration else None
        if self.state is not AgentState.ATTESTED or lease is None or lease.expires_at <= self._now():
            raise Refused(
                agent_api.NOT_READY,
                f"the node is not attested right now ({self.state.value})",
                "wait for the agent to register; its log says why it has not",
            )

    def key(self, name: str, purpose: str, version: int) -> ReleasedKey:
        """A key the node may have, from memory or released now. ``Refused`` otherwise."""
        try:
            check_key_name(name)
            check_purpose(purpose)
        except NodeError as exc:
            raise Refused(agent_api.REQUEST_INVALID, exc.message) from None
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise Refused(agent_api.REQUEST_INVALID, "version is an integer >= 0 (0: the latest)")
        self._require_attested()
        with self._lock:
            # "The current version for writing" is asked afresh each time: after a rotation, new
            # outputs must be sealed under the new version, not the one held from before.
            latest = 0 if purpose == "write" else self._latest.get((name, purpose), 0)
            wanted = version or latest
            held = self._keys.get((name, wanted, purpose)) if wanted else None
        if held is not None:
            return held
        released = self._release(name, purpose, version)
        with self._lock:
            if self.state is not AgentState.ATTESTED:  # revoked or lapsed while this release was in flight
                self._require_attested()
            self._keys[(name, released.key_version, purpose)] = released
            if not version:
                self._latest[(name, purpose)] = released.key_version
        return released

    def record_output(self, report: OutputReport) -> int:
        """Record a sealed output with the control plane (``RecordOutput``); its ledger sequence."""
        self._require_attested()
        agent = self._agent
        if agent is None:
            raise Refused(agent_api.NOT_READY, "the node is re-registering")
        try:
            return agent.record_output(report)
        except ControlPlaneError as exc:
            raise Refused(
                OUTPUT_REFUSED, f"the control plane refused to record the output ({exc.reason})"
            ) from None
        except NodeError as exc:
            raise Refused(agent_api.AGENT_ERROR, exc.message) from None

    def _release(self, name: str, purpose: str, version: int) -> ReleasedKey:
        for attempt in (1, 2):
            agent = self._agent
            if agent is None:
                raise Refused(agent_api.NOT_READY, "the node is re-registering")
            try:
                return agent.release(name, purpose, version)
            except ControlPlaneError as exc:
                if exc.reason in _NODE_OUT:
                    self._revoked(f"release refused ({exc.reason})")
                    raise Refused(
                        agent_api.NODE_REVOKED, f"node {self.node_id} is no longer attested"
                    ) from None
                if exc.reason == "RELEASE_LEASE_EXPIRED":
                    # The lease ran out before its renewal landed (a slow or refused renewal): renew now
                    # and try once more; a workload never gets a key on a lapsed lease.
                    if attempt == 1 and self._renew_now(timeout=max(10.0, agent.client.timeout)):
                        continue
                    raise Refused(agent_api.NOT_READY, "the node's lease expired; re-attesting") from None
                if exc.code is NodeCode.RELEASE_DENIED:
                    raise Refused(agent_api.KEY_DENIED, exc.message, exc.hint) from None
                raise Refused(agent_api.AGENT_ERROR, exc.message, exc.hint) from None
            except NodeError as exc:
                raise Refused(agent_api.AGENT_ERROR, exc.message, exc.hint) from None
        raise AssertionError("unreachable")

    def _renew_now(self, *, timeout: float) -> bool:
        """Ask the lease thread to renew at once; True once a new lease is in place."""
        registration = self.registration
        before = registration.lease.lease_id if registration and registration.lease else ""
        with self._lock:
            self._renew_at = self._now()
        self._wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            current = self.registration
            lease = current.lease if current else None
            if self.state is AgentState.REVOKED:
                return False
            if self.state is AgentState.ATTESTED and lease is not None and lease.lease_id != before:
                return True
            time.sleep(0.05)
        return False

    def status(self) -> dict[str, Any]:
        registration = self.registration
        lease = registration.lease if registration else None
        c = self.counters
        return {
            "state": self.state.value,
            "node_id": self.node_id,
            "lease_expires_at": lease.expires_at.isoformat() if lease else "",
            "registrations": c.registrations,
            "renewals": c.renewals,
            "renewal_failures": c.renewal_failures,
            "handouts": c.handouts,
            "refusals": c.refusals,
            "keys_held": self.keys_held,
            "last_error": self.last_error.code.value if self.last_error else "",
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child has exited
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _signal_group(pid: int, signum: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
