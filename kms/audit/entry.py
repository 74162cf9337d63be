"""Audit entries: the model, its canonical encoding (RFC 8785) and the grammar the verifier checks.

An entry holds only public data. ``encode`` refuses anything that looks like secret material (bytes values,
names like *secret*/*plaintext*/*private*/*token*, PEM private keys) with ``SecretInEntry``.

The vocabulary is closed: ``fields`` keys come from ``FIELD_NAMES`` and ``kind`` from ``Kind``. Adding a
name is a one-line change here (never rename or remove one: old exports must keep verifying). The closed
vocabulary is what lets ``match_canonical`` decide "is this the RFC 8785 encoding of a valid entry" with
one compiled regular expression (key order included) instead of a parse and a re-encode per entry.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import rfc8785

from kms.audit.errors import EntryInvalid, SecretInEntry


class Kind(StrEnum):
    REGISTRATION = "registration"
    RELEASE_GRANT = "release.grant"
    RELEASE_DENY = "release.deny"
    NODE_APPROVE = "node.approve"
    NODE_REVOKE = "node.revoke"
    NODE_SUSPEND = "node.suspend"
    KEY_CREATE = "key.create"
    KEY_ROTATE = "key.rotate"
    KEY_DISABLE = "key.disable"
    KEY_ENABLE = "key.enable"
    KEY_DESTROY = "key.destroy"
    KEK_ROTATE = "kek.rotate"
    POLICY_CHANGE = "policy.change"
    COLLATERAL_IMPORT = "collateral.import"
    SERVER_START = "server.start"
    SERVER_STOP = "server.stop"
    PENDING_CREATE = "pending.create"
    PENDING_APPROVE = "pending.approve"
    PENDING_REJECT = "pending.reject"
    OPERATOR_REFUSED = "operator.refused"
    MODEL_OUTPUT = "model.output"
    LINEAGE_EXCEPTION = "lineage.exception"
    LINEAGE_EXCEPTION_WITHDRAW = "lineage.exception.withdraw"
    NODE_RENEW = "node.renew"
    DATASET_RECOVER = "dataset.recover"


class Decision(StrEnum):
    GRANT = "grant"
    DENY = "deny"
    NONE = "n/a"


FIELD_NAMES: frozenset[str] = frozenset(
    {
        "address",
        "approver",
        "audit_key_version",
        "bao_batch_index",
        "bao_batch_size",
        "bao_request_id",
        "claims_digest",
        "collateral_digest",
        "collateral_kind",
        "comment",
        "count",
        "evidence_digest",
        "fmspc",
        "gpu_architectures",
        "gpu_count",
        "gpu_driver_versions",
        "gpu_measurement_results",
        "gpu_ueids",
        "gpu_vbios_versions",
        "groups",
        "header_sha256",
        "kek_version",
        "key_kind",
        "key_name",
        "key_version",
        "job_name",
        "lease_expiry",
        "measurement",
        "new_policy_digest",
        "new_state",
        "node_id",
        "node_ids",
        "node_name",
        "old_policy_digest",
        "old_state",
        "output_sha256",
        "output_size",
        "pending_id",
        "policy_version",
        "purpose",
        "request_id",
        "roles",
        "rule",
        "sealed_sha256",
        "state",
        "step",
        "subject",
        "tcb_status",
        "tee",
        "username",
        "version",
    }
)

SECRET_NAME_PARTS = ("secret", "plaintext", "private", "token", "password")
MAX_ABS_INT = 10**15 - 1  # inside RFC 8785's exact-integer range, and a fixed digit bound for the grammar
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Scalar = str | int | bool | None
FieldValue = Scalar | tuple[Scalar, ...]


def format_time(now: datetime) -> str:
    """The one time format of entries and checkpoints: UTC, microseconds, ``Z`` (RFC 3339)."""
    if now.tzinfo is None:
        raise EntryInvalid("entry time must be timezone-aware")
    return now.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise EntryInvalid(f"time {text!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ") from None


@dataclass(frozen=True)
class Reason:
    code: str
    message: str


@dataclass(frozen=True)
class Entry:
    seq: int
    time: str
    kind: Kind
    actor: str
    decision: Decision
    reasons: tuple[Reason, ...] = ()
    fields: Mapping[str, FieldValue] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        seq: int,
        now: datetime,
        kind: Kind,
        *,
        actor: str,
        decision: Decision = Decision.NONE,
        reasons: Sequence[Reason] = (),
        fields: Mapping[str, Any] | None = None,
    ) -> Entry:
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in (fields or {}).items()}
        entry = cls(seq, format_time(now), Kind(kind), actor, Decision(decision), tuple(reasons), clean)
        entry.encode()  # validate now, not when it is written
        return entry

    def to_obj(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": str(self.kind),
            "actor": self.actor,
            "decision": str(self.decision),
            "reasons": [{"code": r.code, "message": r.message} for r in self.reasons],
            "fields": {k: list(v) if isinstance(v, tuple) else v for k, v in self.fields.items()},
        }

    def encode(self) -> bytes:
        """The canonical bytes (RFC 8785) that are hashed into the tree."""
        _check_model(self)
        # Fast path: for the entry grammar (ASCII keys, strings, small integers) json.dumps with sorted keys
        # and no ASCII escaping writes the RFC 8785 bytes; the grammar match proves it (the verifier's own
        # test), and anything it does not accept goes through rfc8785 below.
        fast = json.dumps(self.to_obj(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        try:
            encoded = fast.encode()
        except UnicodeEncodeError:
            encoded = b""
        if encoded and match_canonical(encoded) is not None:
            return encoded
        try:
            data: bytes = rfc8785.dumps(self.to_obj())
        except rfc8785.CanonicalizationError as err:
            raise EntryInvalid(f"entry {self.seq} cannot be canonicalised: {type(err).__name__}") from None
        if match_canonical(data) is None:  # pragma: no cover - _check_model admits only what the grammar does
            raise EntryInvalid(f"entry {self.seq} does not fit the entry grammar")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        """Parse canonical entry bytes (anything else is refused)."""
        try:
            text = data.decode()  # strict UTF-8: json.loads(bytes) would let lone surrogates through
        except UnicodeDecodeError:
            raise EntryInvalid("entry bytes are not valid UTF-8") from None
        if match_canonical(data) is None:
            raise EntryInvalid("not the canonical encoding of an audit entry")
        obj = json.loads(text)
        entry = cls(
            seq=obj["seq"],
            time=obj["time"],
            kind=Kind(obj["kind"]),
            actor=obj["actor"],
            decision=Decision(obj["decision"]),
            reasons=tuple(Reason(r["code"], r["message"]) for r in obj["reasons"]),
            fields={k: tuple(v) if isinstance(v, list) else v for k, v in obj["fields"].items()},
        )
        _check_model(entry)  # what the grammar cannot say: a real calendar date, no PEM private key
        return entry


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in SECRET_NAME_PARTS)


# The vocabulary is closed and none of its names looks secret, so a known name needs no secret test.
assert not any(_is_secret_name(n) for n in FIELD_NAMES), "a field name looks like secret material"


@functools.lru_cache(maxsize=64)
def _check_time(text: str) -> None:
    """``parse_time`` for validation; a batch of entries shares one time (errors are never cached)."""
    parse_time(text)


def _check_model(entry: Entry) -> None:
    if type(entry.seq) is not int or not 0 <= entry.seq <= MAX_ABS_INT:
        raise EntryInvalid(f"seq must be an integer in [0, {MAX_ABS_INT}]")
    _check_time(entry.time)
    _check_scalar("actor", entry.actor, strings_only=True)
    for r in entry.reasons:
        _check_scalar("reason code", r.code, strings_only=True)
        _check_scalar(f"reason {r.code} message", r.message, strings_only=True)
    for name, value in entry.fields.items():
        if name not in FIELD_NAMES:
            if _is_secret_name(name):
                raise SecretInEntry(f"field {name!r} is named like secret material")
            raise EntryInvalid(f"unknown audit field {name!r}")
        for item in value if isinstance(value, tuple) else (value,):
            _check_scalar(name, item, strings_only=False)


def _check_scalar(name: str, value: object, *, strings_only: bool) -> None:
    if isinstance(value, str):
        if "PRIVATE KEY" in value:
            raise SecretInEntry(f"{name} contains a PEM private key")
        return
    if isinstance(value, bytes | bytearray | memoryview):
        raise SecretInEntry(f"{name} is raw bytes; log a digest or identifier instead")
    if strings_only:
        raise EntryInvalid(f"{name} must be a string")
    if value is None or isinstance(value, bool):
        return
    if type(value) is int:
        if abs(value) > MAX_ABS_INT:
            raise EntryInvalid(f"{name} is outside [-{MAX_ABS_INT}, {MAX_ABS_INT}]")
        return
    raise EntryInvalid(f"{name} has unsupported type {type(value).__name__} (strings, integers, booleans)")


# The RFC 8785 encoding of an entry, as a grammar. Strings: no raw control characters, only the escapes
# RFC 8785 emits (\" \\ \b \f \n \r \t, \u00xx in lowercase for the other controls). Integers: no sign on
# zero, no leading zeros, at most 15 digits. Objects: keys in RFC 8785 order (all keys are ASCII, where
# UTF-16 order is byte order), each at most once. Two compiled forms: ASCII-only (the common, fast case:
# ASCII is valid UTF-8) and any bytes in strings, followed by a strict UTF-8 check.
def _entry_grammar(string_char: bytes) -> re.Pattern[bytes]:
    plain = rb'"' + string_char + rb'*+"'  # the common case, no escapes, tried first
    escaped = rb'"(?:' + string_char + rb'++|\\["\\bfnrt]|\\u00(?:0[0-7bef]|1[0-9a-f]))*+"'
    text = rb"(?:" + plain + rb"|" + escaped + rb")"
    scalar = rb"(?:" + text + rb"|0|-?[1-9][0-9]{0,14}|true|false|null)"
    value = rb"(?:" + scalar + rb"|\[\]|\[" + scalar + rb"(?:," + scalar + rb")*+\])"
    reason = rb'\{"code":' + text + rb',"message":' + text + rb"\}"
    # each present field is followed by "," and a later field, or by the closing brace
    fields = b"".join(
        rb'(?:"' + re.escape(n.encode()) + rb'":' + value + rb'(?:,(?=")|(?=\})))?+'
        for n in sorted(FIELD_NAMES)
    )
    return re.compile(
        rb'\{"actor":'
        + text
        + rb',"decision":"'
        + _alternatives([str(d) for d in Decision])
        + rb'","fields":\{'
        + fields
        + rb'\},"kind":"'
        + _alternatives([str(k) for k in Kind])
        + rb'","reasons":\[(?:'
        + reason
        + rb"(?:,"
        + reason
        + rb')*+)?\],"seq":(0|[1-9][0-9]{0,14}),"time":"'
        # month, day, hour, minute, second in range (a date like 02-30 is left to decode's calendar check)
        + rb"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        + rb'\.[0-9]{6}Z"\}'
    )


def _alternatives(values: Sequence[str]) -> bytes:
    return b"(?:" + b"|".join(re.escape(v.encode()) for v in sorted(values, key=len, reverse=True)) + b")"


match_ascii = _entry_grammar(rb'[^"\\\x00-\x1f\x80-\xff]').fullmatch
_match_any = _entry_grammar(rb'[^"\\\x00-\x1f]').fullmatch


def match_canonical(data: bytes) -> re.Match[bytes] | None:
    """A match (group 1 = the seq digits) if ``data`` is exactly the canonical encoding of a valid entry.

    ``match_ascii`` alone is the same test for ASCII-only bytes (the verifier's fast path)."""
    m = match_ascii(data)
    if m is not None:
        return m
    m = _match_any(data)
    if m is None:
        return None
    try:
        data.decode()
    except UnicodeDecodeError:
        return None
    return m
