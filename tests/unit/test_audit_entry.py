"""Audit entries: model, secret guard, canonical encoding, and the grammar the verifier relies on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.audit.entry import (
    FIELD_NAMES,
    SECRET_NAME_PARTS,
    Decision,
    Entry,
    Kind,
    Reason,
    format_time,
    match_canonical,
)
from kms.audit.errors import EntryInvalid, SecretInEntry
from kms.errors import Code

NOW = datetime(2026, 5, 1, 8, 30, 15, 123456, tzinfo=UTC)


def make(**fields: object) -> Entry:
    return Entry.create(
        7, NOW, Kind.RELEASE_GRANT, actor="node:abc", decision=Decision.GRANT, fields=fields or None
    )


def test_encoding_is_rfc8785_and_round_trips() -> None:
    e = Entry.create(
        7,
        NOW,
        Kind.RELEASE_DENY,
        actor="alice",
        decision=Decision.DENY,
        reasons=[Reason("RELEASE_LEASE_EXPIRED", 'lease ended "at" 08:00\n\u00e9\U0001f600')],
        fields={"node_id": "n1", "key_version": 3, "roles": ["operator", "auditor"], "purpose": None},
    )
    data = e.encode()
    assert data == rfc8785.dumps(json.loads(data))
    assert data.startswith(b'{"actor":"alice","decision":"deny","fields":{"key_version":3,')
    assert Entry.decode(data) == e
    assert match_canonical(data) is not None


def test_time_is_utc_with_microseconds() -> None:
    assert format_time(NOW) == "2026-05-01T08:30:15.123456Z"
    assert format_time(NOW.astimezone(timezone(timedelta(hours=2)))) == "2026-05-01T08:30:15.123456Z"
    with pytest.raises(EntryInvalid):
        format_time(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "fields",
    [
        {"node_id": b"\x00\x01"},
        {"subject": bytearray(b"k")},
        {"roles": ["ok", b"raw"]},
        {"node_name": "-----BEGIN PRIVATE KEY-----\nMC4CAQ..."},
    ],
)
def test_secret_looking_values_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(SecretInEntry) as info:
        make(**fields)
    assert info.value.code == Code.AUDIT_SECRET_IN_ENTRY
    assert "MC4CAQ" not in str(info.value)


@pytest.mark.parametrize("name", ["client_secret", "plaintext_key", "private_key", "bao_token", "Password"])
def test_secret_looking_names_are_refused(name: str) -> None:
    with pytest.raises(SecretInEntry):
        make(**{name: "x"})


def test_no_vocabulary_name_looks_secret() -> None:
    assert not [n for n in FIELD_NAMES if any(p in n for p in SECRET_NAME_PARTS)]


@pytest.mark.parametrize(
    "fields",
    [{"unknown_field": "x"}, {"key_version": 1.5}, {"key_version": 10**15}, {"roles": [["nested"]]}],
)
def test_values_outside_the_model_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(EntryInvalid):
        make(**fields)


def test_bad_seq_actor_and_time_are_refused() -> None:
    with pytest.raises(EntryInvalid):
        Entry.create(-1, NOW, Kind.SERVER_START, actor="system")
    with pytest.raises(EntryInvalid):
        Entry.create(True, NOW, Kind.SERVER_START, actor="system")
    with pytest.raises(EntryInvalid):
        Entry(0, "yesterday", Kind.SERVER_START, "system", Decision.NONE).encode()
    with pytest.raises(EntryInvalid):
        Entry(0, format_time(NOW), Kind.SERVER_START, 5, Decision.NONE).encode()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonsense"):
        Entry.create(0, NOW, "nonsense", actor="system")  # type: ignore[arg-type]


def test_decode_refuses_non_canonical_bytes() -> None:
    data = make(node_id="n").encode()
    with pytest.raises(EntryInvalid):
        Entry.decode(data.replace(b":", b": ", 1))


scalars = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**15) + 1, 10**15 - 1),
    st.booleans(),
    st.none(),
)
field_values = st.one_of(scalars, st.lists(scalars, max_size=3))


def _entry_or_none(
    seq: int,
    kind: Kind,
    decision: Decision,
    actor: str,
    reasons: list[tuple[str, str]],
    fields: dict[str, object],
    offset: int,
) -> Entry | None:
    try:
        return Entry.create(
            seq,
            NOW + timedelta(microseconds=offset),
            kind,
            actor=actor,
            decision=decision,
            reasons=[Reason(c, m) for c, m in reasons],
            fields=fields,
        )
    except EntryInvalid:  # lone surrogates, or text that looks like a PEM private key
        return None


entries = st.builds(
    _entry_or_none,
    st.integers(0, 10**15 - 1),
    st.sampled_from(list(Kind)),
    st.sampled_from(list(Decision)),
    st.text(max_size=10),
    st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=2),
    st.dictionaries(st.sampled_from(sorted(FIELD_NAMES)), field_values, max_size=6),
    st.integers(0, 10**9),
).filter(lambda e: e is not None)


@settings(max_examples=300, deadline=None)
@given(entries)
def test_the_grammar_accepts_every_canonical_entry(e: Entry) -> None:
    data = e.encode()
    m = match_canonical(data)
    assert m is not None
    assert int(m.group(1)) == e.seq
    assert Entry.decode(data) == e


@settings(max_examples=500, deadline=None)
@given(entries, st.data())
def test_the_grammar_accepts_a_changed_entry_only_if_it_is_canonical(e: Entry, data: st.DataObject) -> None:
    raw = bytearray(e.encode())
    pos = data.draw(st.integers(0, len(raw) - 1))
    op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    if op == "flip":
        raw[pos] ^= data.draw(st.integers(1, 255))
    elif op == "insert":
        raw.insert(pos, data.draw(st.sampled_from(b' ,:"\\{}[]0-e\x01\x7f\xc3')))
    else:
        del raw[pos]
    changed = bytes(raw)
    if match_canonical(changed) is None:
        return
    # accepted: then it is valid UTF-8 and exactly the RFC 8785 encoding of what it parses to
    assert rfc8785.dumps(json.loads(changed.decode())) == changed
    try:
        decoded = Entry.decode(changed)
    except EntryInvalid:  # what a grammar cannot say (a date like 02-30): decode refuses it
        return
    assert decoded.encode() == changed


@pytest.mark.parametrize(
    ("time", "refused_by"),
    [
        ("2026-15-01T08:30:15.123456Z", "grammar"),  # no month 15
        ("2026-01-01T24:00:00.000000Z", "grammar"),  # no hour 24
        ("2026-02-30T08:30:15.123456Z", "decode"),  # in every field's range, not in the calendar
    ],
)
def test_an_entry_time_must_be_a_real_time(time: str, refused_by: str) -> None:
    good = make().encode()
    data = good.replace(make().time.encode(), time.encode())
    assert data != good
    assert (match_canonical(data) is None) == (refused_by == "grammar")
    with pytest.raises(EntryInvalid):
        Entry.decode(data)


@pytest.mark.parametrize("bad", [b"\xff", b"\xed\xa0\x80", b"\xc3"])
def test_invalid_utf8_is_refused(bad: bytes) -> None:
    data = make(node_id="n\u00e9").encode().replace("\u00e9".encode(), bad)
    assert match_canonical(data) is None
    with pytest.raises(EntryInvalid):
        Entry.decode(data)
