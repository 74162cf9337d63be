"""Refusals before authentication: the per-peer token bucket, the peer address it is keyed by, the
rate-limited refusal log, and the operator audit that records only authenticated operators. Pure cores
with an injected clock; the real server is exercised in tests/e2e/test_unauthenticated.py."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from kms.audit.entry import Kind, Reason
from kms.oidc.errors import AuthError, Code
from kms.oidc.tokens import Actor
from kms.server.operator_audit import OperatorAudit
from kms.server.rate_limit import TokenBuckets, peer_address
from kms.usecases.metrics import Metrics, Refusals


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- token buckets ----------------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, monotonic=clock)
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.4  # 0.8 of a token: still empty
    assert not buckets.allow("a")
    clock.now += 0.2  # the refusal took nothing: 1.2 tokens now
    assert buckets.allow("a") and not buckets.allow("a")
    clock.now += 60  # never more than the burst
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]


def test_peers_have_separate_buckets() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, monotonic=Clock())
    assert buckets.allow("a") and not buckets.allow("a")
    assert buckets.allow("b")


def test_the_table_keeps_the_most_recent_peers() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_peers=2, monotonic=Clock())
    assert buckets.allow("a") and buckets.allow("b")
    assert not buckets.allow("a")  # a is now the most recent, b the oldest
    assert buckets.allow("c")  # drops b
    assert buckets.allow("b")  # b starts again with a full bucket
    assert not buckets.allow("b")


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate, burst)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.1.2.3:50001", "ipv4:10.1.2.3"),
        ("ipv4:10.1.2.3:50002", "ipv4:10.1.2.3"),  # another connection of the same host
        ("ipv6:[::1]:50001", "ipv6:[::1]"),
        ("ipv6:[2001:db8::7]:443", "ipv6:[2001:db8::7]"),
        ("unix:/run/sovereign.sock", "unix:/run/sovereign.sock"),
        ("", ""),
    ],
)
def test_buckets_are_keyed_by_the_peer_address_without_its_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


# --- the refusal log --------------------------------------------------------------------------------


def test_refusals_are_counted_each_and_logged_once_per_reason_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    counter = Counter("refused", "test", ["endpoint", "reason"], registry=CollectorRegistry())
    refusals = Refusals(counter, interval=60.0, monotonic=clock)
    with caplog.at_level(logging.WARNING, logger="sovereign.refused"):
        for _ in range(500):
            refusals.refused("node", "NONCE_UNKNOWN")
        refusals.refused("operator", "AUTH_MISSING_TOKEN")
        clock.now += 61
        refusals.refused("node", "NONCE_UNKNOWN")
    assert counter.labels("node", "NONCE_UNKNOWN")._value.get() == 501
    assert counter.labels("operator", "AUTH_MISSING_TOKEN")._value.get() == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "node endpoint: NONCE_UNKNOWN (0 more" in lines[0]
    assert "operator endpoint: AUTH_MISSING_TOKEN (0 more" in lines[1]
    assert "node endpoint: NONCE_UNKNOWN (499 more" in lines[2]


def test_the_control_planes_metrics_have_the_refusal_family() -> None:
    metrics = Metrics()
    metrics.refusals.refused("node", "RATE_LIMITED")
    value = metrics.registry.get_sample_value(
        "sovereign_unauthenticated_refusals_total", {"endpoint": "node", "reason": "RATE_LIMITED"}
    )
    assert value == 1.0


# --- operator refusals: audited only when the operator authenticated -----------------------------------


class Sink:
    def __init__(self) -> None:
        self.entries: list[tuple[Mapping[str, Any], Any, Sequence[Reason]]] = []

    def record_operator_action(
        self,
        actor_fields: Mapping[str, Any],
        kind: Any,
        fields: Mapping[str, Any],
        decision: Any = None,
        reasons: Sequence[Reason] = (),
    ) -> int:
        self.entries.append((actor_fields, kind, reasons))
        return len(self.entries)


def actor(username: str) -> Actor:
    return Actor(
        subject=f"sub-{username}", username=username, roles=frozenset({"sovereign-operator"}),
        client_roles={}, realm="sovereign", issuer="https://sso.example/realms/sovereign",
        client_id="sovereign", token_id="t", expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )  # fmt: skip


def test_a_refusal_without_a_valid_token_is_counted_not_audited() -> None:
    sink, metrics = Sink(), Metrics()
    audit = OperatorAudit(sink, metrics.refusals)
    missing = AuthError(Code.AUTH_MISSING_TOKEN, "no token")
    assert audit.refused(None, "/sovereign.v1.Admin/ListNodes", missing) == -1
    assert sink.entries == []
    labels = {"endpoint": "operator", "reason": "AUTH_MISSING_TOKEN"}
    assert metrics.registry.get_sample_value("sovereign_unauthenticated_refusals_total", labels) == 1.0


def test_a_refusal_of_an_authenticated_operator_is_audited() -> None:
    sink, metrics = Sink(), Metrics()
    audit = OperatorAudit(sink, metrics.refusals)
    role = AuthError(Code.AUTH_ROLE_MISSING, "no role")
    assert audit.refused(actor("dave"), "/sovereign.v1.Admin/CreateKey", role) == 1
    ((who, kind, reasons),) = sink.entries
    assert who["username"] == "dave" and kind is Kind.OPERATOR_REFUSED
    assert [r.code for r in reasons] == ["AUTH_ROLE_MISSING"]
