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

I/O (docs/formats.md 4.5): encrypt reads plaintext in place (slices of in-memory sources, a sliding
read-only ``mmap`` window over regular files); decrypt reads ciphertext into private memory first
(``preadv`` for files), because AES-GCM reads its input twice and a writer racing a shared mapping could
otherwise get unauthenticated plaintext out; file outputs get ``os.writev`` on their descriptor.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias

from cryptography.exceptions import InvalidTag

from kms.envelope.errors import Code, InvalidInput, StreamError
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
)

RECORD_HEADER_LEN = 17
GCM_TAG_LEN = 16
FLAG_MORE = 0x00
FLAG_LAST = 0x01
MAX_CHUNKS = 1 << 32
MAP_WINDOW = 4 << 20  # plaintext mapped at once when encrypting a regular file (at least one chunk)
_NONCE_TAIL = struct.Struct(">IB")  # counter, flag after the nonce prefix
_LABELS = struct.Struct(">IBI")  # counter, flag, length: record header bytes 8..17

Source: TypeAlias = Readable | bytes | bytearray | memoryview
_Chunks: TypeAlias = Generator[tuple[memoryview, bool], None, None]


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


class _Frame:
    """Reused nonce and AAD buffers for one stream; the record header is the AAD's last 17 bytes."""

    def __init__(self, keys: StreamKeys) -> None:
        self.nonce = bytearray(keys.nonce_prefix + bytes(_NONCE_TAIL.size))
        self.aad = bytearray(keys.header_hash + keys.stream_id + bytes(_LABELS.size))
        self.record = memoryview(self.aad)[len(keys.header_hash) :]
        self._labels_at = len(self.aad) - _LABELS.size
        self._aead = keys.aead

    def set(self, counter: int, flag: int, length: int) -> None:
        _NONCE_TAIL.pack_into(self.nonce, NONCE_PREFIX_LEN, counter, flag)
        _LABELS.pack_into(self.aad, self._labels_at, counter, flag, length)

    def open(self, record: Record, sealed: memoryview, out: memoryview) -> bool:
        """Decrypt ``sealed`` as ``record`` into ``out``; on failure wipe ``out`` (``decrypt_into`` leaves
        unauthenticated bytes there) and return False."""
        self.set(record.counter, record.flag, record.length)
        try:
            self._aead.decrypt_into(self.nonce, sealed, self.aad, out)
        except InvalidTag:
            out[:] = bytes(len(out))
            return False
        return True


# --- where bytes come from and go to ------------------------------------------------------------------


def _file_fd(obj: object) -> int | None:
    """The descriptor of a plain binary file (``FileIO`` or a buffered reader/writer over one), else None.

    Only these types: wrappers such as ``GzipFile`` expose the descriptor of the file *under* them."""
    buffered = io.BufferedReader | io.BufferedWriter | io.BufferedRandom
    raw = obj.raw if isinstance(obj, buffered) else obj
    if not isinstance(raw, io.FileIO) or raw.closed:
        return None
    return raw.fileno()


def _regular_fd(obj: object) -> int | None:
    fd = _file_fd(obj)
    return fd if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode) else None


def _in_memory(src: object) -> tuple[memoryview, Callable[[int], object] | None] | None:
    """A byte view of an in-memory source from its current position, and what to call with the bytes
    consumed when done (``BytesIO`` is left after them, as if read)."""
    if isinstance(src, io.BytesIO):
        start = src.tell()
        # CPython returns the BytesIO's own bytes here without copying, where getbuffer() would copy a
        # BytesIO made from bytes; and bytes cannot change while they are read.
        view = memoryview(src.getvalue())[start:]
        return view, lambda used: src.seek(start + used)
    if isinstance(src, bytes | bytearray | memoryview):
        view = memoryview(src)
        if not view.c_contiguous:
            raise InvalidInput("a memoryview source must be contiguous")
        return view.cast("B"), None
    return None


def _private(src: object) -> bool:
    """Whether ``src``'s memory belongs to this process (not a mapping another process may write)."""
    if isinstance(src, memoryview):
        return isinstance(src.obj, bytes | bytearray)
    return isinstance(src, io.BytesIO | bytes | bytearray)


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


class _Input:
    """Ciphertext for decrypting: ``take(n, scratch)`` returns up to ``n`` bytes (fewer only at the end)
    held in memory only this process writes, valid until the next call; ``read`` serves ``read_header``."""

    def take(self, n: int, scratch: memoryview) -> memoryview:
        raise NotImplementedError

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            raise io.UnsupportedOperation("read() needs a size")
        return bytes(self.take(size, memoryview(bytearray(size))))

    def close(self) -> None:
        """Leave the source after the bytes consumed, where the source has a position."""


