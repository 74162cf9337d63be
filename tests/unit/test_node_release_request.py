"""The node's release request: byte-exact signing transcript (proto/README.md) and the checks on a reply
before its sealed key is opened (AAD rebuilt locally, mismatch refused)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from nacl.signing import VerifyKey

from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.release_request import (
    ReleaseFields,
    ReleaseGrant,
    encode_body,
    open_grant,
    sign_release,
    unix_seconds,
)
from kms.envelope import release_aad, seal_key
from kms.server.codec import release_in
from proto.contract import SIGNING_DOMAIN, release_transcript
from proto.sovereign.v1 import key_release_pb2

WHEN = datetime(2026, 11, 28, 7, 30, 15, 250_000, tzinfo=UTC)
RID = bytes(range(16))
KEY = bytes(range(100, 132))
LEASE = datetime(2026, 11, 28, 7, 35, 0, 900_000, tzinfo=UTC)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    tag = varint(number << 3 | wire_type)
    return tag + (varint(len(payload)) + payload if wire_type == 2 else payload)


def hand_encoded(
    node_id: str, key_name: str, purpose: int, rid: bytes, when: datetime, version: int
) -> bytes:
    """The canonical protobuf encoding written out by hand: fields in number order, defaults omitted."""
    seconds = unix_seconds(when)
    nanos = when.microsecond * 1000
    stamp = field(1, 0, varint(seconds)) + (field(2, 0, varint(nanos)) if nanos else b"")
    return b"".join(
        (
            field(1, 2, node_id.encode()),
            field(2, 2, key_name.encode()),
            field(3, 0, varint(purpose)),
            field(4, 2, rid),
            field(5, 2, stamp),
            field(6, 0, varint(version)) if version else b"",
        )
    )


def fields(**kw: object) -> ReleaseFields:
    values: dict[str, object] = {
        "node_id": "n-0123456789",
        "key_name": "ds-train",
        "purpose": "read",
        "request_id": RID,
        "timestamp": WHEN,
    }
    values.update(kw)
    return ReleaseFields(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("purpose", "wire", "version"), [("read", 1, 0), ("write", 2, 0), ("read", 1, 7), ("write", 2, 300)]
)
def test_body_is_byte_exact_canonical_encoding(purpose: str, wire: int, version: int) -> None:
    body = encode_body(fields(purpose=purpose, key_version=version))
    assert body == hand_encoded("n-0123456789", "ds-train", wire, RID, WHEN, version)


def test_timestamp_in_another_zone_encodes_as_the_same_instant() -> None:
    cet = WHEN.astimezone(timezone(timedelta(hours=1)))
    assert encode_body(fields(timestamp=cet)) == encode_body(fields())
    whole = WHEN.replace(microsecond=0)
    assert encode_body(fields(timestamp=whole)) == hand_encoded("n-0123456789", "ds-train", 1, RID, whole, 0)


def test_signature_covers_domain_then_exact_body_and_server_accepts_it() -> None:
    identity = NodeIdentity.generate()
    signed = sign_release(identity, fields(key_version=3))
    assert SIGNING_DOMAIN == b"sovereign/v1 release" and len(SIGNING_DOMAIN) == 20
    assert release_transcript(signed.body) == SIGNING_DOMAIN + signed.body
    VerifyKey(identity.signing_public).verify(SIGNING_DOMAIN + signed.body, signed.signature)
    with pytest.raises(Exception, match="Signature"):
        VerifyKey(identity.signing_public).verify(signed.body, signed.signature)  # no domain: must fail
    # The control plane's own decoder takes it as canonical and reads back the same fields.
    parsed = release_in(key_release_pb2.ReleaseRequest(body=signed.body, signature=signed.signature))
    assert parsed.body == signed.body and parsed.signature == signed.signature
    f = parsed.fields
    assert (f.node_id, f.key_name, f.purpose, f.request_id, f.key_version) == (
        "n-0123456789",
        "ds-train",
        "read",
        RID,
        3,
    )
    assert f.timestamp == WHEN


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"node_id": ""}, "node id"),
        ({"key_name": "Bad_Name"}, "key name"),
        ({"key_name": "a" * 129}, "key name"),
        ({"purpose": "admin"}, "purpose"),
        ({"request_id": b"x" * 15}, "request id"),
        ({"timestamp": WHEN.replace(tzinfo=None)}, "timezone"),
        ({"key_version": -1}, "key version"),
        ({"key_version": 1 << 32}, "key version"),
    ],
)
def test_bad_fields_are_refused_before_signing(change: dict[str, object], match: str) -> None:
    with pytest.raises(NodeError, match=match) as info:
        fields(**change)
    assert info.value.code is NodeCode.CONFIG_INVALID


def grant_for(identity: NodeIdentity, request: ReleaseFields, **kw: object) -> ReleaseGrant:
    """What an honest control plane would send for ``request``."""
    version = int(kw.pop("key_version", request.key_version or 2))  # type: ignore[call-overload]
    aad = release_aad(
        node_id=request.node_id,
        key_name=request.key_name,
        key_version=version,
        purpose=request.purpose,
        request_id=request.request_id,
        audit_sequence=41,
        lease_expiry=int(LEASE.timestamp()),
    )
    grant = ReleaseGrant(
        sealed_key=seal_key(identity.kem_public, identity.suite, KEY, aad),
        key_name=request.key_name,
        key_version=version,
        purpose=request.purpose,
        audit_sequence=41,
        lease_expires_at=LEASE,
        aad=aad,
    )
    return dataclasses.replace(grant, **kw)  # type: ignore[arg-type]


def test_honest_grant_opens() -> None:
    identity = NodeIdentity.generate()
    request = fields()
    released = open_grant(identity.kem_private_key(), request, grant_for(identity, request))
    assert released.key == KEY and released.key_version == 2 and released.audit_sequence == 41
    assert KEY.hex() not in repr(released)


@pytest.mark.parametrize(
    "tamper",
    [
        {"audit_sequence": 42},  # the reply claims another ledger entry than the one sealed into the AAD
        {"lease_expires_at": LEASE + timedelta(seconds=1)},
        {"key_version": 3},
    ],
    ids=["audit_sequence", "lease", "version"],
)
def test_aad_mismatch_is_refused_without_opening(tamper: dict[str, object]) -> None:
    identity = NodeIdentity.generate()
    request = fields()
    grant = grant_for(identity, request)
    with pytest.raises(NodeError) as info:
        open_grant(identity.kem_private_key(), request, dataclasses.replace(grant, **tamper))  # type: ignore[arg-type]
    assert info.value.code is NodeCode.RELEASE_AAD_MISMATCH


def test_server_aad_for_another_request_is_refused_even_if_consistent() -> None:
    """A server (or a replayer) handing back a grant sealed for another request id: its own ``aad`` is
    self-consistent and opens, but it is not the AAD of this request."""
    identity = NodeIdentity.generate()
    other = fields(request_id=b"\xff" * 16)
    request = fields()
    with pytest.raises(NodeError) as info:
        open_grant(identity.kem_private_key(), request, grant_for(identity, other))
    assert info.value.code is NodeCode.RELEASE_AAD_MISMATCH


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        ({"key_name": "ds-other"}, "reply is for"),
        ({"purpose": "write"}, "grants"),
        ({"key_version": 0}, "1.."),
    ],
)
def test_reply_that_answers_something_else_is_refused(tamper: dict[str, object], match: str) -> None:
    identity = NodeIdentity.generate()
    request = fields()
    with pytest.raises(NodeError, match=match) as info:
        open_grant(identity.kem_private_key(), request, grant_for(identity, request, **tamper))
    assert info.value.code is NodeCode.RELEASE_RESPONSE_INVALID


def test_requested_version_must_be_the_one_released() -> None:
    identity = NodeIdentity.generate()
    request = fields(key_version=1)
    with pytest.raises(NodeError, match="asked for version 1") as info:
        open_grant(identity.kem_private_key(), request, grant_for(identity, request, key_version=2))
    assert info.value.code is NodeCode.RELEASE_RESPONSE_INVALID


def test_sealed_to_another_node_does_not_open() -> None:
    node, other = NodeIdentity.generate(), NodeIdentity.generate()
    request = fields()
    with pytest.raises(NodeError) as info:
        open_grant(node.kem_private_key(), request, grant_for(other, request))
    assert info.value.code is NodeCode.SEALED_KEY_INVALID
    assert KEY.hex() not in str(info.value)
