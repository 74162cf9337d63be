"""Whatever text arrives, parsing a policy raises PolicyError or returns a Policy: never anything else."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import Code, Policy, PolicyError, parse_policy

TOKENS = [
    "schema",
    "appraisal",
    "release",
    "snp",
    "tdx",
    "groups",
    "rules",
    "measurements",
    "min_tcb",
    "Milan",
    "images",
    "mrtd",
    "rtmr0",
    "keys",
    "purposes",
    "name",
    "host_data",
    "tcb_statuses",
    "max_vmpl",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ".",
    ",",
    '"',
    "'",
    '"""',
    "\n",
    " ",
    "#",
    "1",
    "-1",
    "0x10",
    "1e400",
    "true",
    "false",
    "nan",
    "inf",
    '"ab"',
    '"' + "11" * 48 + '"',
    '"dataset/*"',
    '"read"',
    "1979-05-27T07:32:00Z",
    "\\u0000",
    "\x00",
    "\ud800",
]
SHIPPED = Path(__file__).resolve().parents[2] / "policies" / "defaults"
DEMO_LINES = (SHIPPED / "demo.toml").read_text().splitlines()
VALUES = [
    "1",
    "-1",
    "0",
    "256",
    "true",
    '"x"',
    '""',
    "[]",
    '["x"]',
    "[1]",
    "{}",
    "{a = 1}",
    "1.5",
    "1979-05-27T07:32:00Z",
    '"' + "11" * 48 + '"',
    '["' + "11" * 32 + '"]',
    '"UpToDate"',
    '"read"',
]


def _check(text: str) -> None:
    try:
        result = parse_policy(text, "fuzz.toml")
    except PolicyError as exc:
        assert exc.code is Code.POLICY_INVALID
        assert exc.message.startswith("fuzz.toml")
    else:
        assert isinstance(result, Policy) and len(result.digest) == 64


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_token_soup(text: str) -> None:
    _check("schema = 1\n" + text)
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from([*TOKENS, "", "x = 1"])), max_size=6))
def test_mutated_shipped_policies(edits: list[tuple[int, str]]) -> None:
    lines = list(DEMO_LINES)
    for position, token in edits:
        i = position % len(lines)
        lines[i] = token if position % 3 == 0 else lines[i] + token
    _check("\n".join(lines))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(VALUES)), min_size=1, max_size=4))
def test_wrong_values_in_the_demo_policy(edits: list[tuple[int, str]]) -> None:
    lines = list(DEMO_LINES)
    keyed = [i for i, line in enumerate(lines) if " = " in line and not line.startswith("#")]
    for position, value in edits:
        i = keyed[position % len(keyed)]
        lines[i] = lines[i].split(" = ", 1)[0] + " = " + value
    _check("\n".join(lines))


def test_deep_nesting() -> None:
    _check("schema = 1\nx = " + "[" * 5000 + "]" * 5000)
    _check("a" + ".a" * 5000 + " = 1")
