"""Every ``sovereign …`` command line in the README's and docs' shell code blocks parses with the current
CLI: commands and flags that exist, required options present, typed values of the right type.

What counts as a command line: a line (``\\``-continuations joined) of a code block tagged ``sh``, ``bash``,
``shell``, ``console`` or untagged, that starts with ``sovereign``, ``./dev sovereign`` or a
``…/bin/sovereign`` (after an optional ``$`` prompt, ``sudo``, ``runuser -u USER --`` and ``NAME=value``
assignments). Comment lines
are prose. The line is cut at the first shell operator (``|``, ``&&``, ``;``, ``<``, ``>``, a ``#`` comment).

Inline code spans that start with ``sovereign`` (prose and tables) are checked too: one without options is a
mention (the command must exist, what it requires may be left out), one with options must parse in full; ``a\\|b`` in a table is each of ``a``
and ``b`` (a span's first ``x|y`` word is expanded, later ones take their first alternative).

Placeholders, so that a synopsis parses the way a reader would fill it in:
- ``<anything>``, ``$(…)``, ``$VAR`` and ``…``/``...`` are values (``...`` alone is dropped);
- ``[`` ``]`` of an optional part are dropped (the part is taken as given);
- ``A|B`` inside one token is its first alternative (``ID|NAME`` → ``ID``);
- an upper-case word (``FILE``, ``KEY``, ``N``) given to a typed option becomes a valid sample of that type,
  given to an option with choices its first choice; ``…`` as an option's value is a value;
- files a command reads need not exist (checking them is test_cli_arguments.py's job).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from sovereign.cli import CliParser, _common, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "deploy" / "openbao" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}
RUN_AS = r"runuser\s+-u\s+\S+\s+--\s+"  # runuser -u USER -- (the user may be named sovereign)
COMMAND_START = re.compile(
    rf"^(?:\$\s+)?(?:sudo\s+)?(?:{RUN_AS})?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:\./dev\s+|\S*/bin/)?sovereign(?:\s|$)"
)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
# A valid sample per argument type, for an upper-case placeholder given to a typed option.
SAMPLES: dict[Any, str] = {
    int: "5",
    float: "1.5",
    _common.positive_int: "5",
    _common.non_negative_int: "5",
    _common.port_number: "8443",
    _common.positive_seconds: "30",
    _common.parse_time: "2026-09-01T00:00:00Z",
}


def command_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, joined line) of each sovereign command in the file's shell code blocks."""
    lang: str | None = None
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else stripped[3:].strip()
            pending = None
            continue
        if lang not in SHELL_BLOCKS:
            continue
        start, text = pending if pending else (number, "")
        text = f"{text} {stripped}".strip()
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        if COMMAND_START.match(text):
            yield start, text


INLINE = re.compile(r"`((?:\./dev )?sovereign [^`]*)`")


def prose_of(text: str) -> str:
    """The text with fenced code blocks blanked (their lines kept, so line numbers stay right)."""
    lines, fenced = [], False
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else raw)
    return "\n".join(lines)


def inline_mentions(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, span) of each inline ``sovereign …`` code span (one may run over a line break), one per
    alternative of its first ``a|b``."""
    prose = prose_of(path.read_text(encoding="utf-8"))
    for match in INLINE.finditer(prose):
        number = prose.count("\n", 0, match.start()) + 1
        span = " ".join(match.group(1).replace("\\|", "|").split())
        words = span.split(" ")
        if PLACEHOLDER.match(words[-1]) and words[-2:-1] == ["sovereign"]:
            continue  # `./dev sovereign ARGS`: any command
        choice = next((i for i, w in enumerate(words) if re.fullmatch(r"[\w-]+(\|[\w-]+)+", w)), None)
        if choice is None:
            yield number, span
            continue
        for alternative in words[choice].split("|"):
            yield number, " ".join([*words[:choice], alternative, *words[choice + 1 :]])


def argv_of(line: str) -> list[str]:
    """The arguments after ``sovereign``, with the placeholder rules of this module's docstring applied."""
    line = re.sub(rf"^(?:\$\s+)?(?:sudo\s+)?{RUN_AS}", "", line)
    line = re.sub(r"\$\([^)]*\)", "X", line)
    line = re.sub(r"<[^>]*>", "X", line)
    line = re.sub(r"(?<=[^\s|])\|[^\s|]+", "", line)  # A|B: the first alternative
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    for word in lexer:
        if word and set(word) <= set("|&;<>"):
            break
        words.append(word)
    argv = words[words.index(next(w for w in words if w.endswith("sovereign"))) + 1 :]
    out: list[str] = []
    for token in argv:
        word = token.strip("[]")
        if word in ("...", "…"):
            # an option's elided value is a value; elsewhere "more of the same" is dropped
            word = "X" if out and out[-1].startswith("-") and "=" not in out[-1] else ""
        if word and word not in ("-h", "--help"):  # --help exits; the command before it is what is checked
            out.append(word)
    return out


