"""Strict decoding of stored claims (``Claims.to_dict()`` output) and of dry-run node lists.

The registry stores claims as JSON; re-appraisal and ``sovereign policy dry-run`` turn them back into
``Claims`` here. Anything that ``to_dict`` could not have written is a CLAIMS_INVALID error naming the path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TypeVar

from attestation.claims import Claims, TcbStatus, Tee
from policies.errors import Code, PolicyError
from policies.model import NodeState
from policies.reappraise import node_state

_T = TypeVar("_T")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_FIELDS = frozenset(
    {
        "tee",
        "product",
        "version",
        "measurement",
        "report_data",
        "host_data",
        "debug",
        "policy",
        "tcb",
        "tcb_status",
        "platform_id",
        "rtmrs",
        "details",
        "simulated",
        "revocation_checked",
    }
)


def _bad(path: str, what: str) -> PolicyError:
    return PolicyError(f"{path}: {what}", code=Code.CLAIMS_INVALID, path=path)


def _typed(value: object, kind: type[_T], path: str) -> _T:
    if type(value) is not kind:
        raise _bad(path, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _hex(value: object, path: str) -> bytes:
    text = _typed(value, str, path)
    if not _HEX.fullmatch(text):
        raise _bad(path, "expected an even number of hex digits")
    return bytes.fromhex(text)


def _enum(kind: Callable[[str], _T], value: object, path: str) -> _T:
    try:
        return kind(_typed(value, str, path))
    except ValueError:
        raise _bad(path, f"{value!r:.60} is not a known value") from None


def _int_text(value: object, path: str) -> int:
    text = _typed(value, str, path)
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise _bad(path, f"{text!r:.60} is not an integer") from None


def claims_from_dict(data: object, path: str = "claims") -> Claims:
    """The inverse of ``Claims.to_dict()``; rejects unknown, missing and mistyped fields."""
    d = _typed(data, dict, path)
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise _bad(f"{path}.{unknown[0]}", "unknown field")
    missing = sorted(_FIELDS - set(d) - {"rtmrs", "details", "simulated", "revocation_checked"})
    if missing:
        raise _bad(f"{path}.{missing[0]}", "required field is missing")
    rtmrs = _typed(d.get("rtmrs", []), list, f"{path}.rtmrs")
    return Claims(
        tee=_enum(Tee, d["tee"], f"{path}.tee"),
        product=_typed(d["product"], str, f"{path}.product"),
        version=_typed(d["version"], int, f"{path}.version"),
        measurement=_hex(d["measurement"], f"{path}.measurement"),
        report_data=_hex(d["report_data"], f"{path}.report_data"),
        host_data=_hex(d["host_data"], f"{path}.host_data"),
        debug=_typed(d["debug"], bool, f"{path}.debug"),
        policy=_int_text(d["policy"], f"{path}.policy"),
        tcb=_typed(d["tcb"], dict, f"{path}.tcb"),
        tcb_status=_enum(TcbStatus, d["tcb_status"], f"{path}.tcb_status"),
        platform_id=_hex(d["platform_id"], f"{path}.platform_id"),
        rtmrs=tuple(_hex(v, f"{path}.rtmrs[{i}]") for i, v in enumerate(rtmrs)),
        details=_typed(d.get("details", {}), dict, f"{path}.details"),
        simulated=_typed(d.get("simulated", False), bool, f"{path}.simulated"),
        # Claims stored before the field existed were not known to be revocation-checked: fail closed.
        revocation_checked=_typed(d.get("revocation_checked", False), bool, f"{path}.revocation_checked"),
    )


def nodes_from_list(data: object) -> list[tuple[str, Claims, NodeState]]:
    """A dry-run node list: ``[{"node_id", "state", "claims": Claims.to_dict()}, ...]``."""
    out = []
    seen: set[str] = set()
    for i, item in enumerate(_typed(data, list, "nodes")):
        path = f"nodes[{i}]"
        node = _typed(item, dict, path)
        unknown = sorted(set(node) - {"node_id", "state", "claims"})
        if unknown:
            raise _bad(f"{path}.{unknown[0]}", "unknown field")
        for key in ("node_id", "state", "claims"):
            if key not in node:
                raise _bad(f"{path}.{key}", "required field is missing")
        node_id = _typed(node["node_id"], str, f"{path}.node_id")
        if node_id in seen:
            raise _bad(f"{path}.node_id", f"node {node_id!r:.60} is listed twice")
        seen.add(node_id)
        try:
            state = node_state(node["state"])
        except PolicyError as exc:
            raise _bad(f"{path}.state", exc.message) from None
        out.append((node_id, claims_from_dict(node["claims"], f"{path}.claims"), state))
    return out


def nodes_from_json(text: str | bytes) -> list[tuple[str, Claims, NodeState]]:
    """``nodes_from_list`` over JSON text (a registry export or a hand-written dry-run file)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad("nodes", f"not valid JSON: {exc}") from None
    return nodes_from_list(data)
