"""Read and write sealed data from training code: ``open_sealed`` and ``create_sealed``.

Depends only on the standard library, ``cryptography`` and ``kms.envelope`` (no gRPC, no control plane),
so any training script can import it. Guide: docs/workload.md; byte layout: docs/formats.md section 4.

    from enclave.workload import open_sealed, create_sealed

    with open_sealed("shard-000.tar.sealed") as f:       # io.BufferedIOBase: read, seek, tell
        for member in tarfile.open(fileobj=f, mode="r|"):
            ...
    with create_sealed("ckpt.safetensors.sealed", key="model/main") as out:
        out.write(safetensors.numpy.save(tensors))
"""

from __future__ import annotations

import os

from enclave.workload.agent_stream import AgentChunkSealer
from enclave.workload.errors import ERRORS, WorkloadCode, WorkloadError
from enclave.workload.keys import (
    AGENT_SOCKET_ENV,
    AgentSocketKeySource,
    DataKey,
    KeySource,
    MemoryKeySource,
    default_key_source,
)
from enclave.workload.reader import SealedReader
from enclave.workload.writer import SealedWriter
from kms.envelope import DEFAULT_CHUNK_SIZE


def open_sealed(
    path: str | os.PathLike[str], *, keys: KeySource | None = None, via_agent: bool = False
) -> SealedReader:
    """Open a sealed file for reading: header and last chunk are authenticated now, every other chunk
    when a read first touches it. Key: the one the header names, from ``keys`` (default: the agent).
    ``via_agent=True``: the node agent opens every chunk and this process never holds the key (so a
    revocation stops the next chunk read); ``keys`` must then be the agent (the default)."""
    return SealedReader(path, keys if keys is not None else default_key_source(), via_agent=via_agent)


def create_sealed(
    path: str | os.PathLike[str],
    *,
    key: str,
    keys: KeySource | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    via_agent: bool = False,
) -> SealedWriter:
    """Create ``path`` sealed under the current version of key ``key`` (purpose write); the file
    appears, complete, on ``close()`` (or at the end of a ``with`` block left normally).
    ``via_agent=True``: the node agent seals every chunk and this process never holds the key."""
    source = keys if keys is not None else default_key_source()
    if not via_agent:
        return SealedWriter(path, source.write_key(key), chunk_size=chunk_size)
    if not isinstance(source, AgentSocketKeySource):
        raise WorkloadError(
            f"via_agent needs the node agent as key source, not {type(source).__name__}",
            code=WorkloadCode.WORKLOAD_INPUT_INVALID,
        )
    return SealedWriter(path, AgentChunkSealer(source, key, chunk_size), chunk_size=chunk_size)


__all__ = [
    "AGENT_SOCKET_ENV",
    "ERRORS",
    "AgentSocketKeySource",
    "DataKey",
    "KeySource",
    "MemoryKeySource",
    "SealedReader",
    "SealedWriter",
    "WorkloadCode",
    "WorkloadError",
    "create_sealed",
    "default_key_source",
    "open_sealed",
]
