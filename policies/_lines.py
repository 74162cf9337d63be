"""Best-effort: the line of a key path in TOML text, so schema errors can say where to look.

``tomllib`` gives a line only for syntax errors. For schema errors we scan headers (``[a.b]``,
``[[a.b]]`` with their running index), ``key =`` lines and one-element-per-line arrays, and answer with
the line of the longest known prefix of the path. It never raises; ``None`` means "no idea".
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(
    r"\s*((?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*'))*)\s*=(.*)$"
)
_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)")
_STRING = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'")


def _parts(dotted: str) -> list[str]:
    return [a or b or c for a, b, c in _PART.findall(dotted)]


def _depth(text: str) -> int:
    bare = _STRING.sub("", text).split("#", 1)[0]
    return bare.count("[") - bare.count("]")


def _elements(line: str) -> int:
    """Array elements that start on this line: inline tables count once, strings each."""
    stripped = line.lstrip()
    if stripped.startswith("{"):
        return 1
    return len(_STRING.findall(line)) if stripped.startswith(('"', "'")) else 0


def _index(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}  # concrete array-of-tables path -> entries seen
    table = ""
    open_array: str | None = None
    depth = element = 0
    in_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        quotes = line.count('"""') + line.count("'''")
        if in_string:
            in_string = quotes % 2 == 0
            continue
        if open_array is not None:
            for _ in range(_elements(line)):
                lines.setdefault(f"{open_array}[{element}]", number)
                element += 1
            depth += _depth(line)
            if depth <= 0:
                open_array = None
            continue
        if header := _HEADER.match(line):
            is_array = header.group(1) == "[["
            concrete = ""
            parts = _parts(header.group(2))
            for i, part in enumerate(parts):
                concrete = f"{concrete}.{part}" if concrete else part
                if i < len(parts) - 1 and concrete in arrays:
                    concrete += f"[{arrays[concrete] - 1}]"
                if i < len(parts) - 1:
                    lines.setdefault(concrete, number)  # a table created implicitly by this header
            if is_array:
                arrays[concrete] = arrays.get(concrete, 0) + 1
                concrete += f"[{arrays[concrete] - 1}]"
            lines.setdefault(concrete, number)
            table = concrete
            continue
        if key := _KEY.match(line):
            path = ".".join([table, *_parts(key.group(1))] if table else _parts(key.group(1)))
            lines.setdefault(path, number)
            value = key.group(2)
            if quotes % 2 == 1:
                in_string = True
            elif value.lstrip().startswith("[") and _depth(value) > 0:
                open_array, depth = path, _depth(value)
                element = _elements(value.lstrip()[1:])
    return lines


def locate(text: str, path: str) -> int | None:
    """The line of ``path`` (``a.b[1].c[0]``) or of its longest prefix found in ``text``."""
    try:
        lines = _index(text)
    except (ValueError, IndexError, RecursionError):  # pragma: no cover - a locator must never fail
        return None
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None
