"""Chunk-level access to a sealed stream (docs/formats.md 4.6): random-access reads and incremental writes.

The version-1 layout already allows it: every record but the last is exactly ``33 + chunk_size`` bytes,
so record ``i`` starts at ``header_len + i * (33 + chunk_size)``; its index and last-chunk flag enter both
the nonce and the AAD, so a record authenticates only at its own position and only with its own flag.
The last record is found from the file size and authenticated first: that fixes the plaintext length
and catches a file cut at a chunk boundary (its last record then says "more follow").

Pure like the rest of ``kms.envelope``: callers do the I/O and hand in the record bytes, which must sit
in memory only this process writes (AES-GCM reads its input twice; see 4.5).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from kms.envelope.errors import Code, InvalidInput, StreamError
from kms.envelope.stream import (
    FLAG_LAST,
    FLAG_MORE,
    GCM_TAG_LEN,
    MAX_CHUNKS,
    RECORD_HEADER_LEN,
    Record,
    _diagnose,
    _Frame,
    _parse_record,
)
from kms.envelope.stream_header import (
    DEFAULT_CHUNK_SIZE,
    NONCE_PREFIX_LEN,
    SALT_LEN,
    StreamHeader,
    build_header,
    check_data_key,
    open_header,
)

RECORD_OVERHEAD = RECORD_HEADER_LEN + GCM_TAG_LEN
# read_at(offset, n) -> up to n bytes at offset (fewer only at end of file), in private memory
ReadAt = Callable[[int, int], memoryview]


def _truncated(message: str, chunk: int) -> StreamError:
    return StreamError(message, code=Code.STREAM_TRUNCATED, chunk=chunk)


@dataclass(frozen=True)
class Layout:
    """Where each record of a stream sits (no secrets)."""

    header_len: int
    chunk_size: int

    @property
    def record_size(self) -> int:
        """Bytes of every record but the last."""
        return RECORD_OVERHEAD + self.chunk_size

    def offset(self, index: int) -> int:
        return self.header_len + index * self.record_size


@dataclass(frozen=True)
class End:
    """The authenticated end of a stream: its last chunk and the plaintext length."""

    last_index: int
    last_length: int
    plaintext_bytes: int


class ChunkOpener:
    """Authenticates and decrypts single records of one stream, at any position.

    The data key is checked (``STREAM_WRONG_KEY``) and the header authenticated
    (``STREAM_HEADER_TAMPERED``) on construction; only the per-file cipher is kept, never the data key.
    """

    def __init__(self, data_key: bytes, header: StreamHeader) -> None:
        keys = open_header(check_data_key(data_key), header)
        self.layout = Layout(len(header.raw), header.chunk_size)
        self._stream_id = keys.stream_id
        self._frame = _Frame(keys)

    def __repr__(self) -> str:
        return f"ChunkOpener(stream_id={self._stream_id.hex()!r}, chunk_size={self.layout.chunk_size})"

    def open(self, position: int, raw: memoryview, out: memoryview, *, last: bool) -> Record:
        """Decrypt the record in ``raw`` (the bytes from its start; more may follow) as chunk ``position``
        into ``out[:length]``. ``last`` says whether the stream's end (``find_end``) is this chunk.

        ``out`` holds plaintext only once the chunk authenticated; on failure it is wiped."""
        record = self.open_record(position, raw, out)
        if last and record.flag == FLAG_MORE:
            raise _truncated(
                f"chunk {position} says more chunks follow, but the file ends there", position + 1
            )
        if not last and record.flag == FLAG_LAST:
            out[: record.length] = bytes(record.length)
            raise StreamError(
                f"chunk {position} is the last chunk, but more chunks follow it",
                code=Code.STREAM_EXTENDED,
                chunk=position + 1,
            )
        return record

    def find_end(self, file_size: int, read_at: ReadAt, out: memoryview) -> End:
        """Locate, authenticate and decrypt (into ``out``) the last chunk of a stream ``file_size`` bytes
        long; the same codes as a sequential decode for a file cut short or appended to."""
        layout = self.layout
        body = file_size - layout.header_len
        if body <= 0:
            raise _truncated("stream ends before chunk 0", 0)
        index = (body - 1) // layout.record_size
        if index > 0 and body - index * layout.record_size < RECORD_OVERHEAD:
            index -= 1  # a tail too short to be a record: the record before it says cut or appended
        try:
            record = self.open_record(index, read_at(layout.offset(index), layout.record_size), out)
        except StreamError:
            if index > 0 and self._is_last(index - 1, read_at, out):
                raise StreamError(
                    f"bytes follow the last chunk ({index - 1})", code=Code.STREAM_EXTENDED, chunk=index
                ) from None
            raise
        if record.flag == FLAG_MORE:
            out[: record.length] = bytes(record.length)
            raise _truncated(f"stream ends after chunk {index}, before the last chunk", index + 1)
        end = layout.offset(index) + RECORD_OVERHEAD + record.length
        if end != file_size:
            out[: record.length] = bytes(record.length)
            raise StreamError(
                f"{file_size - end} bytes follow the last chunk ({index})",
                code=Code.STREAM_EXTENDED,
                chunk=index + 1,
            )
        return End(index, record.length, index * layout.chunk_size + record.length)

    def _is_last(self, index: int, read_at: ReadAt, out: memoryview) -> bool:
        try:
            record = self.open_record(index, read_at(self.layout.offset(index), self.layout.record_size), out)
        except StreamError:
            return False
        out[: record.length] = bytes(record.length)
        return record.flag == FLAG_LAST

    def open_record(self, position: int, raw: memoryview, out: memoryview) -> Record:
        """Authenticate and decrypt the record in ``raw`` as chunk ``position`` into ``out`` whatever its
        last-chunk flag (``open`` and ``find_end`` check the flag). The one step a subclass may route
        elsewhere: the node agent's socket opens chunks for workloads that never hold the key."""
        if len(raw) < RECORD_HEADER_LEN:
            where = "before" if not raw else "inside the record header of"
            raise _truncated(f"stream ends {where} chunk {position}", position)
        record = _parse_record(bytes(raw[:RECORD_HEADER_LEN]), self.layout.chunk_size, position)
        end = RECORD_HEADER_LEN + record.length + GCM_TAG_LEN
        if len(raw) < end:
            raise _truncated(f"stream ends inside chunk {position}", position)
        if record.stream_id != self._stream_id:
            raise StreamError(
                f"chunk {position} belongs to another sealed stream",
                code=Code.STREAM_CHUNK_FOREIGN,
                chunk=position,
            )
        sealed, plain = raw[RECORD_HEADER_LEN:end], out[: record.length]
        # The nonce uses the record's index, so only a record labelled with this position can open here.
        if record.counter != position or not self._frame.open(record, sealed, plain):
            raise _diagnose(self._frame, position, record, sealed, plain)
        return record


