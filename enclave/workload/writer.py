"""``SealedWriter``: a write-only binary file object that seals what is written (checkpoints, outputs).

Plaintext is held in memory, at most one chunk of it, and reaches the disk only sealed: a chunk is
sealed and written once the next byte arrives (a chunk is "last" only when the file is closed). Output
goes to a temporary file (mode 0600) next to ``path``; ``close()`` seals the last chunk, fsyncs and
renames it over ``path``. Leaving a ``with`` block by an exception, ``abort()``, or dropping the object
unclosed removes the temporary file instead: a crash never leaves a shorter file that would open as
valid. Not seekable; ``tell()`` counts plaintext bytes written. Given an ``AgentChunkSealer`` instead of
a key, the node agent seals each chunk (the key never enters this process).

While sealing, the writer hashes what it seals: after ``close()``, ``output`` holds the SHA-256 of the
plaintext, its size, the SHA-256 of the sealed header and of the whole sealed file (what a provenance
statement names). ``on_close`` (the node agent's report of the output, ``create_sealed`` wires it) runs
with that ``SealedOutput`` once the file is in place; if it raises, ``close()`` raises it (the file stays).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

from enclave.workload.agent_stream import AgentChunkSealer
from enclave.workload.errors import WorkloadCode, WorkloadError
from enclave.workload.keys import DataKey
from kms.envelope.stream_chunks import ChunkSealer

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


def _write_all(fd: int, parts: list[memoryview]) -> None:
    while parts:
        n = os.writev(fd, parts)
        while parts and n >= len(parts[0]):
            n -= len(parts.pop(0))
        if parts:
            parts[0] = parts[0][n:]


def _check_target(target: Path) -> None:
    """The rename replaces whatever ``target`` names: only ever a regular file or a symlink itself."""
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise WorkloadError(
            f"{target} exists and is not a regular file: it will not be replaced",
            code=WorkloadCode.WORKLOAD_NOT_A_FILE,
        )


@dataclass(frozen=True)
class SealedOutput:
    """What a closed writer sealed: digests are lowercase hex SHA-256 (no key material)."""

    path: str
    key_ref: str
    header_sha256: str
    sha256: str  # of the plaintext
    size: int  # plaintext bytes
    sealed_sha256: str  # of the sealed file as written


class SealedWriter(io.BufferedIOBase):
    """Seals everything written to it into ``path`` under ``data_key``; see the module doc."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        data_key: DataKey | AgentChunkSealer,
        *,
        chunk_size: int,
        on_close: Callable[[SealedOutput], None] | None = None,
    ) -> None:
        super().__init__()
        self.output: SealedOutput | None = None
        self._on_close = on_close
        self._plain_hash = hashlib.sha256()
        self._sealed_hash = hashlib.sha256()
        self._header_sha256 = ""
        self.name = os.fspath(path)
        self.mode = "wb"
        self.key_ref = data_key.key_ref
        self._agent_sealer = data_key if isinstance(data_key, AgentChunkSealer) else None
        self._target = Path(path)
        self._lock = threading.Lock()
        self._fd, self._tmp = -1, ""
        self._buffer = memoryview(bytearray(0))
        self._filled = 0
        self._written = 0
        try:
            self._sealer: ChunkSealer | AgentChunkSealer = (
                data_key
                if isinstance(data_key, AgentChunkSealer)
                else ChunkSealer(data_key.key, key_ref=data_key.key_ref, chunk_size=chunk_size)
            )
            self._buffer = memoryview(bytearray(chunk_size))
            self._out = memoryview(bytearray(chunk_size + 16))
            _check_target(self._target)
            self._fd, self._tmp = tempfile.mkstemp(
                prefix=f".{self._target.name}.", suffix=".partial", dir=self._target.parent
            )
            self._header_sha256 = hashlib.sha256(self._sealer.header).hexdigest()
            self._sealed_hash.update(self._sealer.header)
            _write_all(self._fd, [memoryview(self._sealer.header)])
        except BaseException:
            self._discard()
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._written} bytes written"
        return f"SealedWriter(name={self.name!r}, key_ref={self.key_ref!r}, {state})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a SealedWriter cannot be pickled")

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # IOBase.__del__ would close(), which commits: an object dropped unclosed is aborted instead.
        if not getattr(self, "closed", True):
            self.abort()

    # -- what io expects of a binary file ----------------------------------------------------------------

    def readable(self) -> bool:
        self._check_open()
        return False

    def seekable(self) -> bool:
        self._check_open()
        return False

    def writable(self) -> bool:
        self._check_open()
        return True

    def tell(self) -> int:
        self._check_open()
        return self._written

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a sealed file has no plaintext descriptor")

    def detach(self) -> NoReturn:
        raise io.UnsupportedOperation("a sealed file has no raw stream")

    def flush(self) -> None:
        """Nothing to do: whole chunks are written as soon as they are known not to be the last."""
        self._check_open()

    def write(self, data: ReadableBuffer, /) -> int:
        with memoryview(data) as raw, raw.cast("B") as view, self._lock:
            self._check_open()
            size = len(view)
            chunk = len(self._buffer)
            pos = 0
            while pos < size:
                if self._filled == chunk:
                    self._emit(self._buffer, last=False)
                    self._filled = 0
                if self._filled == 0 and size - pos > chunk:
                    self._emit(view[pos : pos + chunk], last=False)  # known not last: seal in place
                    pos += chunk
                    continue
                take = min(chunk - self._filled, size - pos)
                self._buffer[self._filled : self._filled + take] = view[pos : pos + take]
                self._filled += take
                pos += take
            self._plain_hash.update(view)
            self._written += size
            return size

    def close(self) -> None:
        """Seal the last chunk, fsync, and rename the file into place. Idempotent."""
        with self._lock:
            if self.closed:
                return
            try:
                self._emit(self._buffer[: self._filled], last=True)
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
                os.replace(self._tmp, self._target)
                directory = os.open(self._target.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
            except BaseException:
                self._discard()
                raise
            self._wipe()
            super().close()
            self.output = SealedOutput(
                self.name,
                self.key_ref,
                self._header_sha256,
                self._plain_hash.hexdigest(),
                self._written,
                self._sealed_hash.hexdigest(),
            )
        if self._on_close is not None:
            self._on_close(self.output)

    def abort(self) -> None:
        """Drop what was written: remove the temporary file; ``path`` is left as it was. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self._discard()

    # -- internals --------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _emit(self, plain: memoryview, *, last: bool) -> None:
        record, sealed = self._sealer.seal(plain, self._out, last=last)
        self._sealed_hash.update(record)
        self._sealed_hash.update(sealed)
        _write_all(self._fd, [record, sealed])

    def _wipe(self) -> None:
        self._buffer[:] = bytes(len(self._buffer))
        self._filled = 0

    def _discard(self) -> None:
        if self._agent_sealer is not None:
            self._agent_sealer.abort()
            self._agent_sealer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
        self._wipe()
        super().close()
