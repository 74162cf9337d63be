"""The envelope error tree (sealed keys and sealed streams).

Modelled on ``attestation.errors``: every failure carries a stable ``code`` (the same string appears in
deny reasons, audit entries and gRPC ``ErrorInfo.reason``), a message saying what failed and a ``hint``
saying what to do. Messages never contain key material or plaintext; lengths, versions, suite ids and
chunk indexes are fine. This package may not import ``attestation`` (layering), hence its own enum.
"""

from __future__ import annotations

from enum import StrEnum

from attestation.coded import CodedError


class Code(StrEnum):
    """Stable error codes. Never renumber or rename: they are part of the wire and audit contract."""

    # Caller input (bad arguments, not bad data from the wire)
    ENVELOPE_INPUT_INVALID = "ENVELOPE_INPUT_INVALID"
    KEM_KEY_INVALID = "KEM_KEY_INVALID"
    # Sealed key (HPKE)
    SEALED_KEY_MALFORMED = "SEALED_KEY_MALFORMED"
    SEALED_KEY_UNSUPPORTED_VERSION = "SEALED_KEY_UNSUPPORTED_VERSION"
    SEALED_KEY_UNSUPPORTED_SUITE = "SEALED_KEY_UNSUPPORTED_SUITE"
    SEALED_KEY_SUITE_MISMATCH = "SEALED_KEY_SUITE_MISMATCH"
    SEALED_KEY_OPEN_FAILED = "SEALED_KEY_OPEN_FAILED"
    # Sealed stream (chunked AES-256-GCM)
    STREAM_MALFORMED = "STREAM_MALFORMED"
    STREAM_UNSUPPORTED_VERSION = "STREAM_UNSUPPORTED_VERSION"
    STREAM_WRONG_KEY = "STREAM_WRONG_KEY"
    STREAM_HEADER_TAMPERED = "STREAM_HEADER_TAMPERED"
    STREAM_CHUNK_TAMPERED = "STREAM_CHUNK_TAMPERED"
    STREAM_CHUNK_FOREIGN = "STREAM_CHUNK_FOREIGN"
    STREAM_REORDERED = "STREAM_REORDERED"
    STREAM_TRUNCATED = "STREAM_TRUNCATED"
    STREAM_EXTENDED = "STREAM_EXTENDED"
    STREAM_TOO_LARGE = "STREAM_TOO_LARGE"


_DEFAULT_HINTS: dict[Code, str] = {
    Code.ENVELOPE_INPUT_INVALID: "a caller passed an argument outside the documented range; fix the caller",
    Code.KEM_KEY_INVALID: "the HPKE key bytes do not fit the suite; check the node's registered kem_suite",
    Code.SEALED_KEY_MALFORMED: "the sealed key is not in the sovereign sealed-key format; request it again",
    Code.SEALED_KEY_UNSUPPORTED_VERSION: "upgrade the node agent to a release that reads this format version",
    Code.SEALED_KEY_UNSUPPORTED_SUITE: "use a suite from kms.envelope.SUITES (docs/formats.md)",
    Code.SEALED_KEY_SUITE_MISMATCH: "the key was sealed for another KEM suite than this node key; re-register",
    Code.SEALED_KEY_OPEN_FAILED: (
        "wrong node key, or the release context (AAD) differs from the sealing side; re-request the key"
    ),
    Code.STREAM_MALFORMED: "the input is not a sovereign sealed stream (docs/formats.md)",
    Code.STREAM_UNSUPPORTED_VERSION: "upgrade to a release that reads this sealed-stream version",
    Code.STREAM_WRONG_KEY: "the data key does not match this file; check key_ref and key version",
    Code.STREAM_HEADER_TAMPERED: "the file header was modified; restore the file from a trusted copy",
    Code.STREAM_CHUNK_TAMPERED: "a chunk failed authentication; restore the file from a trusted copy",
    Code.STREAM_CHUNK_FOREIGN: "a chunk from another sealed file was spliced in; restore the file",
    Code.STREAM_REORDERED: "chunks are missing, duplicated or out of order; restore the file",
    Code.STREAM_TRUNCATED: "the file ends before its last chunk; the copy is incomplete, fetch it again",
    Code.STREAM_EXTENDED: "bytes follow the last chunk; the file was appended to, restore it",
    Code.STREAM_TOO_LARGE: "split the input or use a larger chunk size (at most 2**32 chunks per file)",
}


class EnvelopeError(CodedError):
    """Base of every envelope failure. Carries a stable code and a hint."""

    default_code: Code = Code.ENVELOPE_INPUT_INVALID

    code: Code

    def __init__(self, message: str, *, code: Code | None = None, hint: str | None = None) -> None:
        code = code if code is not None else self.default_code
        super().__init__(code, message, hint if hint is not None else _DEFAULT_HINTS.get(code, ""))


class InvalidInput(EnvelopeError):
    """A caller-side argument is out of range (key length, field length, chunk size)."""

    default_code = Code.ENVELOPE_INPUT_INVALID


class SealedKeyError(EnvelopeError):
    """A sealed key could not be parsed or opened."""

    default_code = Code.SEALED_KEY_MALFORMED


class StreamError(EnvelopeError):
    """A sealed stream could not be parsed or authenticated. ``chunk`` is the failing chunk index."""

    default_code = Code.STREAM_MALFORMED

    def __init__(
        self, message: str, *, code: Code | None = None, hint: str | None = None, chunk: int | None = None
    ) -> None:
        super().__init__(message, code=code, hint=hint)
        self.chunk = chunk
