"""Key names, shared by the control plane, the nodes and release policies (one rule, one place).

A name is one to four ``/``-separated segments of ``[a-z0-9][a-z0-9._-]*`` (at most 128 characters in all),
so release rules can grant by prefix (``dataset/*``) and no segment can be empty, ``.`` or ``..``. A
release rule's key pattern is a name, or ``PREFIX/*`` where ``PREFIX/x`` would be a name (so the pattern
can match some name). Stdlib only: ``policies`` imports this module too (tests/unit/test_layering.py).
"""

from __future__ import annotations

import re

KEY_NAME_RULE = "1-4 '/'-separated segments of [a-z0-9][a-z0-9._-]*, at most 128 characters"
_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*){0,3}")
MAX_KEY_NAME = 128


KEY_PATTERN_RULE = f"a key name ({KEY_NAME_RULE}) or PREFIX/* where PREFIX/x would be one"


def is_valid_key_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_KEY_NAME and _KEY_NAME.fullmatch(name) is not None


def is_valid_key_pattern(pattern: object) -> bool:
    """A release rule's key pattern: a key name, or ``PREFIX/*`` covering names under ``PREFIX/``."""
    if isinstance(pattern, str) and pattern.endswith("/*"):
        return is_valid_key_name(pattern[:-1] + "x")
    return is_valid_key_name(pattern)


_KEY_REF = re.compile(r"(?P<name>[a-z0-9][a-z0-9._/-]*)@v(?P<version>[1-9][0-9]{0,9})")


def format_key_ref(name: str, version: int) -> str:
    """What a sealed stream's header names: ``NAME@vVERSION`` (e.g. ``dataset/imagenet@v3``)."""
    return f"{name}@v{version}"


def parse_key_ref(key_ref: bytes | str) -> tuple[str, int] | None:
    """``(name, version)`` from a stream header's key_ref, or None if it is not in that form."""
    try:
        text = key_ref.decode("ascii") if isinstance(key_ref, bytes) else key_ref
    except UnicodeDecodeError:
        return None
    match = _KEY_REF.fullmatch(text)
    if match is None or not is_valid_key_name(match["name"]):
        return None
    return match["name"], int(match["version"])