class _MemoryInput(_Input):
    def __init__(self, view: memoryview, done: Callable[[int], object] | None, private: bool) -> None:
        self._view, self._done, self._private, self._pos = view, done, private, 0
        self._given = memoryview(b"")

    def take(self, n: int, scratch: memoryview) -> memoryview:
        # Slices handed out are released here and on close, so none outlives the call (one kept alive
        # by a traceback would leave the caller's bytearray unresizable).
        self._given.release()
        part = self._view[self._pos : self._pos + n]
        self._pos += len(part)
        if self._private:
            self._given = part
            return part
        copy = scratch[: len(part)]
        copy[:] = part
        part.release()
        return copy

    def close(self) -> None:
        if self._done is not None:
            self._done(self._pos)
        self._given.release()
        self._view.release()


class _FileInput(_Input):
    """A regular file read at explicit offsets with ``preadv`` (no Python-side buffer in between)."""

    def __init__(self, src: io.IOBase, fd: int) -> None:
        self._src, self._fd, self._pos = src, fd, src.tell()

    def take(self, n: int, scratch: memoryview) -> memoryview:
        view, got = scratch[:n], 0
        while got < n:
            k = os.preadv(self._fd, [view[got:]], self._pos + got)
            if k == 0:
                break
            got += k
        self._pos += got
        return view[:got]

    def close(self) -> None:
        self._src.seek(self._pos)


class _StreamInput(_Input):
    def __init__(self, src: Readable) -> None:
        self._src = src

    def take(self, n: int, scratch: memoryview) -> memoryview:
        view = scratch[:n]
        return view[: _fill(self._src, view)]


def _ciphertext_input(src: Source) -> _Input:
    memory = _in_memory(src)
    if memory is not None:
        return _MemoryInput(*memory, private=_private(src))
    fd = _regular_fd(src)
    if fd is not None and isinstance(src, io.IOBase):
        return _FileInput(src, fd)
    return _StreamInput(src)  # type: ignore[arg-type]  # not bytes-like, so Readable


def _view_chunks(view: memoryview, size: int) -> _Chunks:
    for start in range(0, max(len(view), 1), size):
        yield view[start : start + size], start + size >= len(view)


def _mapped_chunks(fd: int, start: int, end: int, size: int) -> _Chunks:
    """Chunks of ``fd[start:end]`` as slices of a read-only mapping that slides forward (at most
    ``MAP_WINDOW`` or one chunk mapped at a time). A slice must be released before the next is taken."""
    if start >= end:
        yield memoryview(b""), True
        return
    grain = mmap.ALLOCATIONGRANULARITY
    span = max(MAP_WINDOW, size + grain)
    pos = start
    while pos < end:
        base = pos - pos % grain
        length = min(span, end - base)
        with mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=base) as window:
            view = memoryview(window)
            try:
                while pos < end and pos + min(size, end - pos) <= base + length:
                    n = min(size, end - pos)
                    yield view[pos - base : pos - base + n], pos + n == end
                    pos += n
            finally:
                view.release()


def _stream_chunks(src: Readable, size: int) -> _Chunks:
    """Chunks read into two alternating buffers (one read ahead, to know which chunk is last)."""
    cur, nxt = memoryview(bytearray(size)), memoryview(bytearray(size))
    filled = _fill(src, cur)
    while True:
        ahead = _fill(src, nxt) if filled == size else 0
        yield cur[:filled], ahead == 0
        if ahead == 0:
            return
        cur, nxt, filled = nxt, cur, ahead


def _plaintext_chunks(src: Source, size: int) -> _Chunks:
    """``(chunk, is_last)`` for every chunk of ``src``; at least one (empty) chunk for empty input."""
    memory = _in_memory(src)
    if memory is not None:
        view, done = memory
        with view:
            yield from _view_chunks(view, size)
            if done is not None:
                done(len(view))
        return
    fd = _regular_fd(src)
    if fd is not None and isinstance(src, io.IOBase):
        start, end = src.tell(), os.fstat(fd).st_size
        yield from _mapped_chunks(fd, start, end, size)
        src.seek(max(start, end))
        return
    yield from _stream_chunks(src, size)  # type: ignore[arg-type]  # not bytes-like, so Readable


