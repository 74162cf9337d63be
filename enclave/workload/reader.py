"""``SealedReader``: a sealed stream as a standard, seekable binary file object.

Opening reads and authenticates the header and the last chunk (which fixes the plaintext length and
catches a file cut at a chunk boundary). After that only the chunks a read touches are read (``pread``
into private memory, so a concurrent writer cannot change ciphertext between the tag check and the
decryption) and authenticated; one decrypted chunk is kept for the next small read. A read that lands on
a bad chunk raises ``kms.envelope.StreamError`` with its code and ``chunk``; nothing of that chunk is
returned. ``fileno()`` is unsupported on purpose: the descriptor holds ciphertext, and a library that
found one would read it raw. With ``via_agent`` the node agent opens each chunk (the key never enters this
process; ``enclave.workload.agent_stream``).
"""

from __future__ import annotations

import io
import os
import stat
import threading
from typing import TYPE_CHECKING, NoReturn

from enclave.workload.agent_stream import AgentChunkOpener
from enclave.workload.errors import WorkloadCode, WorkloadError
from enclave.workload.keys import AgentSocketKeySource, KeySource
from kms.envelope.stream_chunks import ChunkOpener
from kms.envelope.stream_header import StreamHeader, read_header

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_NONE = -1  # no chunk cached


def pread_into(fd: int, view: memoryview, offset: int) -> memoryview:
    """Fill ``view`` from ``fd`` at ``offset``; the filled part (shorter only at end of file)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return view[:got]


def _opener(keys: KeySource, header: StreamHeader, via_agent: bool) -> ChunkOpener:
    if not via_agent:
        return ChunkOpener(keys.read_key(header.key_ref), header)
    if not isinstance(keys, AgentSocketKeySource):
        raise WorkloadError(
            f"via_agent needs the node agent as key source, not {type(keys).__name__}",
            code=WorkloadCode.WORKLOAD_INPUT_INVALID,
        )
    return AgentChunkOpener(keys, header)  # the agent opens each chunk; no key here


class _HeaderInput:
    """``read`` over a descriptor from offset 0 by ``pread`` (the descriptor's own offset is never used)."""

    def __init__(self, fd: int) -> None:
        self._fd, self._pos = fd, 0

    def read(self, size: int = -1, /) -> bytes:
        data = os.pread(self._fd, max(size, 0), self._pos)
        self._pos += len(data)
        return data


class SealedReader(io.BufferedIOBase):
    """Read-only, seekable plaintext view of a sealed file. Thread-safe; fork-safe (reads use explicit
    offsets, so a forked child may keep reading the object it inherited)."""

    def __init__(self, path: str | os.PathLike[str], keys: KeySource, *, via_agent: bool = False) -> None:
        super().__init__()
        self.name = os.fspath(path)
        self.mode = "rb"
        self._lock = threading.Lock()
        # O_NONBLOCK: opening a FIFO for reading must not hang the job before the check below refuses it.
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            info = os.fstat(self._fd)
            if not stat.S_ISREG(info.st_mode):
                raise WorkloadError(
                    f"{self.name} is not a regular file (random access needs one)",
                    code=WorkloadCode.WORKLOAD_NOT_A_FILE,
                )
            os.set_blocking(self._fd, True)
            header = read_header(_HeaderInput(self._fd))
            self._opener = _opener(keys, header, via_agent)
            self.key_ref = header.key_ref.decode("ascii", "replace")
            layout = self._opener.layout
            self._chunk_size = layout.chunk_size
            self._scratch = memoryview(bytearray(layout.record_size))
            self._plain = memoryview(bytearray(layout.chunk_size))
            end = self._opener.find_end(info.st_size, self._read_at, self._plain)
        except BaseException:
            os.close(self._fd)
            super().close()  # so that __del__ has nothing left to close
            raise
        self._last = end.last_index
        self._size = end.plaintext_bytes
        self._cached = end.last_index  # find_end left the last chunk's plaintext in self._plain
        self._pos = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._size} bytes"
        return f"SealedReader(name={self.name!r}, {state})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a SealedReader cannot be pickled: open the file in each worker (docs/workload.md)")

    # -- what io expects of a binary file ----------------------------------------------------------------

    def readable(self) -> bool:
        self._check_open()
        return True

    def seekable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return False

    @property
    def size(self) -> int:
        """Plaintext length in bytes (authenticated: it comes from the last chunk)."""
        return self._size

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        with self._lock:
            if self.closed:
                raise ValueError("I/O operation on closed file")
            if whence == io.SEEK_SET:
                target = offset.__index__()
            elif whence == io.SEEK_CUR:
                target = self._pos + offset.__index__()
            elif whence == io.SEEK_END:
                target = self._size + offset.__index__()
            else:
                raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
            if target < 0:
                raise ValueError(f"negative seek position {target}")
            self._pos = target
            return target

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        with memoryview(buffer) as raw, raw.cast("B") as view, self._lock:
            self._check_open()
            return self._readinto(view)

    readinto1 = readinto

    def read(self, size: int | None = -1, /) -> bytes:
        with self._lock:
            if self.closed:
                raise ValueError("I/O operation on closed file")
            pos = self._pos
            left = max(self._size - pos, 0)
            want = left if size is None or size < 0 else min(size, left)
            index, skip = divmod(pos, self._chunk_size)
            if index == self._cached and skip + want <= self._chunk_size:
                # The common small read (tarfile asks for 10 KiB): one copy out of the decrypted chunk.
                self._pos = pos + want
                return bytes(self._plain[skip : skip + want])
            out = bytearray(want)
            with memoryview(out) as view:
                got = self._readinto(view)
        del out[got:]
        return bytes(out)

    read1 = read

    def readall(self) -> bytes:
        return self.read()

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a sealed file has no plaintext descriptor")

    def detach(self) -> NoReturn:
        raise io.UnsupportedOperation("a sealed file has no raw stream")

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self._plain[:] = bytes(len(self._plain))
            self._cached = _NONE
            os.close(self._fd)
            super().close()

    # -- chunks -----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _read_at(self, offset: int, n: int) -> memoryview:
        return pread_into(self._fd, self._scratch[:n], offset)

    def _chunk_length(self, index: int) -> int:
        return self._size - index * self._chunk_size if index == self._last else self._chunk_size

    def _open_chunk(self, index: int, out: memoryview) -> None:
        layout = self._opener.layout
        raw = self._read_at(layout.offset(index), layout.record_size)
        self._opener.open(index, raw, out, last=index == self._last)

    def _readinto(self, view: memoryview) -> int:
        done, size, chunk = 0, self._size, self._chunk_size
        while done < len(view) and self._pos < size:
            index, skip = divmod(self._pos, chunk)
            length = self._chunk_length(index)
            room = len(view) - done
            if skip == 0 and room >= length and index != self._cached:
                # A whole chunk the caller has room for: decrypt straight into its buffer (wiped on failure).
                self._open_chunk(index, view[done : done + length])
                take = length
            else:
                if index != self._cached:
                    self._cached = _NONE
                    self._open_chunk(index, self._plain)
                    self._cached = index
                take = min(length - skip, room)
                view[done : done + take] = self._plain[skip : skip + take]
            done += take
            self._pos += take
        return done
