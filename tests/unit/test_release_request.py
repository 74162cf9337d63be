"""The signed release request: one canonical encoding, the domain-separated Ed25519 signature over the
exact bytes, the shape rules and the clock-skew window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2

from enclave.identity import NodeIdentity
from kms.errors import KmsError
from kms.server.codec import release_in
from kms.usecases.release import SignedRelease, check_shape, check_skew, verify_signature
from proto.contract import SIGNING_DOMAIN
from proto.sovereign.v1 import common_pb2, key_release_pb2

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def body(**overrides: object) -> key_release_pb2.ReleaseRequestBody:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(NOW)
    fields: dict[str, object] = {
        "node_id": "n-1",
        "key_name": "dataset/train",
        "purpose": common_pb2.PURPOSE_READ,
        "request_id": b"\x42" * 16,  # fixed, so byte-level mutations hit the intended field
        "timestamp": stamp,
    }
    fields.update(overrides)
    return key_release_pb2.ReleaseRequestBody(**fields)  # type: ignore[arg-type]


def request(raw: bytes, identity: NodeIdentity | None = None) -> key_release_pb2.ReleaseRequest:
    signer = identity or NodeIdentity.generate()
    return key_release_pb2.ReleaseRequest(body=raw, signature=signer.sign(SIGNING_DOMAIN + raw))


def code(fn: object, *args: object) -> str:
    with pytest.raises(KmsError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code.value


def test_canonical_body_parses() -> None:
    raw = body(key_version=3).SerializeToString(deterministic=True)
    parsed = release_in(request(raw))
    assert parsed.body == raw
    assert parsed.fields.key_name == "dataset/train" and parsed.fields.purpose == "read"
    assert parsed.fields.timestamp == NOW and parsed.fields.key_version == 3


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda raw: raw + b"\xf8\x01\x01", id="unknown-field"),
        pytest.param(lambda raw: raw + b"\x30\x00", id="explicit-default"),
        pytest.param(lambda raw: raw + b"\x0a\x03n-2", id="repeated-field"),
        pytest.param(lambda raw: b"\x30\x07" + raw, id="reordered"),
        pytest.param(lambda raw: raw.replace(b"\x18\x01", b"\x18\x81\x00", 1), id="over-long-varint"),
    ],
)
def test_non_canonical_encodings_are_refused(mutate: object) -> None:
    raw = body().SerializeToString(deterministic=True)
    assert code(release_in, request(mutate(raw))) == "REQUEST_NOT_CANONICAL"  # type: ignore[operator]


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x0a\xff\xff", b"\x00" * 1025],
    ids=["empty", "garbage", "too-long"],
)
def test_undecodable_bodies(raw: bytes) -> None:
    assert code(release_in, request(raw)) == "REQUEST_INVALID"


def test_timestamp_is_required() -> None:
    msg = body()
    msg.ClearField("timestamp")
    assert code(release_in, request(msg.SerializeToString(deterministic=True))) == "REQUEST_INVALID"


def test_signature_covers_domain_and_exact_bytes() -> None:
    identity = NodeIdentity.generate()
    raw = body().SerializeToString(deterministic=True)
    good = identity.sign(SIGNING_DOMAIN + raw)
    verify_signature(identity.signing_public, raw, good)
    assert (
        code(verify_signature, NodeIdentity.generate().signing_public, raw, good)
        == "REQUEST_SIGNATURE_INVALID"
    )
    assert (
        code(verify_signature, identity.signing_public, raw, identity.sign(raw))
        == "REQUEST_SIGNATURE_INVALID"
    )
    tampered = raw.replace(b"dataset/train", b"dataset/other")
    assert code(verify_signature, identity.signing_public, tampered, good) == "REQUEST_SIGNATURE_INVALID"
    assert code(verify_signature, b"\x00" * 31, raw, good) == "REQUEST_SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"request_id": b"\x01" * 15}, "request id"),
        ({"key_name": "Bad Name"}, "key name"),
        ({"key_name": "a/b/c/d/e"}, "five segments"),
        ({"purpose": common_pb2.PURPOSE_UNSPECIFIED}, "purpose"),
        ({"node_id": "x" * 65}, "node id"),
    ],
)
def test_shape_rules(overrides: dict[str, object], why: str) -> None:
    parsed = release_in(request(body(**overrides).SerializeToString(deterministic=True)))
    assert code(check_shape, parsed) == "REQUEST_INVALID", why


def test_signature_length_is_checked() -> None:
    parsed = release_in(request(body().SerializeToString(deterministic=True)))
    short = SignedRelease(parsed.body, parsed.signature[:63], parsed.fields)
    assert code(check_shape, short) == "REQUEST_INVALID"


@pytest.mark.parametrize("offset", [-120, 0, 120])
def test_skew_window_is_inclusive(offset: int) -> None:
    check_skew(NOW + timedelta(seconds=offset), NOW, timedelta(seconds=120))


@pytest.mark.parametrize("offset", [-121, 121, -86400])
def test_skew_outside_window(offset: int) -> None:
    assert (
        code(check_skew, NOW + timedelta(seconds=offset), NOW, timedelta(seconds=120)) == "REQUEST_CLOCK_SKEW"
    )
