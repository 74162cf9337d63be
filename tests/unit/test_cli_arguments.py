"""Every typed argument of every ``sovereign`` subcommand, given a malformed value, is a coded usage error
(exit 2, ``USAGE_INVALID``, naming the argument): never ``internal error`` / exit 70 nor a traceback.

The parser tree is walked, not listed, so a new subcommand or option is covered the day it is added; an
option with a type this test has no malformed value for fails the test until one is added below."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sovereign.cli import _common, build_parser, main
from sovereign.cli.commands import audit as cli_audit

# One malformed value per argument type; None: free text (any string is a valid value).
MALFORMED: dict[Any, str | None] = {
    None: None,
    str: None,
    Path: None,  # outputs, or files a command reads and reports itself with a coded error
    int: "not-a-number",
    float: "not-a-number",
    _common.positive_int: "0",
    _common.non_negative_int: "-5",
    _common.port_number: "70000",
    _common.positive_seconds: "-1",
    _common.parse_time: "yesterday",
    _common.existing_file: "/nonexistent/sovereign-test-input",
    cli_audit.node_selector: "",
    cli_audit.key_selector: "data*set/*",
}
NOT_A_CHOICE = "no-such-choice"


def _type_key(action: argparse.Action) -> Any:
    kind = action.type
    # closures made per option (e.g. evidence simulate's _hex(48)) are keyed by their qualified name
    if kind is not None and getattr(kind, "__qualname__", "").endswith("<locals>.parse"):
        return "hex"
    return kind


MALFORMED["hex"] = "zz-not-hex"


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _leaves(child, (*path, name))


def _cases() -> list[tuple[tuple[str, ...], argparse.Action]]:
    cases = []
    for path, leaf in _leaves(build_parser()):
        for action in leaf._actions:
            if isinstance(action, argparse._HelpAction) or action.nargs == 0:
                continue
            if action.choices is not None or MALFORMED.get(_type_key(action), "unknown") is not None:
                cases.append((path, action))
    return cases


CASES = _cases()


def _argv(path: tuple[str, ...], leaf_action: argparse.Action) -> list[str]:
    value = NOT_A_CHOICE if leaf_action.choices is not None else MALFORMED[_type_key(leaf_action)]
    assert value is not None
    if leaf_action.option_strings:
        return [*path, leaf_action.option_strings[-1], value]
    # a positional: the ones before it get harmless values (a file that exists, for existing_file)
    parser = dict(_leaves(build_parser()))[path]
    before: list[str] = []
    for action in parser._actions:
        if action.dest == leaf_action.dest:
            break
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            before.append(__file__)
    return [*path, *before, value]


def test_the_walk_finds_the_typed_options() -> None:
    names = {(" ".join(p), a.dest) for p, a in CASES}
    # a few known ones, so a broken walk cannot pass by finding nothing
    assert {
        ("audit query", "since"),
        ("audit query", "limit"),
        ("serve", "workers"),
        ("admin nodes list", "state"),
    } <= names
    assert len(CASES) > 60


def test_every_argument_type_has_a_malformed_value() -> None:
    unknown: set[tuple[str, str, str]] = set()
    for path, leaf in _leaves(build_parser()):
        for action in leaf._actions:
            if _type_key(action) not in MALFORMED:
                unknown.add((" ".join(path), action.dest, repr(action.type)))
    assert not unknown, f"add a malformed value for these argument types: {sorted(unknown)}"


@pytest.mark.parametrize(
    ("path", "action"),
    CASES,
    ids=[f"{' '.join(p)}:{a.option_strings[-1] if a.option_strings else a.dest}" for p, a in CASES],
)
def test_a_malformed_value_is_a_coded_usage_error(
    path: tuple[str, ...], action: argparse.Action, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(path, action)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "error: USAGE_INVALID: argument " in err
    named = action.option_strings[-1] if action.option_strings else (action.metavar or action.dest)
    assert str(named).split("/")[0] in err or action.dest in err, err
    assert "Traceback" not in err and "internal error" not in err


def test_json_asks_for_the_envelope_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    with pytest.raises(SystemExit) as stopped:
        main(["audit", "query", "--json", "--limit", "-5"])
    assert stopped.value.code == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["error"]["code"] == "USAGE_INVALID"
    assert "--limit" in doc["error"]["message"] and doc["error"]["hint"]


def test_a_coded_error_that_escapes_a_command_is_reported_not_internal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kms.errors import Code, KmsError
    from sovereign.cli import policy

    def boom(args: argparse.Namespace) -> int:
        raise KmsError("KEY_EXISTS: key x exists", code=Code.KEY_EXISTS)

    monkeypatch.setattr(policy, "_check", boom)
    assert main(["policy", "check", __file__]) == 1
    err = capsys.readouterr().err
    assert "error: KEY_EXISTS: key x exists" in err
    assert "KEY_EXISTS: KEY_EXISTS" not in err and "internal error" not in err