class _Sink:
    """Writes whole buffers: ``os.writev`` on a plain file's descriptor, else ``dst.write`` until done."""

    def __init__(self, dst: Writable) -> None:
        self._dst, self._fd = dst, _file_fd(dst)
        if self._fd is not None and isinstance(dst, io.BufferedIOBase):
            dst.flush()  # bytes it already holds go first

    def write(self, *parts: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            for part in parts:
                _write_all(self._dst, part)
            return
        views = [memoryview(p) for p in parts if len(p)]
        while views:
            n = os.writev(self._fd, views)
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if views:
                views[0] = views[0][n:]


def _write_all(dst: Writable, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = dst.write(view)
        # A raw stream may write less than asked; other sinks return None or the full length.
        if not isinstance(n, int) or not 0 < n < len(view):
            return
        view = view[n:]


# --- the format ------------------------------------------------------------------------------------------


def encrypt_stream(
    data_key: bytes,
    src: Source,
    dst: Writable,
    *,
    key_ref: bytes | str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    salt: bytes | None = None,
    nonce_prefix: bytes | None = None,
) -> StreamInfo:
    """Seal everything readable from ``src`` (a binary file object or bytes-like) into ``dst``.

    ``salt``/``nonce_prefix`` only for test vectors."""
    key = check_data_key(data_key)
    header, keys = build_header(
        key,
        key_ref,
        chunk_size,
        os.urandom(SALT_LEN) if salt is None else salt,
        os.urandom(NONCE_PREFIX_LEN) if nonce_prefix is None else nonce_prefix,
    )
    sink = _Sink(dst)
    sink.write(header.raw)
    frame = _Frame(keys)
    out = memoryview(bytearray(chunk_size + GCM_TAG_LEN))
    chunks, plain_total, cipher_total = 0, 0, len(header.raw)
    with contextlib.closing(_plaintext_chunks(src, chunk_size)) as source:
        for plain, last in source:
            with plain:  # released before the source moves on (a mapping cannot close while viewed)
                if chunks >= MAX_CHUNKS:
                    raise StreamError(
                        f"input needs more than {MAX_CHUNKS} chunks", code=Code.STREAM_TOO_LARGE
                    )
                sealed = out[: len(plain) + GCM_TAG_LEN]
                frame.set(chunks, FLAG_LAST if last else FLAG_MORE, len(plain))
                keys.aead.encrypt_into(frame.nonce, plain, frame.aad, sealed)
                sink.write(frame.record, sealed)
                plain_total += len(plain)
            cipher_total += RECORD_HEADER_LEN + len(sealed)
            chunks += 1
    return StreamInfo(header.key_ref, chunk_size, chunks, plain_total, cipher_total, keys.header_hash)


def _authentic(frame: _Frame, record: Record, sealed: memoryview, scratch: memoryview) -> bool:
    """Whether ``sealed`` authenticates as ``record``. Only names a failure: ``scratch`` is wiped."""
    ok = frame.open(record, sealed, scratch)
    scratch[:] = bytes(len(scratch))
    return ok


def _diagnose(
    frame: _Frame, position: int, record: Record, sealed: memoryview, scratch: memoryview
) -> StreamError:
    """Name why the chunk at ``position`` failed: reordered, relabelled (truncated/extended) or tampered."""
    if record.counter != position:
        if _authentic(frame, record, sealed, scratch):
            return StreamError(
                f"chunk {record.counter} found at position {position}: chunks are missing, duplicated "
                "or out of order",
                code=Code.STREAM_REORDERED,
                chunk=position,
            )
    elif _authentic(frame, record._replace(flag=record.flag ^ 1), sealed, scratch):
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
    data_key: bytes, src: Source, dst: Writable, *, header: StreamHeader | None = None
) -> StreamInfo:
    """Authenticate and decrypt a sealed stream from ``src`` into ``dst``, chunk by chunk.

    Pass ``header`` if it was already read with ``read_header(src)`` (to learn ``key_ref`` first).
    """
    key = check_data_key(data_key)
    source = _ciphertext_input(src)
    try:
        if header is None:
            header = read_header(source)
        return _open_records(open_header(key, header), header, source, _Sink(dst))
    finally:
        source.close()


def _open_records(keys: StreamKeys, header: StreamHeader, src: _Input, sink: _Sink) -> StreamInfo:
    size = header.chunk_size
    frame = _Frame(keys)
    scratch = memoryview(bytearray(size + GCM_TAG_LEN))
    outbuf = memoryview(bytearray(size))
    position, plain_total, cipher_total = 0, 0, len(header.raw)
    while True:
        raw = src.take(RECORD_HEADER_LEN, scratch)
        if len(raw) < RECORD_HEADER_LEN:
            where = "before" if not raw else "inside the record header of"
            raise StreamError(
                f"stream ends {where} chunk {position}, before the last chunk",
                code=Code.STREAM_TRUNCATED,
                chunk=position,
            )
        record = _parse_record(bytes(raw), size, position)
        sealed = src.take(record.length + GCM_TAG_LEN, scratch)
        if len(sealed) < record.length + GCM_TAG_LEN:
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
        if record.counter != position or not frame.open(record, sealed, plain):
            raise _diagnose(frame, position, record, sealed, plain)
        sink.write(plain)
        plain_total += record.length
        cipher_total += RECORD_HEADER_LEN + len(sealed)
        if record.flag == FLAG_LAST:
            break
        position += 1
        if position >= MAX_CHUNKS:
            raise StreamError(f"stream has more than {MAX_CHUNKS} chunks", code=Code.STREAM_MALFORMED)
    if src.take(1, scratch):
        raise StreamError(
            f"bytes follow the last chunk ({position})", code=Code.STREAM_EXTENDED, chunk=position + 1
        )
    return StreamInfo(header.key_ref, size, position + 1, plain_total, cipher_total, keys.header_hash)
