"""Shared output for CLI modules: JSON for scripts, aligned tables for people, coded errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class CodedError(Protocol):
    code: Any
    message: str
    hint: str


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def fail(err: CodedError, *, as_json: bool, exit_code: int = 1) -> int:
    """Report a coded error (on stdout as JSON when asked, else on stderr) and return the exit code."""
    code = str(err.code)
    if as_json:
        print_json({"ok": False, "error": {"code": code, "message": err.message, "hint": err.hint}})
    else:
        print(f"error: {code}: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
    return exit_code