class ChunkSealer:
    """Seals a stream one chunk at a time (a writer that does not know its length up front).

    Same bytes as ``encrypt_stream`` for the same input, key, salt and prefix. Every chunk but the last
    must be exactly ``chunk_size`` bytes; the last is 1..chunk_size bytes (0 only if it is the only one).
    """

    def __init__(
        self,
        data_key: bytes,
        *,
        key_ref: bytes | str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> None:
        header, keys = build_header(
            check_data_key(data_key),
            key_ref,
            chunk_size,
            os.urandom(SALT_LEN) if salt is None else salt,
            os.urandom(NONCE_PREFIX_LEN) if nonce_prefix is None else nonce_prefix,
        )
        self.header = header.raw
        self.chunk_size = chunk_size
        self.chunks = 0
        self.finished = False
        self._aead = keys.aead
        self._frame = _Frame(keys)

    def __repr__(self) -> str:
        return f"ChunkSealer(chunk_size={self.chunk_size}, chunks={self.chunks}, finished={self.finished})"

    def seal(self, plain: memoryview, out: memoryview, *, last: bool) -> tuple[memoryview, memoryview]:
        """The record header and sealed bytes (a slice of ``out``, at least ``len(plain) + 16`` long) of
        the next chunk; both views are valid until the next call."""
        if self.finished:
            raise InvalidInput("the stream already has its last chunk")
        size = len(plain)
        if not (size == self.chunk_size or (last and (0 < size <= self.chunk_size or self.chunks == 0))):
            raise InvalidInput(f"chunk {self.chunks} has {size} bytes; chunk_size is {self.chunk_size}")
        if self.chunks >= MAX_CHUNKS:
            raise StreamError(f"input needs more than {MAX_CHUNKS} chunks", code=Code.STREAM_TOO_LARGE)
        sealed = out[: size + GCM_TAG_LEN]
        self._frame.set(self.chunks, FLAG_LAST if last else FLAG_MORE, size)
        self._aead.encrypt_into(self._frame.nonce, plain, self._frame.aad, sealed)
        self.chunks += 1
        self.finished = last
        return self._frame.record, sealed
