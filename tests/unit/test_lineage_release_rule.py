"""Lineage-restricted releases, the pure rule (``policies.lineage``): a model key released for read under a
``lineage_restricted`` rule carries the read restrictions of the datasets that went into it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.oidc.two_person import TwoPersonConfig
from policies import parse_policy
from policies.errors import Code, PolicyError, Reason
from policies.lineage import lineage_restriction
from policies.model import Policy

DEMO = (Path(__file__).resolve().parents[2] / "policies" / "defaults" / "demo.toml").read_text()
INFERENCE_GROUP = """
[[appraisal.snp.groups]]
name = "inference"
measurements = [
  "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111",
]
"""
INFERENCE_RULE = """
[[release.rules]]
name = "inference-models"
groups = ["inference"]
keys = ["model/*", "dataset/public"]
purposes = ["read"]
"""


def _policy(*, restricted: bool) -> Policy:
    text = DEMO.replace("[appraisal.tdx]\n", INFERENCE_GROUP + "\n[appraisal.tdx]\n", 1) + INFERENCE_RULE
    if restricted:
        text += "lineage_restricted = true\n"
    return parse_policy(text, "test")


def _check(
    policy: Policy,
    *,
    groups: tuple[str, ...] = ("inference",),
    datasets: tuple[str, ...] = ("dataset/train",),
    purpose: str = "read",
    excepted: tuple[str, ...] = (),
    rule: str = "inference-models",
) -> Reason | None:
    return lineage_restriction(
        policy,
        rule_name=rule,
        purpose=purpose,
        node_groups=groups,
        key_name="model/main",
        datasets=datasets,
        excepted_groups=excepted,
    )


def test_a_group_that_may_not_read_a_dataset_may_not_read_the_model_trained_on_it() -> None:
    found = _check(_policy(restricted=True), datasets=("dataset/public", "dataset/train"))
    assert found is not None
    assert found.code is Code.RELEASE_LINEAGE_RESTRICTED
    assert "dataset/train" in found.message and "dataset/public" not in found.message


def test_datasets_the_group_may_read_and_no_datasets_at_all_do_not_restrict() -> None:
    policy = _policy(restricted=True)
    assert _check(policy, datasets=("dataset/public",)) is None
    assert _check(policy, datasets=()) is None
    # a node in both groups: trainers may read dataset/train
    assert _check(policy, groups=("inference", "trainers")) is None


def test_the_rule_is_opt_in_and_covers_read_only() -> None:
    assert _check(_policy(restricted=False)) is None
    assert _check(_policy(restricted=True), purpose="write") is None
    # another rule (not lineage-restricted) granted it
    assert _check(_policy(restricted=True), rule="trainers-models") is None


def test_an_approved_exception_for_one_of_the_node_groups_lifts_the_restriction() -> None:
    policy = _policy(restricted=True)
    assert _check(policy, excepted=("inference",)) is None
    assert _check(policy, excepted=("someone-else",)) is not None


def test_the_option_parses_as_a_boolean_and_keeps_digests_of_policies_without_it() -> None:
    assert _policy(restricted=True).digest != _policy(restricted=False).digest
    rule = next(r for r in _policy(restricted=True).release.rules if r.name == "inference-models")
    assert rule.lineage_restricted is True
    assert "lineage_restricted" not in str(_policy(restricted=False).canonical())
    with pytest.raises(PolicyError):
        parse_policy(DEMO + 'lineage_restricted = "yes"\n', "bad")


def test_an_exception_is_held_for_a_second_operator_whatever_the_settings() -> None:
    assert TwoPersonConfig(frozenset()).requires_approval("GrantLineageException")
    assert not TwoPersonConfig(frozenset()).requires_approval("PutPolicy")
