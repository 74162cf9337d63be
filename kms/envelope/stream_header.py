"""Sealed-stream header: layout, parsing, per-file key derivation and header authentication.

    off      size  field
    0        4     magic "SOVS"
    4        1     version 0x01
    5        4     chunk_size (u32, plaintext bytes per chunk)
    9        2     key_ref length n (u16, 1..1024)
    11       n     key_ref (opaque; names the data key and its version)
    11+n     32    salt (random per file)
    43+n     7     nonce_prefix (random per file)
    50+n     32    key_check = HKDF-SHA256(data_key, salt="", info="sovereign/v1 stream key check")
    82+n     32    header_tag = HMAC-SHA256(mac_key, bytes 0 .. 82+n)

    file_key || mac_key = HKDF-SHA256(data_key, salt, info="sovereign/v1 stream" || bytes 0 .. 82+n), 64 bytes
    header_hash = SHA-256(whole header); stream_id = header_hash[:8]

``key_check`` does not depend on the header, so a wrong data key is told apart from an edited header;
``header_tag`` (HMAC, keyed from the data key and the header) makes the stream key-committing.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.envelope.errors import Code, InvalidInput, StreamError

MAGIC = b"SOVS"
VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 << 20
MAX_KEY_REF = 1024
SALT_LEN = 32
NONCE_PREFIX_LEN = 7
KEY_CHECK_LEN = 32
TAG_LEN = 32
DATA_KEY_LEN = 32
STREAM_INFO = b"sovereign/v1 stream"
KEY_CHECK_INFO = b"sovereign/v1 stream key check"
_FIXED_PREFIX = 11  # magic, version, chunk_size, key_ref length


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class StreamHeader:
    """A parsed header. Nothing here is secret; ``raw`` is the exact header bytes."""

    version: int
    chunk_size: int
    key_ref: bytes
    salt: bytes
    nonce_prefix: bytes
    key_check: bytes
    tag: bytes
    raw: bytes

    @property
    def core(self) -> bytes:
        """The header bytes covered by ``tag`` (everything before it)."""
        return self.raw[:-TAG_LEN]


@dataclass(frozen=True)
class StreamKeys:
    """Per-file keys and the values every chunk is bound to. Never logged: repr hides the cipher."""

    aead: AESGCM
    header_hash: bytes
    stream_id: bytes
    nonce_prefix: bytes

    def __repr__(self) -> str:
        return f"StreamKeys(stream_id={self.stream_id.hex()!r})"


def check_data_key(data_key: bytes) -> bytes:
    if not isinstance(data_key, bytes | bytearray | memoryview) or len(data_key) != DATA_KEY_LEN:
        raise InvalidInput(f"data key must be {DATA_KEY_LEN} bytes")
    return bytes(data_key)


def key_check_value(data_key: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_CHECK_LEN, salt=None, info=KEY_CHECK_INFO).derive(data_key)


def _derive(data_key: bytes, salt: bytes, core: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(hashes.SHA256(), 64, salt=salt, info=STREAM_INFO + core).derive(data_key)
    return okm[:32], okm[32:]


def _as_key_ref(key_ref: bytes | str) -> bytes:
    raw = key_ref.encode("utf-8") if isinstance(key_ref, str) else bytes(key_ref)
    if not 1 <= len(raw) <= MAX_KEY_REF:
        raise InvalidInput(f"key_ref must be 1..{MAX_KEY_REF} bytes, got {len(raw)}")
    return raw


def build_header(
    data_key: bytes, key_ref: bytes | str, chunk_size: int, salt: bytes, nonce_prefix: bytes
) -> tuple[StreamHeader, StreamKeys]:
    """Make the header for a new stream and its keys (caller supplies fresh random salt and prefix)."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, got {chunk_size}")
    if len(salt) != SALT_LEN or len(nonce_prefix) != NONCE_PREFIX_LEN:
        raise InvalidInput(f"salt must be {SALT_LEN} bytes and nonce_prefix {NONCE_PREFIX_LEN} bytes")
    ref = _as_key_ref(key_ref)
    core = b"".join(
        (
            MAGIC,
            bytes([VERSION]),
            chunk_size.to_bytes(4, "big"),
            len(ref).to_bytes(2, "big"),
            ref,
            bytes(salt),
            bytes(nonce_prefix),
            key_check_value(data_key),
        )
    )
    file_key, mac_key = _derive(data_key, bytes(salt), core)
    tag = hmac.digest(mac_key, core, "sha256")
    header = _parse(core + tag)
    return header, _keys(header, file_key)


