"""Protobuf replies <-> ``sovereign.client.records`` values, and those values as protobuf's JSON.

``from_message`` reads a reply into a record by field name (records name their fields as the messages
do), checking every enum against the record's vocabulary: a value the client does not know is a reply
out of contract (``REPLY_INVALID``), never a guess. ``to_json`` renders a record as
``MessageToDict(..., preserving_proto_field_name=True)`` renders the message it came from (defaults left
out, enums by their wire names, bytes in base64, timestamps in RFC 3339, 64-bit integers as strings).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

from google.protobuf import timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from sovereign.client.errors import OperatorError
from sovereign.client.records import (
    ChangeState,
    Decision,
    KeyKind,
    KeyState,
    NodeState,
    Purpose,
    Tee,
)

T = TypeVar("T")
# The prefix of each enum's wire names (NODE_STATE_ATTESTED is NodeState.ATTESTED).
WIRE_PREFIX: dict[type[StrEnum], str] = {
    Tee: "TEE_",
    NodeState: "NODE_STATE_",
    KeyKind: "KEY_KIND_",
    KeyState: "KEY_STATE_",
    ChangeState: "PENDING_CHANGE_STATE_",
    Decision: "DECISION_",
    Purpose: "PURPOSE_",
}


def out_of_contract(what: str) -> OperatorError:
    return OperatorError(
        "REPLY_INVALID",
        f"the server's reply is out of contract: {what}",
        "check that this client and the control plane are the same release",
        "OK",
    )


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_of(hint: Any) -> Any:
    """``X`` of ``X | None``; None when ``hint`` is not optional."""
    if isinstance(hint, types.UnionType) and type(None) in hint.__args__:
        (inner,) = (a for a in hint.__args__ if a is not type(None))
        return inner
    return None


def wire_name(value: StrEnum | None) -> str | None:
    """The wire name of ``value`` (``NodeState.ATTESTED`` is ``NODE_STATE_ATTESTED``); None stays unset."""
    return None if value is None else WIRE_PREFIX[type(value)] + value.value


def _enum_in(cls: type[StrEnum], msg: Message, name: str, number: int) -> StrEnum | None:
    if number == 0:
        return None
    enum_type = msg.DESCRIPTOR.fields_by_name[name].enum_type
    assert enum_type is not None  # the record's field is an enum where the message's is
    value = enum_type.values_by_number.get(number)
    short = value.name.removeprefix(WIRE_PREFIX[cls]) if value is not None else ""
    if short not in cls.__members__:
        raise out_of_contract(f"{msg.DESCRIPTOR.name}.{name} = {number} is not a known value")
    return cls[short]


def _value_in(hint: Any, msg: Message, name: str) -> Any:
    inner = _optional_of(hint)
    if inner is not None:
        if isinstance(inner, type) and issubclass(inner, StrEnum):
            return _enum_in(inner, msg, name, getattr(msg, name))
        if not msg.HasField(name):
            return None
        value = getattr(msg, name)
        if inner is datetime:
            return cast(timestamp_pb2.Timestamp, value).ToDatetime(tzinfo=UTC)
        if dataclasses.is_dataclass(inner):
            return from_message(cast(type[Any], inner), value)
        return MessageToDict(value, preserving_proto_field_name=True)  # the held request (an Any)
    value = getattr(msg, name)
    if typing.get_origin(hint) is tuple:
        (item,) = (a for a in typing.get_args(hint) if a is not Ellipsis)
        if dataclasses.is_dataclass(item):
            return tuple(from_message(cast(type[Any], item), v) for v in value)
        return tuple(item(v) for v in value)
    return hint(value)


def from_message(cls: type[T], msg: Message) -> T:
    """``cls`` (a record) with every field read from ``msg``'s field of the same name."""
    hints = _hints(cast(Any, cls))
    fields = dataclasses.fields(cast(Any, cls))
    return cls(**{f.name: _value_in(hints[f.name], msg, f.name) for f in fields})


def _is_default(value: Any) -> bool:
    return value is None or (
        not isinstance(value, Mapping) and not dataclasses.is_dataclass(value) and not value
    )


def _json(value: Any, int64: bool = False) -> Any:
    if isinstance(value, StrEnum):
        return WIRE_PREFIX[type(value)] + value.value
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return str(value) if int64 else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(value)
        return stamp.ToJsonString()
    if isinstance(value, tuple):
        return [_json(v, int64) for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    return to_json(value)


def to_json(record: Any) -> dict[str, Any]:
    """``record`` as protobuf's JSON mapping renders the message it stands for."""
    return {
        f.name: _json(getattr(record, f.name), bool(f.metadata.get("int64")))
        for f in dataclasses.fields(record)
        if not _is_default(getattr(record, f.name))
    }
