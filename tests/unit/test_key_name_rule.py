"""One key-name rule (kms.envelope.names) for stored keys, nodes, the release check and policies' rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import enclave.release_request
import kms.envelope.names
import kms.usecases.release
import policies.release
import policies.schema
from kms.envelope.names import KEY_NAME_RULE, is_valid_key_name, is_valid_key_pattern
from policies import Code, PolicyError, decide_release, load_default, load_policy

DEMO = Path(policies.schema.__file__).parent / "defaults" / "demo.toml"
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("dataset/*", True),
        ("a/b/c/*", True),  # covers a/b/c/x: four segments
        ("a/b/c/d/*", False),  # would only cover five-segment names, which cannot exist
        ("model/final", True),
        ("Dataset/*", False),  # upper case: keys are lower case
        ("a/b/c/d/e", False),
        ("x" * 128, True),
        ("x" * 129, False),
        ("x" * 126 + "/*", True),
        ("x" * 127 + "/*", False),
        ("*", False),
        ("dataset/*/x", False),
        ("dataset//*", False),
    ],
)
def test_patterns_follow_the_name_rule(pattern: str, ok: bool) -> None:
    assert is_valid_key_pattern(pattern) is ok


def _with_keys(tmp_path: Path, keys: str) -> tuple[Path, int]:
    lines = DEMO.read_text().splitlines(keepends=True)
    line = next(i for i, text in enumerate(lines, start=1) if text.startswith('keys = ["dataset/*"]'))
    lines[line - 1] = f"keys = {keys}\n"
    path = tmp_path / "old-policy.toml"
    path.write_text("".join(lines))
    return path, line


@pytest.mark.parametrize("keys", ['["Dataset/*"]', '["a/b/c/d/e"]', f'["{"k" * 200}"]', '["a/b/c/d/*"]'])
def test_a_policy_whose_rule_no_longer_fits_fails_to_load_naming_file_line_and_rule(
    tmp_path: Path, keys: str
) -> None:
    path, line = _with_keys(tmp_path, keys)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert err.code is Code.POLICY_INVALID
    assert (err.source, err.line, err.path) == (str(path), line, "release.rules[0].keys[0]")
    assert f"{path} line {line}" in err.message and KEY_NAME_RULE in err.message


def test_the_shipped_policies_fit_the_rule(tmp_path: Path) -> None:
    for name in ("default", "demo"):
        load_default(name)
    path, _ = _with_keys(tmp_path, '["dataset/*", "model/v1/weights"]')
    assert load_policy(path).release.rules[0].keys == ("dataset/*", "model/v1/weights")


@pytest.mark.parametrize("name", ["Dataset/imagenet", "a/b/c/d/e", "k" * 200, "dataset/"])
def test_the_release_decision_refuses_names_no_key_can_have(name: str) -> None:
    assert not is_valid_key_name(name)
    decision = decide_release(
        load_default("demo"),
        node_groups=("trainers",),
        node_state="ATTESTED",
        key_name=name,
        purpose="read",
        lease_expires_at=NOW + timedelta(hours=1),
        evidence_time=NOW - timedelta(minutes=1),
        now=NOW,
    )
    assert [r.code for r in decision.reasons] == [Code.RELEASE_KEY_NAME_INVALID]


def test_every_side_uses_the_one_rule() -> None:
    for module in (policies.release, kms.usecases.release, enclave.release_request):
        assert module.is_valid_key_name is kms.envelope.names.is_valid_key_name
    assert vars(policies.schema)["is_valid_key_pattern"] is kms.envelope.names.is_valid_key_pattern
    for module, old in (
        (policies.schema, "KEY_NAME"),
        (policies.schema, "_KEY_PATTERN"),
        (policies.release, "MAX_KEY_NAME"),
    ):
        assert not hasattr(module, old), f"{module.__name__}.{old} is a second key-name rule"