def _keys(header: StreamHeader, file_key: bytes) -> StreamKeys:
    header_hash = hashlib.sha256(header.raw).digest()
    return StreamKeys(AESGCM(file_key), header_hash, header_hash[:8], header.nonce_prefix)


def read_upto(src: Readable, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at end of input (short reads from pipes are retried)."""
    parts: list[bytes] = []
    need = n
    while need:
        part = src.read(need)
        if not part:
            break
        parts.append(part)
        need -= len(part)
    return b"".join(parts)


def _read_exact(src: Readable, n: int, what: str) -> bytes:
    data = read_upto(src, n)
    if len(data) != n:
        raise StreamError(
            f"stream ends inside the header ({what}: {len(data)} of {n} bytes)", code=Code.STREAM_TRUNCATED
        )
    return data


def read_header(src: Readable) -> StreamHeader:
    """Read and parse the header from ``src`` (no key needed), leaving ``src`` at the first chunk."""
    first = read_upto(src, len(MAGIC))
    if first != MAGIC:
        raise StreamError("bad magic; this is not a sovereign sealed stream", code=Code.STREAM_MALFORMED)
    fixed = first + _read_exact(src, _FIXED_PREFIX - len(MAGIC), "fixed fields")
    if fixed[4] != VERSION:
        raise StreamError(
            f"sealed stream version {fixed[4]} is not supported (this release reads {VERSION})",
            code=Code.STREAM_UNSUPPORTED_VERSION,
        )
    ref_len = int.from_bytes(fixed[9:11], "big")
    if not 1 <= ref_len <= MAX_KEY_REF:
        raise StreamError(f"key_ref length {ref_len} is outside 1..{MAX_KEY_REF}", code=Code.STREAM_MALFORMED)
    rest = _read_exact(src, ref_len + SALT_LEN + NONCE_PREFIX_LEN + KEY_CHECK_LEN + TAG_LEN, "fields")
    return _parse(fixed + rest)


def _parse(raw: bytes) -> StreamHeader:
    chunk_size = int.from_bytes(raw[5:9], "big")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise StreamError(
            f"chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}",
            code=Code.STREAM_MALFORMED,
        )
    ref_end = _FIXED_PREFIX + int.from_bytes(raw[9:11], "big")
    salt_end = ref_end + SALT_LEN
    prefix_end = salt_end + NONCE_PREFIX_LEN
    check_end = prefix_end + KEY_CHECK_LEN
    return StreamHeader(
        version=raw[4],
        chunk_size=chunk_size,
        key_ref=raw[_FIXED_PREFIX:ref_end],
        salt=raw[ref_end:salt_end],
        nonce_prefix=raw[salt_end:prefix_end],
        key_check=raw[prefix_end:check_end],
        tag=raw[check_end:],
        raw=raw,
    )


def open_header(data_key: bytes, header: StreamHeader) -> StreamKeys:
    """Check the key and the header's authenticity; return the per-file keys."""
    if not hmac.compare_digest(key_check_value(data_key), header.key_check):
        raise StreamError(
            f"the data key does not match this stream (key_ref {header.key_ref!r})",
            code=Code.STREAM_WRONG_KEY,
        )
    file_key, mac_key = _derive(data_key, header.salt, header.core)
    if not hmac.compare_digest(hmac.digest(mac_key, header.core, "sha256"), header.tag):
        raise StreamError("the stream header fails authentication", code=Code.STREAM_HEADER_TAMPERED)
    return _keys(header, file_key)
