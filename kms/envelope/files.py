"""File helpers around the sealed stream: the one module of ``kms.envelope`` that touches the filesystem.

Output goes to a temporary file in the destination directory (mode 0600), is fsynced, then atomically
renamed over ``out_path``; the directory is fsynced too. On any failure the temporary file is removed,
so ``out_path`` never holds partial or unauthenticated output; an existing ``out_path`` that is not a
regular file is refused (``InvalidInput``). ``OSError`` from the filesystem propagates.
Both files are opened unbuffered, so ``kms.envelope.stream`` takes its fast paths (an ``mmap``
window over the plaintext when encrypting, ``preadv`` into a private buffer when decrypting, ``writev``
of each record).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kms.envelope.errors import InvalidInput
from kms.envelope.stream import StreamInfo, decrypt_stream, encrypt_stream
from kms.envelope.stream_header import DEFAULT_CHUNK_SIZE


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _require_replaceable(target: Path) -> None:
    """The rename would replace whatever ``target`` names: only ever a regular file (or a symlink,
    which is replaced itself, never written through). A device, FIFO, socket or directory is refused
    (``-o /dev/null`` run as root would otherwise delete the device node)."""
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise InvalidInput(
            f"{target} exists and is not a regular file: it will not be replaced",
            hint="write to a new path or to a regular file",
        )


def _atomic(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    work: Callable[[BinaryIO, BinaryIO], StreamInfo],
) -> StreamInfo:
    target = Path(out_path)
    _require_replaceable(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with open(in_path, "rb", buffering=0) as src, os.fdopen(fd, "wb", buffering=0) as dst:
            info = work(src, dst)
            os.fsync(dst.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return info


def encrypt_file(
    data_key: bytes,
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    key_ref: bytes | str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> StreamInfo:
    """Seal ``in_path`` into ``out_path`` (atomically replaced)."""
    return _atomic(
        in_path,
        out_path,
        lambda src, dst: encrypt_stream(data_key, src, dst, key_ref=key_ref, chunk_size=chunk_size),
    )


def decrypt_file(
    data_key: bytes, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> StreamInfo:
    """Open the sealed stream ``in_path`` into ``out_path``; ``out_path`` appears only if all of it verified."""
    return _atomic(in_path, out_path, lambda src, dst: decrypt_stream(data_key, src, dst))
