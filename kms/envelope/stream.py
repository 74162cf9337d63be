"""Sealed stream: chunked AES-256-GCM with constant memory (header layout in ``stream_header``).

Each chunk is one record:

    off  size     field (authenticated: the 17-byte record header is part of the chunk's AAD)
    0    8        stream_id = SHA-256(header)[:8]
    8    4        index (u32, 0, 1, 2, ...)
    12   1        flag: 0x00 more chunks follow, 0x01 last chunk
    13   4        plaintext length (u32): chunk_size unless last; 0 only for the single chunk of empty input
    17   len+16   AES-256-GCM(file_key, nonce, plaintext, aad) ciphertext || 16-byte tag

    nonce = nonce_prefix (7) || index (u32) || flag (1)
    aad   = SHA-256(header) (32) || record header (17)

A record opens only at the position equal to its index; index and flag enter both the nonce and the AAD,
so a label cannot be changed without failing authentication. The clear labels and stream_id let the
decoder name a failure (reordered, foreign, truncated, extended) instead of only "tampered". Plaintext reaches ``dst`` only after its
chunk authenticated. A failed decrypt may leave earlier, verified chunks in ``dst``: write to a temporary
file and rename on success (``kms.envelope.files`` does that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidTag

from kms.envelope.errors import Code, StreamError
from kms.envelope.stream_header import (
    DEFAULT_CHUNK_SIZE,
    NONCE_PREFIX_LEN,
    SALT_LEN,
    Readable,
    StreamHeader,
    StreamKeys,
    build_header,
    check_data_key,
    open_header,
    read_header,
    read_upto,
)

RECORD_HEADER_LEN = 17
GCM_TAG_LEN = 16
FLAG_MORE = 0x00
FLAG_LAST = 0x01
MAX_CHUNKS = 1 << 32


class Writable(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


@dataclass(frozen=True)
class StreamInfo:
    """What was encrypted or decrypted (no secrets)."""

    key_ref: bytes
    chunk_size: int
    chunks: int
    plaintext_bytes: int
    ciphertext_bytes: int
    header_sha256: bytes


class Record(NamedTuple):
    """The clear, authenticated 17-byte header of one chunk record."""

    stream_id: bytes
    counter: int
    flag: int
    length: int

    def encode(self) -> bytes:
        return (
            self.stream_id
            + self.counter.to_bytes(4, "big")
            + bytes((self.flag,))
            + self.length.to_bytes(4, "big")
        )

    def nonce(self, prefix: bytes) -> bytes:
        return prefix + self.counter.to_bytes(4, "big") + bytes((self.flag,))


def _fill(src: Readable, view: memoryview) -> int:
    """Fill ``view`` from ``src``; return the byte count, short only at end of input."""
    readinto = getattr(src, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:]) or 0
        else:
            part = src.read(len(view) - got)
            n = len(part)
            view[got : got + n] = part
        if n == 0:
            break
        got += n
    return got


def encrypt_stream(
    data_key: bytes,
    src: Readable,
    dst: Writable,
    *,
    key_ref: bytes | str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    salt: bytes | None = None,
    nonce_prefix: bytes | None = None,
) -> StreamInfo:
    """Seal everything readable from ``src`` into ``dst``. ``salt``/``nonce_prefix`` only for test vectors."""
    key = check_data_key(data_key)
    header, keys = build_header(
        key,
        key_ref,
        chunk_size,
        os.urandom(SALT_LEN) if salt is None else salt,
        os.urandom(NONCE_PREFIX_LEN) if nonce_prefix is None else nonce_prefix,
    )
    dst.write(header.raw)
    cur, nxt = memoryview(bytearray(chunk_size)), memoryview(bytearray(chunk_size))
    out = memoryview(bytearray(chunk_size + GCM_TAG_LEN))
    filled = _fill(src, cur)
    index, plain_total, cipher_total = 0, 0, len(header.raw)
    while True:
        ahead = _fill(src, nxt) if filled == chunk_size else 0
        flag = FLAG_LAST if ahead == 0 else FLAG_MORE
        if index >= MAX_CHUNKS:
            raise StreamError(f"input needs more than {MAX_CHUNKS} chunks", code=Code.STREAM_TOO_LARGE)
        record = Record(keys.stream_id, index, flag, filled)
        sealed = out[: filled + GCM_TAG_LEN]
        encoded = record.encode()
        keys.aead.encrypt_into(
            record.nonce(keys.nonce_prefix), cur[:filled], keys.header_hash + encoded, sealed
        )
        dst.write(encoded)
        dst.write(sealed)
        plain_total += filled
        cipher_total += RECORD_HEADER_LEN + len(sealed)
        if flag == FLAG_LAST:
            return StreamInfo(
                header.key_ref, chunk_size, index + 1, plain_total, cipher_total, keys.header_hash
            )
        cur, nxt, filled = nxt, cur, ahead
        index += 1


def _try_open(keys: StreamKeys, record: Record, sealed: memoryview, out: memoryview) -> bool:
    """Decrypt ``sealed`` as ``record`` into ``out``; on failure wipe ``out`` (``decrypt_into`` leaves
    unauthenticated bytes there) and return False."""
    try:
        keys.aead.decrypt_into(
            record.nonce(keys.nonce_prefix), sealed, keys.header_hash + record.encode(), out
        )
    except InvalidTag:
        out[:] = bytes(len(out))
        return False
    return True


def _authentic(keys: StreamKeys, record: Record, sealed: memoryview, scratch: memoryview) -> bool:
    """Whether ``sealed`` authenticates as ``record``. Only names a failure: ``scratch`` is wiped."""
    ok = _try_open(keys, record, sealed, scratch)
    scratch[:] = bytes(len(scratch))
    return ok


def _diagnose(
    keys: StreamKeys, position: int, record: Record, sealed: memoryview, scratch: memoryview
) -> StreamError:
    """Name why the chunk at ``position`` failed: reordered, relabelled (truncated/extended) or tampered."""
    if record.counter != position:
        if _authentic(keys, record, sealed, scratch):
            return StreamError(
                f"chunk {record.counter} found at position {position}: chunks are missing, duplicated "
                "or out of order",
                code=Code.STREAM_REORDERED,
                chunk=position,
            )
    elif _authentic(keys, record._replace(flag=record.flag ^ 1), sealed, scratch):
        if record.flag == FLAG_LAST:
            return StreamError(
                f"chunk {position} was relabelled as the last chunk; the stream was cut short",
                code=Code.STREAM_TRUNCATED,
                chunk=position,
            )
        return StreamError(
            f"the last chunk ({position}) was relabelled to hide bytes appended after it",
            code=Code.STREAM_EXTENDED,
            chunk=position,
        )
    return StreamError(
        f"chunk {position} fails authentication", code=Code.STREAM_CHUNK_TAMPERED, chunk=position
    )


def _parse_record(raw: bytes, chunk_size: int, position: int) -> Record:
    record = Record(raw[:8], int.from_bytes(raw[8:12], "big"), raw[12], int.from_bytes(raw[13:17], "big"))
    flag, length = record.flag, record.length
    canonical = (flag == FLAG_MORE and length == chunk_size) or (
        flag == FLAG_LAST and (0 < length <= chunk_size or (length == 0 and record.counter == 0))
    )
    if not canonical:
        raise StreamError(
            f"chunk {position} has an invalid record header (flag {flag}, length {length})",
            code=Code.STREAM_MALFORMED,
            chunk=position,
        )
    return record


def decrypt_stream(
    data_key: bytes, src: Readable, dst: Writable, *, header: StreamHeader | None = None
) -> StreamInfo:
    """Authenticate and decrypt a sealed stream from ``src`` into ``dst``, chunk by chunk.

    Pass ``header`` if it was already read with ``read_header(src)`` (to learn ``key_ref`` first).
    """
    key = check_data_key(data_key)
    if header is None:
        header = read_header(src)
    keys = open_header(key, header)
    size = header.chunk_size
    inbuf = memoryview(bytearray(size + GCM_TAG_LEN))
    outbuf = memoryview(bytearray(size))
    position, plain_total, cipher_total = 0, 0, len(header.raw)
    while True:
        raw = read_upto(src, RECORD_HEADER_LEN)
        if len(raw) < RECORD_HEADER_LEN:
            where = "before" if not raw else "inside the record header of"
            raise StreamError(
                f"stream ends {where} chunk {position}, before the last chunk",
                code=Code.STREAM_TRUNCATED,
                chunk=position,
            )
        record = _parse_record(raw, size, position)
        sealed = inbuf[: record.length + GCM_TAG_LEN]
        if _fill(src, sealed) < len(sealed):
            raise StreamError(
                f"stream ends inside chunk {position}", code=Code.STREAM_TRUNCATED, chunk=position
            )
        if record.stream_id != keys.stream_id:
            raise StreamError(
                f"chunk {position} belongs to another sealed stream",
                code=Code.STREAM_CHUNK_FOREIGN,
                chunk=position,
            )
        plain = outbuf[: record.length]
        # The nonce uses the record's index, so only a record labelled with this position can open here.
        if record.counter != position or not _try_open(keys, record, sealed, plain):
            raise _diagnose(keys, position, record, sealed, plain)
        dst.write(plain)
        plain_total += record.length
        cipher_total += RECORD_HEADER_LEN + len(sealed)
        if record.flag == FLAG_LAST:
            break
        position += 1
        if position >= MAX_CHUNKS:
            raise StreamError(f"stream has more than {MAX_CHUNKS} chunks", code=Code.STREAM_MALFORMED)
    if read_upto(src, 1):
        raise StreamError(
            f"bytes follow the last chunk ({position})", code=Code.STREAM_EXTENDED, chunk=position + 1
        )
    return StreamInfo(header.key_ref, size, position + 1, plain_total, cipher_total, keys.header_hash)
