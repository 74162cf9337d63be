"""The canonical release AAD (DESIGN.md, Protocol step 4), bound into every sealed key.

    "sovereign/v1 release aad" (24 bytes, no prefix; fixed domain tag)
    u16 len || node_id (UTF-8)
    u16 len || key_name (UTF-8)
    u64 key_version
    u16 len || purpose (UTF-8)
    u16 len || request_id (raw bytes)
    u64 audit_sequence
    u64 lease_expiry (unix seconds, UTC)

All integers are big-endian and unsigned. Every variable field is length-prefixed and the fields come in
a fixed order, so two different tuples never encode to the same bytes.
"""

from __future__ import annotations

from kms.envelope._wire import prefixed
from kms.envelope.errors import InvalidInput

RELEASE_AAD_DOMAIN = b"sovereign/v1 release aad"
MAX_TEXT_FIELD = 1024
_U64_MAX = (1 << 64) - 1


def _fail(message: str) -> InvalidInput:
    return InvalidInput(f"release AAD: {message}")


def _text(name: str, value: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _fail(f"{name} must be a non-empty string")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(f"{name} is not encodable as UTF-8") from None
    return _blob(name, raw)


def _blob(name: str, raw: bytes) -> bytes:
    if not raw or len(raw) > MAX_TEXT_FIELD:
        raise _fail(f"{name} must be 1..{MAX_TEXT_FIELD} bytes, got {len(raw)}")
    return prefixed(raw, 2, _fail)


def _u64(name: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise _fail(f"{name} must be an integer in 0..2**64-1")
    return value.to_bytes(8, "big")


def release_aad(
    *,
    node_id: str,
    key_name: str,
    key_version: int,
    purpose: str,
    request_id: bytes,
    audit_sequence: int,
    lease_expiry: int,
) -> bytes:
    """The AAD a sealed key is bound to; both the control plane and the node compute it independently.

    Keyword-only: seven fields of look-alike types must not be swappable by position.
    """
    if not isinstance(request_id, bytes | bytearray | memoryview):
        raise _fail("request_id must be bytes")
    return b"".join(
        (
            RELEASE_AAD_DOMAIN,
            _text("node_id", node_id),
            _text("key_name", key_name),
            _u64("key_version", key_version),
            _text("purpose", purpose),
            _blob("request_id", bytes(request_id)),
            _u64("audit_sequence", audit_sequence),
            _u64("lease_expiry", lease_expiry),
        )
    )
