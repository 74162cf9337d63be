"""The wire contract the node (``enclave``) and the control plane (``kms``) both import: one definition each.

- the release-request transcript (proto/README.md, "Release-request signing transcript"): the body is the
  deterministic encoding of ``ReleaseRequestBody`` (at most ``MAX_BODY`` bytes) and the node signs
  ``SIGNING_DOMAIN || body``; the server accepts only the one canonical encoding of the parsed fields;
- the TLS-key proof: the node's attested Ed25519 key signs ``TLS_KEY_PROOF_LABEL || nonce || spki``;
- the error detail: the ``grpc-status-details-bin`` trailer holds an ``ErrorStatus`` with exactly one
  ``Any`` packing an ``ErrorDetail`` whose ``reason`` is the stable code;
- the GPU binding (ARCHITECTURE.md, "GPU evidence in registration"): the nonce every GPU answers is
  ``gpu_nonce(...)`` of the registration transcript, and the CPU report data commits to
  ``gpu_commitment(...)`` of the GPU evidence list (empty list: no commitment, the report data of a node
  without GPUs is unchanged).

The key-name rule lives in ``kms.envelope.names`` (stdlib only; both ``policies`` and ``kms.envelope``
import it, and keys already exist under it). Here: protobuf only, no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

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
GPU_NONCE_DOMAIN = b"sovereign/v1 gpu nonce"
GPU_EVIDENCE_DOMAIN = b"sovereign/v1 gpu evidence"
MAX_GPUS = 16
MAX_GPU_REPORT = 16 << 10
MAX_GPU_CERTS = 8
MAX_GPU_CERT = 8 << 10
MAX_GPU_ARCHITECTURE = 32


class BodyRejected(ValueError):
    """A release body that is not a transcript; ``code`` is ``REQUEST_INVALID`` or ``REQUEST_NOT_CANONICAL``
    (the control plane's codes, which each side maps to its own coded error)."""

    def __init__(self, message: str, code: str = "REQUEST_INVALID") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


_Body = TypeVar("_Body", key_release_pb2.ReleaseRequestBody, key_release_pb2.OutputRecordBody)


def _encode(body: _Body, what: str) -> bytes:
    data = body.SerializeToString(deterministic=True)
    if len(data) > MAX_BODY:
        raise BodyRejected(f"{what} body of {len(data)} bytes exceeds {MAX_BODY}")
    return data


def _decode(data: bytes, parsed: _Body) -> _Body:
    """Parse a signed body into ``parsed`` and require that it is the canonical encoding of its own fields."""
    if not data or len(data) > MAX_BODY:
        raise BodyRejected(f"body must be 1-{MAX_BODY} bytes")
    try:
        parsed.ParseFromString(data)
    except DecodeError:
        raise BodyRejected(f"body is not a {type(parsed).__name__}") from None
    parsed.DiscardUnknownFields()
    if parsed.SerializeToString(deterministic=True) != data:
        raise BodyRejected(
            "body is not the canonical encoding of its fields (unknown, repeated, reordered or default "
            "fields, or over-long varints)",
            "REQUEST_NOT_CANONICAL",
        )
    return parsed


def encode_release_body(body: key_release_pb2.ReleaseRequestBody) -> bytes:
    """The one canonical encoding of ``body`` (deterministic protobuf, defaults omitted), at most MAX_BODY."""
    return _encode(body, "release request")


def decode_release_body(data: bytes) -> key_release_pb2.ReleaseRequestBody:
    """Parse a signed release body; it must be the canonical encoding of its own fields."""
    return _decode(data, key_release_pb2.ReleaseRequestBody())


def encode_output_body(body: key_release_pb2.OutputRecordBody) -> bytes:
    """The one canonical encoding of an output record body, at most MAX_BODY."""
    return _encode(body, "output record")


def decode_output_body(data: bytes) -> key_release_pb2.OutputRecordBody:
    """Parse a signed output record body; it must be the canonical encoding of its own fields."""
    return _decode(data, key_release_pb2.OutputRecordBody())


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


# --- GPU evidence in registration --------------------------------------------------------------------


class GpuEvidenceRejected(ValueError):
    """A GPU evidence list outside the wire limits (the control plane answers REQUEST_INVALID)."""


@dataclass(frozen=True)
class GpuEvidenceItem:
    """One GPU's evidence as it travels in ``RegisterRequest.gpu_evidence``: the SPDM request || response,
    the device chain (DER, leaf first) and the architecture the node declares (diagnostics; the leaf decides)."""

    report: bytes = field(repr=False)
    certificates: tuple[bytes, ...] = field(repr=False)
    architecture: str = ""


def _prefixed(value: bytes, size: int) -> bytes:
    return len(value).to_bytes(size, "big") + value


def gpu_nonce(nonce: bytes, kem_suite: bytes, kem_public: bytes, signing_public: bytes) -> bytes:
    """The 32-byte nonce every GPU of a registering node must answer: SHA-256 over the domain and the
    registration transcript (the Challenge nonce and the node's keys, each with a 2-byte length)."""
    fields = (nonce, kem_suite, kem_public, signing_public)
    if not all(isinstance(f, bytes) and 1 <= len(f) <= 0xFFFF for f in fields):
        raise GpuEvidenceRejected(
            "the GPU nonce needs the Challenge nonce and the node's keys (1-65535 bytes each)"
        )
    return hashlib.sha256(GPU_NONCE_DOMAIN + b"".join(_prefixed(f, 2) for f in fields)).digest()


def check_gpu_evidence(items: Sequence[GpuEvidenceItem]) -> tuple[GpuEvidenceItem, ...]:
    """The list within the wire limits, or ``GpuEvidenceRejected``."""
    if len(items) > MAX_GPUS:
        raise GpuEvidenceRejected(f"at most {MAX_GPUS} GPUs")
    for i, item in enumerate(items):
        if not 1 <= len(item.report) <= MAX_GPU_REPORT:
            raise GpuEvidenceRejected(f"GPU {i}: the report must be 1 byte to {MAX_GPU_REPORT} bytes")
        if not 1 <= len(item.certificates) <= MAX_GPU_CERTS:
            raise GpuEvidenceRejected(f"GPU {i}: 1 to {MAX_GPU_CERTS} certificates")
        if any(not 1 <= len(c) <= MAX_GPU_CERT for c in item.certificates):
            raise GpuEvidenceRejected(
                f"GPU {i}: each certificate must be 1 byte to {MAX_GPU_CERT} bytes of DER"
            )
        if len(item.architecture.encode()) > MAX_GPU_ARCHITECTURE or not item.architecture.isascii():
            raise GpuEvidenceRejected(
                f"GPU {i}: the architecture is at most {MAX_GPU_ARCHITECTURE} ASCII characters"
            )
    return tuple(items)


def gpu_commitment(items: Sequence[GpuEvidenceItem]) -> bytes:
    """What the CPU report data commits to: empty for no GPUs (the report data stays as before GPUs existed),
    else SHA-256 of the canonical encoding of the list, in the order sent:

    ``"sovereign/v1 gpu evidence" || u16 count || per GPU: u32 len || report || u8 count ||
    (u32 len || certificate)* || u8 len || architecture`` (big-endian lengths)."""
    check_gpu_evidence(items)
    if not items:
        return b""
    parts = [GPU_EVIDENCE_DOMAIN, len(items).to_bytes(2, "big")]
    for item in items:
        parts.append(_prefixed(item.report, 4))
        parts.append(len(item.certificates).to_bytes(1, "big"))
        parts.extend(_prefixed(c, 4) for c in item.certificates)
        parts.append(_prefixed(item.architecture.encode("ascii"), 1))
    return hashlib.sha256(b"".join(parts)).digest()
