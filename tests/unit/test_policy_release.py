"""Release decisions: prefix and exact matches, purpose, node state, lease, evidence age, rule order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policies import Code, PolicyError, ReleaseDecision, decide_release, load_default, parse_policy

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
M = "ab" * 48

# Two rules for the same key: the first demands fresh evidence and a short lease, the second is looser.
LAYERED = f"""\
schema = 1
[appraisal.snp]
products = ["Milan"]
[appraisal.snp.min_tcb.Milan]
bootloader = 0
tee = 0
snp = 0
microcode = 0
[[appraisal.snp.groups]]
name = "trainers"
measurements = ["{M}"]
[[appraisal.snp.groups]]
name = "auditors"
measurements = ["{M}"]
[release.defaults]
lease_seconds = 600
max_evidence_age = 7200
[[release.rules]]
name = "fresh"
groups = ["trainers"]
keys = ["model/final"]
purposes = ["write"]
lease_seconds = 60
max_evidence_age = 300
[[release.rules]]
name = "loose"
groups = ["trainers", "auditors"]
keys = ["model/final", "model/drafts/*"]
purposes = ["read", "write"]
"""


def decide(policy_text: str | None = None, **overrides: Any) -> ReleaseDecision:
    args: dict[str, Any] = {
        "node_groups": ("trainers",),
        "node_state": "ATTESTED",
        "key_name": "dataset/imagenet",
        "purpose": "read",
        "lease_expires_at": NOW + timedelta(hours=1),
        "evidence_time": NOW - timedelta(minutes=5),
        "now": NOW,
    }
    args.update(overrides)
    policy = load_default("demo") if policy_text is None else parse_policy(policy_text)
    return decide_release(policy, **args)


def codes(decision: ReleaseDecision) -> list[Code]:
    assert decision.allowed is not bool(decision.reasons)
    return [r.code for r in decision.reasons]


def test_demo_grants_dataset_read_by_prefix() -> None:
    d = decide()
    assert (d.allowed, d.lease_seconds, d.rule, d.reasons) == (True, 300, "trainers-read-datasets", ())
    assert d.policy_digest == load_default("demo").digest


@pytest.mark.parametrize(
    ("key", "purpose", "allowed"),
    [
        ("dataset/a/b/c", "read", True),
        ("model/llama", "read", True),
        ("model/llama", "write", True),
        ("dataset/imagenet", "write", False),
        ("dataset", "read", False),  # "dataset/*" covers names under dataset/, not "dataset" itself
        ("datasets/x", "read", False),
        ("secrets/x", "read", False),
    ],
)
def test_demo_prefixes_and_purposes(key: str, purpose: str, allowed: bool) -> None:
    assert decide(key_name=key, purpose=purpose).allowed is allowed


def test_purpose_not_allowed_vs_no_rule() -> None:
    assert codes(decide(purpose="write")) == [Code.RELEASE_PURPOSE_NOT_ALLOWED]
    assert codes(decide(purpose="admin")) == [Code.RELEASE_PURPOSE_NOT_ALLOWED]
    assert codes(decide(key_name="secrets/root")) == [Code.RELEASE_NO_RULE]
    assert codes(decide(node_groups=("evaluators",))) == [Code.RELEASE_NO_RULE]
    assert codes(decide(node_groups=())) == [Code.RELEASE_NO_RULE]


@pytest.mark.parametrize("state", ["SUSPENDED", "REVOKED", "PENDING_APPROVAL", "REJECTED", "attested", ""])
def test_only_attested_nodes_get_keys(state: str) -> None:
    assert codes(decide(node_state=state)) == [Code.RELEASE_NODE_NOT_ATTESTED]


def test_lease_expired_or_missing() -> None:
    assert codes(decide(lease_expires_at=NOW)) == [Code.RELEASE_LEASE_EXPIRED]
    assert codes(decide(lease_expires_at=NOW - timedelta(days=1))) == [Code.RELEASE_LEASE_EXPIRED]
    assert codes(decide(lease_expires_at=None)) == [Code.RELEASE_LEASE_EXPIRED]


def test_key_lease_never_outlives_the_node_lease() -> None:
    assert decide(lease_expires_at=NOW + timedelta(seconds=42, milliseconds=900)).lease_seconds == 42


def test_evidence_age() -> None:
    assert decide(evidence_time=NOW - timedelta(seconds=3600)).allowed
    assert codes(decide(evidence_time=NOW - timedelta(seconds=3601))) == [Code.RELEASE_EVIDENCE_TOO_OLD]
    assert decide(evidence_time=NOW + timedelta(seconds=2)).allowed  # replica clock skew
    assert codes(decide(evidence_time=NOW + timedelta(minutes=5))) == [Code.RELEASE_EVIDENCE_TIME_INVALID]


def test_first_satisfied_rule_in_document_order_grants() -> None:
    fresh = decide(
        LAYERED, key_name="model/final", purpose="write", evidence_time=NOW - timedelta(seconds=100)
    )
    assert (fresh.rule, fresh.lease_seconds) == ("fresh", 60)
    older = decide(
        LAYERED, key_name="model/final", purpose="write", evidence_time=NOW - timedelta(seconds=1000)
    )
    assert (older.rule, older.lease_seconds) == ("loose", 600)  # defaults apply to the second rule
    stale = decide(LAYERED, key_name="model/final", purpose="write", evidence_time=NOW - timedelta(hours=3))
    assert codes(stale) == [Code.RELEASE_EVIDENCE_TOO_OLD]
    assert "7200" in stale.reasons[0].message
    auditor = decide(LAYERED, node_groups=["auditors"], key_name="model/drafts/v2", purpose="read")
    assert auditor.rule == "loose"


def test_all_failures_are_reported_together() -> None:
    d = decide(node_state="SUSPENDED", lease_expires_at=None, key_name="secrets/x")
    assert codes(d) == [Code.RELEASE_NODE_NOT_ATTESTED, Code.RELEASE_LEASE_EXPIRED, Code.RELEASE_NO_RULE]
    assert d.lease_seconds == 0 and d.rule is None


@pytest.mark.parametrize(
    "key", ["dataset/../model/x", "dataset//x", "/dataset/x", "dataset/x/", "dataset/*", "", "a" * 300]
)
def test_malformed_key_names_are_refused(key: str) -> None:
    assert codes(decide(key_name=key)) == [Code.RELEASE_KEY_NAME_INVALID]


def test_a_single_group_string_is_one_group() -> None:
    assert decide(node_groups="trainers").allowed
    assert not decide(node_groups="t").allowed


@pytest.mark.parametrize("field", ["now", "evidence_time", "lease_expires_at"])
def test_naive_times_are_refused(field: str) -> None:
    naive: dict[str, Any] = {field: datetime(2025, 6, 1, 12, 0)}
    with pytest.raises(PolicyError) as info:
        decide(**naive)
    assert info.value.code is Code.TIME_INVALID


def test_default_policy_releases_nothing() -> None:
    d = decide_release(
        load_default("default"),
        node_groups=["trainers"],
        node_state="ATTESTED",
        key_name="dataset/x",
        purpose="read",
        lease_expires_at=NOW + timedelta(hours=1),
        evidence_time=NOW,
        now=NOW,
    )
    assert codes(d) == [Code.RELEASE_NO_RULE]
