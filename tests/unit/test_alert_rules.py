"""The shipped Prometheus alert rules, checked and unit-tested by Debian's promtool (installed if missing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from debian import ensure_binary

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_binary("promtool", "prometheus")


def _run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_are_valid(promtool: str) -> None:
    done = _run(promtool, "check", "rules", "alerts.yml", cwd=RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    done = _run(promtool, "test", "rules", "alerts_test.yml", cwd=RULES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    """The same tests against rules with a loosened threshold must fail: the tests judge the rules."""
    shutil.copy(RULES / "alerts_test.yml", tmp_path)
    rules = (
        (RULES / "alerts.yml")
        .read_text()
        .replace("sovereign_checkpoint_age_seconds > 300", "sovereign_checkpoint_age_seconds > 3000")
    )
    (tmp_path / "alerts.yml").write_text(rules)
    done = _run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0
    assert "SovereignCheckpointStale" in done.stdout + done.stderr
