"""The resident agent's lease keeping against a scripted control plane (a fake NodeAgent: this is the
agent's own decision logic; the real processes are in tests/e2e/test_resident_agent.py): backoff while
unreachable, renewal before expiry, fresh registration when a renewal is refused or the node is
unknown, keys dropped and no re-registration once an operator revoked the node."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from enclave.agent import NodeAgent
from enclave.client import ControlPlaneError, Lease, NodeState, Reason, Registration
from enclave.errors import NodeCode
from enclave.release_request import ReleasedKey
from enclave.resident import AgentState, Refused, ResidentAgent, Timing
from enclave.workload import agent_api

LEASE = 1.0
_ids = itertools.count(1)


def registration(state: NodeState, node_id: str, *reasons: str) -> Registration:
    now = datetime.now(UTC)
    lease = (
        Lease(f"l{next(_ids)}", now, now + timedelta(seconds=LEASE)) if state is NodeState.ATTESTED else None
    )
    return Registration(node_id, state, lease, tuple(Reason(r, r) for r in reasons), ("trainers",), 1, 1)


class _Client:
    timeout = 1.0

    def close(self) -> None:
        pass


class FakeNode:
    """Answers register/renew/release from the scripts; records the calls."""

    def __init__(self, script: dict[str, list[Callable[[], Registration]]], calls: list[str]) -> None:
        self.client = _Client()
        self.script = script
        self.calls = calls
        self.registration: Registration | None = None
        self.node_id = ""
        self.released: list[str] = []

    def _next(self, what: str) -> Registration:
        self.calls.append(what)
        queue = self.script[what]
        result = (queue.pop(0) if len(queue) > 1 else queue[0])()
        if result.node_id:
            self.node_id = result.node_id
        if result.state is NodeState.ATTESTED:
            self.registration = result
        return result

    def register(self) -> Registration:
        return self._next("register")

    def renew(self) -> Registration:
        return self._next("renew")

    def require_attested(self, result: Registration) -> Registration:
        return NodeAgent.require_attested(self, result)  # type: ignore[arg-type]

    def release(self, name: str, purpose: str = "read", version: int = 0) -> ReleasedKey:
        self.calls.append("release")
        queue = self.script.get("release", [])
        if queue:
            queue.pop(0)()
        return ReleasedKey(bytes(32), name, 1, purpose, 1, datetime.now(UTC) + timedelta(seconds=LEASE))


def unreachable() -> Registration:
    raise ControlPlaneError("down", code=NodeCode.CONTROL_PLANE_UNAVAILABLE, status="UNAVAILABLE")


def attested() -> Registration:
    return registration(NodeState.ATTESTED, "n-1")


def make(
    script: dict[str, list[Callable[[], Registration]]], **timing: Any
) -> tuple[ResidentAgent, list[str], list[FakeNode]]:
    calls: list[str] = []
    made: list[FakeNode] = []

    def new() -> NodeAgent:
        made.append(FakeNode(script, calls))
        return made[-1]  # type: ignore[return-value]

    options = {"check_interval": 60.0, "backoff_initial": 0.05, "backoff_max": 0.1, **timing}
    agent = ResidentAgent(new, timing=Timing(**options), rng=random.Random(1))
    agent.start()
    return agent, calls, made


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_backs_off_while_unreachable_then_registers_and_renews() -> None:
    agent, calls, _ = make({"register": [unreachable, unreachable, attested], "renew": [attested]})
    try:
        assert not agent.wait_first_attempt(5)  # the first attempt failed: reported at once
        assert agent.last_error is not None and agent.last_error.code is NodeCode.CONTROL_PLANE_UNAVAILABLE
        assert agent.wait_ready(5)
        # 1 s leases, renewed at 50-75% of their life; the counter moves after the call returns
        until(lambda: calls.count("renew") >= 3 and agent.counters.renewals >= 3)
        assert calls[:3] == ["register"] * 3 and agent.state is AgentState.ATTESTED
        assert agent.counters.renewals >= 3 and agent.counters.registrations == 1
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "refusal",
    [
        lambda: registration(NodeState.REJECTED, "n-1", "NODE_KEYS_CHANGED"),
        lambda: (_ for _ in ()).throw(
            ControlPlaneError(
                "gone", code=NodeCode.CONTROL_PLANE_ERROR, status="NOT_FOUND", reason="NODE_NOT_FOUND"
            )
        ),
    ],
    ids=["renewal-refused", "control-plane-lost-state"],
)
def test_registers_afresh_when_renewal_is_refused_or_the_node_is_unknown(
    refusal: Callable[[], Registration],
) -> None:
    agent, calls, made = make({"register": [attested], "renew": [refusal, attested]})
    try:
        assert agent.wait_ready(5)
        agent.key("dataset/train", "read", 0)
        until(lambda: calls.count("register") >= 2)
        until(lambda: agent.state is AgentState.ATTESTED and len(made) >= 2)
        assert len(made) >= 2  # a fresh identity (a new NodeAgent) for the new registration
        assert calls.index("renew") < calls.index("register", 1)
    finally:
        agent.stop()


def test_revocation_drops_keys_and_is_final() -> None:
    revoked = lambda: registration(NodeState.REJECTED, "n-1", "NODE_NOT_RENEWABLE")  # noqa: E731
    agent, calls, _ = make({"register": [attested], "renew": [revoked]})
    try:
        assert agent.wait_ready(5)
        agent.key("dataset/train", "read", 0)
        until(lambda: agent.state is AgentState.REVOKED)
        with pytest.raises(Refused) as info:
            agent.key("dataset/train", "read", 0)
        assert info.value.code == agent_api.NODE_REVOKED
        time.sleep(0.5)
        assert calls.count("register") == 1  # never registers again by itself
    finally:
        agent.stop()


def test_a_release_refused_for_a_revoked_node_drops_everything() -> None:
    out = ControlPlaneError(
        "no", code=NodeCode.RELEASE_DENIED, status="FAILED_PRECONDITION", reason="RELEASE_NODE_NOT_ATTESTED"
    )

    def refuse() -> Registration:
        raise out

    agent, _, _ = make({"register": [attested], "renew": [attested], "release": [attested, refuse]})
    try:
        assert agent.wait_ready(5)
        agent.key("dataset/train", "read", 0)
        with pytest.raises(Refused) as info:
            agent.key("model/main", "write", 0)
        assert info.value.code == agent_api.NODE_REVOKED and agent.state is AgentState.REVOKED
        with pytest.raises(Refused):
            agent.key("dataset/train", "read", 0)  # held before: dropped too
    finally:
        agent.stop()
