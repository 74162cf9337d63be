"""Shared output for CLI modules: the one ``--json`` envelope, aligned tables for people, coded errors.

With ``--json`` every command prints one JSON object on stdout: ``{"ok": true, ...}`` with the
command's named fields (a list is always under a name, e.g. ``"keys": [...]``), or ``{"ok": false,
"error": {"code", "message", "hint"}}``. Without it, people get tables and sentences, and errors go to
stderr as ``error: CODE: message`` and ``hint: ...``. docs/cli.md describes both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

USAGE_INVALID = "USAGE_INVALID"
EXIT_USAGE = 2
RESERVED = frozenset({"ok", "error"})


class CodedError(Protocol):
    @property
    def code(self) -> Any: ...
    @property
    def message(self) -> str: ...
    @property
    def hint(self) -> str | None: ...


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_ok(fields: Mapping[str, Any] | None = None, **more: Any) -> None:
    """The success envelope: ``{"ok": true}`` with ``fields``; a field may not be named ok or error."""
    body = {**(fields or {}), **more}
    clash = RESERVED & body.keys()
    if clash:
        raise ValueError(f"output fields may not be named {sorted(clash)}")
    print_json({"ok": True, **body})


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Enum):
        return readable(value)
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def readable(value: Any) -> str:
    """An enum or wire name as people read it: ``NodeState.ATTESTED`` or ``NODE_STATE_ATTESTED`` -> attested."""
    text = str(getattr(value, "value", value))
    for prefix in (
        "NODE_STATE_",
        "KEY_STATE_",
        "KEY_KIND_",
        "PENDING_CHANGE_STATE_",
        "DECISION_",
        "PURPOSE_",
    ):
        text = text.removeprefix(prefix)
    return text.lower().replace("_", " ") if text.isupper() else text


def until(when: datetime | None, now: datetime) -> str:
    """``2026-12-03 12:40:00 (in 52 min)``, or ``... (expired 3 min ago)``; ``-`` for none."""
    if when is None:
        return "-"
    seconds = int((when - now).total_seconds())
    span = abs(seconds)
    amount = (
        f"{span // 86400} d"
        if span >= 86400
        else f"{span // 3600} h"
        if span >= 3600
        else f"{span // 60} min"
    )
    state = f"in {amount}" if seconds > 0 else f"expired {amount} ago"
    return f"{_cell(when)} ({state})"


def joined(values: Iterable[Any]) -> str:
    return ",".join(str(v) for v in values) or "-"


def error_fields(err: CodedError) -> dict[str, str]:
    """code, message and hint of a coded error; the code is said once even when the message repeats it."""
    code = str(err.code)
    message = str(err.message)
    while message.startswith(f"{code}: "):
        message = message.removeprefix(f"{code}: ")
    to_dict = getattr(err, "to_dict", None)
    extra = to_dict() if callable(to_dict) else {}  # e.g. an export's line and index
    return {
        **{str(k): str(v) for k, v in extra.items()},
        "code": code,
        "message": message,
        "hint": err.hint or "",
    }


def fail(err: CodedError, *, as_json: bool, exit_code: int = 1) -> int:
    """Report a coded error (on stdout as JSON when asked, else on stderr) and return the exit code."""
    fields = error_fields(err)
    if as_json:
        print_json({"ok": False, "error": fields})
    else:
        print(f"error: {fields['code']}: {fields['message']}", file=sys.stderr)
        if fields["hint"]:
            print(f"hint: {fields['hint']}", file=sys.stderr)
    return exit_code


class UsageError(Exception):
    """Arguments the command cannot use (exit 2, code USAGE_INVALID)."""

    code = USAGE_INVALID

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
