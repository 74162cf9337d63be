"""Key names, shared by the control plane and nodes (one rule, one place).

A name is one to four ``/``-separated segments of ``[a-z0-9][a-z0-9._-]*`` (at most 128 characters in all),
so release rules can grant by prefix (``dataset/*``) and no segment can be empty, ``.`` or ``..``.
"""

from __future__ import annotations

import re

KEY_NAME_RULE = "1-4 '/'-separated segments of [a-z0-9][a-z0-9._-]*, at most 128 characters"
_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*){0,3}")
MAX_KEY_NAME = 128


def is_valid_key_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_KEY_NAME and _KEY_NAME.fullmatch(name) is not None


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
