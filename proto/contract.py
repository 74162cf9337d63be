"""The wire contract the node (``enclave``) and the control plane (``kms``) both import: one definition each.

- the release-request transcript (proto/README.md, "Release-request signing transcript"): the body is the
  deterministic encoding of ``ReleaseRequestBody`` (at most ``MAX_BODY`` bytes) and the node signs
  ``SIGNING_DOMAIN || body``; the server accepts only the one canonical encoding of the parsed fields;
- the TLS-key proof: the node's attested Ed25519 key signs ``TLS_KEY_PROOF_LABEL || nonce || spki``;
- the error detail: the ``grpc-status-details-bin`` trailer holds an ``ErrorStatus`` with exactly one
  ``Any`` packing an ``ErrorDetail`` whose ``reason`` is the stable code.

The key-name rule lives in ``kms.envelope.names`` (stdlib only; both ``policies`` and ``kms.envelope``
import it, and keys already exist under it). Here: protobuf only, no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from proto.sovereign.v1 import common_pb2, key_release_pb2

SIGNING_DOMAIN = b"sovereign/v1 release"
# The output record (RecordOutput) signs the same way under its own domain, so a signature made for one
# request kind can never be replayed as the other.
OUTPUT_SIGNING_DOMAIN = b"sovereign/v1 output"
MAX_BODY = 1024
TLS_KEY_PROOF_LABEL = b"sovereign/v1 client tls key\x00"
TRAILER = "grpc-status-details-bin"
ERROR_DETAIL_TYPE = "type.googleapis.com/sovereign.v1.ErrorDetail"
MAX_TEXT = 1024
MAX_METADATA = 16
_REASON_CODE = re.compile(r"[A-Z0-9_]{1,64}")


class BodyRejected(ValueError):
    """A release body that is not a transcript; ``code`` is ``REQUEST_INVALID`` or ``REQUEST_NOT_CANONICAL``
    (the control plane's codes, which each side maps to its own coded error)."""

    def __init__(self, message: str, code: str = "REQUEST_INVALID") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def encode_release_body(body: key_release_pb2.ReleaseRequestBody) -> bytes:
    """The one canonical encoding of ``body`` (deterministic protobuf, defaults omitted), at most MAX_BODY."""
    data = body.SerializeToString(deterministic=True)
    if len(data) > MAX_BODY:
        raise BodyRejected(f"release request body of {len(data)} bytes exceeds {MAX_BODY}")
    return data


def decode_release_body(data: bytes) -> key_release_pb2.ReleaseRequestBody:
    """Parse a signed body and require that it is the canonical encoding of its own fields."""
    if not data or len(data) > MAX_BODY:
        raise BodyRejected(f"body must be 1-{MAX_BODY} bytes")
    parsed = key_release_pb2.ReleaseRequestBody()
    try:
        parsed.ParseFromString(data)
    except DecodeError:
        raise BodyRejected("body is not a ReleaseRequestBody") from None
    parsed.DiscardUnknownFields()
    if parsed.SerializeToString(deterministic=True) != data:
        raise BodyRejected(
            "body is not the canonical encoding of its fields (unknown, repeated, reordered or default "
            "fields, or over-long varints)",
            "REQUEST_NOT_CANONICAL",
        )
    return parsed


def encode_output_body(body: key_release_pb2.OutputRecordBody) -> bytes:
    """The one canonical encoding of an output record body, at most MAX_BODY."""
    data = body.SerializeToString(deterministic=True)
    if len(data) > MAX_BODY:
        raise BodyRejected(f"output record body of {len(data)} bytes exceeds {MAX_BODY}")
    return data


def decode_output_body(data: bytes) -> key_release_pb2.OutputRecordBody:
    """Parse a signed output record body; it must be the canonical encoding of its own fields."""
    if not data or len(data) > MAX_BODY:
        raise BodyRejected(f"body must be 1-{MAX_BODY} bytes")
    parsed = key_release_pb2.OutputRecordBody()
    try:
        parsed.ParseFromString(data)
    except DecodeError:
        raise BodyRejected("body is not an OutputRecordBody") from None
    parsed.DiscardUnknownFields()
    if parsed.SerializeToString(deterministic=True) != data:
        raise BodyRejected(
            "body is not the canonical encoding of its fields (unknown, repeated, reordered or default "
            "fields, or over-long varints)",
            "REQUEST_NOT_CANONICAL",
        )
    return parsed


def output_transcript(body: bytes) -> bytes:
    """The signed bytes of an output record: the 19-byte domain string, then the body as sent."""
    return OUTPUT_SIGNING_DOMAIN + body


def release_transcript(body: bytes) -> bytes:
    """The signed bytes: the 20-byte domain string, no separator, then the body exactly as sent."""
    return SIGNING_DOMAIN + body


def tls_key_proof_message(nonce: bytes, spki: bytes) -> bytes:
    """What the node's Ed25519 key signs to vouch for its TLS key (attestation.proto ClientTlsKey)."""
    return TLS_KEY_PROOF_LABEL + nonce + spki


@dataclass(frozen=True)
class ErrorDetail:
    """The decoded trailer: ``reason`` is the stable code; texts are cut to ``MAX_TEXT``."""

    reason: str
    domain: str
    hint: str
    metadata: dict[str, str] = field(default_factory=dict)


def pack_error_status(
    status: int,
    reason: str,
    *,
    domain: str,
    message: str,
    hint: str = "",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The trailer value: an ``ErrorStatus`` (gRPC status number, message) with one packed ``ErrorDetail``."""
    detail = common_pb2.ErrorDetail(reason=reason, domain=domain, hint=hint[:MAX_TEXT])
    for key, value in (metadata or {}).items():
        detail.metadata[key] = value
    packed = any_pb2.Any()
    packed.Pack(detail)
    return common_pb2.ErrorStatus(code=status, message=message, details=[packed]).SerializeToString()


def _text(value: str) -> str:
    return value[:MAX_TEXT]


def parse_error_detail(trailing: object) -> ErrorDetail | None:
    """The ``ErrorDetail`` of a call's trailing metadata (any iterable of ``(key, value)`` pairs, as the
    sync and async gRPC APIs give it); None if absent or malformed (not exactly one detail of the
    ErrorDetail type, undecodable, or a reason that is not a code)."""
    if not isinstance(trailing, Iterable):
        return None
    for item in trailing:
        if not isinstance(item, tuple) or len(item) != 2:
            continue
        key, value = item
        if key != TRAILER or not isinstance(value, bytes):
            continue
        try:
            status = common_pb2.ErrorStatus.FromString(value)
            if len(status.details) != 1 or status.details[0].type_url != ERROR_DETAIL_TYPE:
                return None
            detail = common_pb2.ErrorDetail()
            status.details[0].Unpack(detail)
        except DecodeError:
            return None
        if not _REASON_CODE.fullmatch(detail.reason):
            return None
        metadata = {_text(k)[:64]: _text(v) for k, v in list(detail.metadata.items())[:MAX_METADATA]}
        return ErrorDetail(detail.reason, _text(detail.domain), _text(detail.hint), metadata)
    return None
