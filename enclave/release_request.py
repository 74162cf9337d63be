"""Release requests: the signed ``ReleaseRequestBody`` and the checks on a reply before its key is opened.

Signing (proto/README.md, "Release-request signing transcript"; the encoding, size limit and domain are
``proto.contract``'s, shared with the control plane):

    body      = ReleaseRequestBody(...).SerializeToString(deterministic=True)
    signature = Ed25519(node signing key, b"sovereign/v1 release" || body)

Opening (step 5): the AAD is rebuilt from this node's own request (node id, key name, purpose, request
id) and the reply's key version, audit sequence and lease expiry; it must equal the reply's ``aad``
byte for byte, and only then is the sealed key opened, with the locally built AAD.

Pure: no I/O and no clock (the caller passes the timestamp and the random request id).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn, Protocol

from enclave.errors import NodeCode, NodeError
from kms.envelope import EnvelopeError, PrivateKey, open_sealed_key, release_aad
from kms.envelope.names import KEY_NAME_RULE, is_valid_key_name
from proto.contract import BodyRejected, encode_release_body, release_transcript
from proto.sovereign.v1 import common_pb2, key_release_pb2

REQUEST_ID_LEN = 16
DATA_KEY_LEN = 32
MAX_KEY_VERSION = (1 << 32) - 1
PURPOSES = ("read", "write")
_PURPOSE_WIRE = {"read": common_pb2.PURPOSE_READ, "write": common_pb2.PURPOSE_WRITE}
_NODE_ID = re.compile(r"[\x21-\x7e]{1,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


def _invalid(message: str) -> NodeError:
    return NodeError(message, code=NodeCode.CONFIG_INVALID)


def _bad_reply(message: str) -> NodeError:
    return NodeError(message, code=NodeCode.RELEASE_RESPONSE_INVALID)


def check_key_name(name: str) -> str:
    """``name`` if it is a valid key name (``kms.envelope.names``), else CONFIG_INVALID."""
    if not is_valid_key_name(name):
        raise _invalid(f"key name {name!r} is not {KEY_NAME_RULE}")
    return name


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise _invalid(f"purpose {purpose!r} is not one of {', '.join(PURPOSES)}")
    return purpose


def unix_seconds(when: datetime) -> int:
    """Whole seconds since the epoch, rounded down, computed without floating point."""
    return (when - _EPOCH) // timedelta(seconds=1)


@dataclass(frozen=True)
class ReleaseFields:
    """What a node asks for; ``key_version`` 0 means the latest enabled version."""

    node_id: str
    key_name: str
    purpose: str
    request_id: bytes
    timestamp: datetime
    key_version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not _NODE_ID.fullmatch(self.node_id):
            raise _invalid("node id must be 1-64 printable ASCII characters (register first)")
        check_key_name(self.key_name)
        check_purpose(self.purpose)
        if not isinstance(self.request_id, bytes) or len(self.request_id) != REQUEST_ID_LEN:
            raise _invalid(f"request id must be exactly {REQUEST_ID_LEN} bytes")
        if not isinstance(self.timestamp, datetime) or self.timestamp.utcoffset() is None:
            raise _invalid("timestamp must be a timezone-aware datetime")
        version = self.key_version
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_KEY_VERSION:
            raise _invalid(f"key version must be an integer in 0..{MAX_KEY_VERSION}")


@dataclass(frozen=True)
class SignedRelease:
    """The exact bytes sent in ``ReleaseRequest``: ``body`` and its ``signature``."""

    fields: ReleaseFields
    body: bytes
    signature: bytes


@dataclass(frozen=True)
class ReleaseGrant:
    """A granted release as the control plane sent it (decoded, not yet trusted)."""

    sealed_key: bytes = field(repr=False)
    key_name: str
    key_version: int
    purpose: str
    audit_sequence: int
    lease_expires_at: datetime
    aad: bytes = field(repr=False)


@dataclass(frozen=True)
class ReleasedKey:
    """An opened data key and what it was released as. ``repr`` never shows the key."""

    key: bytes = field(repr=False)
    key_name: str
    key_version: int
    purpose: str
    audit_sequence: int
    lease_expires_at: datetime

    def __reduce__(self) -> NoReturn:
        raise TypeError("ReleasedKey holds a data key and cannot be pickled or copied")


def encode_body(fields: ReleaseFields) -> bytes:
    """The one canonical encoding of ``fields`` (deterministic protobuf, defaults omitted)."""
    msg = key_release_pb2.ReleaseRequestBody(
        node_id=fields.node_id,
        key_name=fields.key_name,
        purpose=_PURPOSE_WIRE[fields.purpose],
        request_id=fields.request_id,
        key_version=fields.key_version,
    )
    msg.timestamp.FromDatetime(fields.timestamp.astimezone(UTC))
    try:
        return encode_release_body(msg)
    except BodyRejected as exc:
        raise _invalid(exc.message) from None


def sign_release(signer: Signer, fields: ReleaseFields) -> SignedRelease:
    body = encode_body(fields)
    return SignedRelease(fields, body, signer.sign(release_transcript(body)))


def expected_aad(request: ReleaseFields, grant: ReleaseGrant) -> bytes:
    """The release AAD from this node's request plus the reply's version, audit sequence and lease."""
    try:
        return release_aad(
            node_id=request.node_id,
            key_name=request.key_name,
            key_version=grant.key_version,
            purpose=request.purpose,
            request_id=request.request_id,
            audit_sequence=grant.audit_sequence,
            lease_expiry=unix_seconds(grant.lease_expires_at),
        )
    except EnvelopeError as exc:
        raise _bad_reply(f"the reply's fields do not form a release AAD: {exc.message}") from None


def _check_matches(request: ReleaseFields, grant: ReleaseGrant) -> None:
    if grant.key_name != request.key_name:
        raise _bad_reply(f"asked for key {request.key_name!r}, the reply is for {grant.key_name!r}")
    if grant.purpose != request.purpose:
        raise _bad_reply(f"asked for purpose {request.purpose!r}, the reply grants {grant.purpose!r}")
    if not 1 <= grant.key_version <= MAX_KEY_VERSION:
        raise _bad_reply(f"the reply's key version {grant.key_version} is not 1..{MAX_KEY_VERSION}")
    if request.key_version and grant.key_version != request.key_version:
        raise _bad_reply(f"asked for version {request.key_version}, the reply has {grant.key_version}")


def open_grant(private: PrivateKey, request: ReleaseFields, grant: ReleaseGrant) -> ReleasedKey:
    """Check ``grant`` answers ``request``, compare AADs, then open the sealed key with the local AAD."""
    _check_matches(request, grant)
    aad = expected_aad(request, grant)
    if not hmac.compare_digest(aad, grant.aad):
        raise NodeError(
            f"the reply's AAD ({len(grant.aad)} bytes) differs from the one rebuilt from the request "
            f"and reply fields (key {request.key_name!r} v{grant.key_version}, audit sequence "
            f"{grant.audit_sequence}); the sealed key was not opened",
            code=NodeCode.RELEASE_AAD_MISMATCH,
        )
    try:
        key = open_sealed_key(private, grant.sealed_key, aad)
    except EnvelopeError as exc:
        raise NodeError(
            f"sealed key for {request.key_name!r} v{grant.key_version} did not open ({exc.code}): {exc.message}",
            code=NodeCode.SEALED_KEY_INVALID,
        ) from None
    if len(key) != DATA_KEY_LEN:
        raise _bad_reply(f"the released key is {len(key)} bytes, expected {DATA_KEY_LEN}")
    return ReleasedKey(
        key, grant.key_name, grant.key_version, grant.purpose, grant.audit_sequence, grant.lease_expires_at
    )