class DocParseError(Exception):
    pass


def _raise(self: argparse.ArgumentParser, message: str) -> NoReturn:
    raise DocParseError(f"{self.prog}: {message}")


def _lenient(parser: argparse.ArgumentParser) -> None:
    """Input files need not exist; placeholder values of typed options become samples of the type."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _lenient(child)
            continue
        if action.type is _common.existing_file:
            action.type = Path
        elif action.type in SAMPLES:
            action.type = _placeholder_or(action.type)
        elif action.choices and action.type is None:
            action.type = _placeholder_choice(list(action.choices))


def _placeholder_or(kind: Any) -> Any:
    sample = SAMPLES.get(kind)

    def parse(text: str) -> Any:
        return kind(sample if sample is not None and PLACEHOLDER.match(text) else text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _placeholder_choice(choices: list[Any]) -> Any:
    def parse(text: str) -> Any:
        return choices[0] if PLACEHOLDER.match(text) and text not in choices else text

    return parse


def parse_documented(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    monkeypatch.setattr(CliParser, "error", _raise)
    parser = build_parser()
    _lenient(parser)
    return parser.parse_args(argv)


DOCUMENTED = [
    pytest.param(line, id=f"{path.relative_to(ROOT)}:{number}")
    for path in DOCS
    for number, line in command_lines(path)
]


def test_the_docs_show_commands() -> None:
    # the extraction finds the quick start's and the audit page's commands (not an empty parametrisation)
    ids = " ".join(str(p.id) for p in DOCUMENTED)
    assert "README.md:" in ids and "docs/audit.md:" in ids and "docs/airgap.md:" in ids
    assert len(DOCUMENTED) >= 30


@pytest.mark.parametrize("line", DOCUMENTED)
def test_documented_command_parses(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        parse_documented(argv_of(line), monkeypatch)
    except DocParseError as exc:
        pytest.fail(f"{line!r} does not parse: {exc}")


MENTIONED = [
    pytest.param(line, id=f"{path.relative_to(ROOT)}:{number}:{line}")
    for path in DOCS
    for number, line in inline_mentions(path)
]
# a mention without options may leave out what a command requires ("`sovereign audit verify`");
# anything else (unknown command or flag, bad value) fails
LEFT_OUT = re.compile(r"the following arguments are required|one of the arguments .* is required")


@pytest.mark.parametrize("line", MENTIONED)
def test_mentioned_command_exists(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        parse_documented(argv_of(line), monkeypatch)
    except DocParseError as exc:
        # a mention with an option is an invocation a reader copies: it must be complete too
        if not LEFT_OUT.search(str(exc)) or any(w.startswith("-") for w in argv_of(line)):
            pytest.fail(f"{line!r} does not parse: {exc}")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("sovereign audit proof --leaf 3", "--public-key"),
        ("sovereign key list --no-such-flag", "unrecognized"),
        ("sovereign no-such-command", "invalid choice"),
        ("sovereign audit query --limit N --since yesterday", "yesterday"),
    ],
)
def test_the_check_refuses_what_does_not_parse(
    line: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DocParseError, match=problem):
        parse_documented(argv_of(line), monkeypatch)


def test_placeholder_rules() -> None:
    line = "$ ./dev sovereign audit query --node ID|NAME [--limit N] --key <a key> ... | head  # note"
    assert argv_of(line) == ["audit", "query", "--node", "ID", "--limit", "N", "--key", "X"]
