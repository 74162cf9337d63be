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
from enclave.workload.output_report import OutputReport, ReportInvalid
from enclave.workload.reader import SealedReader
from enclave.workload.writer import SealedOutput, SealedWriter
from kms.envelope import DEFAULT_CHUNK_SIZE, names


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
    job: str = "",
    step: int | None = None,
) -> SealedWriter:
    """Create ``path`` sealed under the current version of key ``key`` (purpose write); the file
    appears, complete, on ``close()`` (or at the end of a ``with`` block left normally).

    Under the node agent, ``close()`` then reports the output (its digests, ``job`` and ``step``) so the
    control plane records it for provenance (docs/provenance.md); a refused report raises
    ``WORKLOAD_OUTPUT_NOT_RECORDED`` from ``close()``. The writer's ``output`` holds the digests.
    ``via_agent=True``: the node agent seals every chunk and this process never holds the key."""
    source = keys if keys is not None else default_key_source()
    data_key: DataKey | AgentChunkSealer
    if not via_agent:
        data_key = source.write_key(key)
    elif isinstance(source, AgentSocketKeySource):
        data_key = AgentChunkSealer(source, key, chunk_size)
    else:
        raise WorkloadError(
            f"via_agent needs the node agent as key source, not {type(source).__name__}",
            code=WorkloadCode.WORKLOAD_INPUT_INVALID,
        )
    on_close = None
    if isinstance(source, AgentSocketKeySource):
        _report(data_key.key_ref, job, step)  # refuse bad job/step now, before anything is sealed
        agent = source

        def on_close(output: SealedOutput) -> None:
            agent.report_output(_report(output.key_ref, job, step, output))

    return SealedWriter(path, data_key, chunk_size=chunk_size, on_close=on_close)


def _report(key_ref: str, job: str, step: int | None, output: SealedOutput | None = None) -> OutputReport:
    parsed = names.parse_key_ref(key_ref)
    zero = "0" * 64
    try:
        if parsed is None:
            raise ReportInvalid(f"key_ref {key_ref!r} is not NAME@vVERSION")
        return OutputReport(
            key_name=parsed[0],
            key_version=parsed[1],
            header_sha256=output.header_sha256 if output else zero,
            sha256=output.sha256 if output else zero,
            sealed_sha256=output.sealed_sha256 if output else zero,
            size=output.size if output else 0,
            job=job,
            step=step,
        )
    except ReportInvalid as err:
        raise WorkloadError(str(err), code=WorkloadCode.WORKLOAD_INPUT_INVALID) from None


__all__ = [
    "AGENT_SOCKET_ENV",
    "ERRORS",
    "AgentSocketKeySource",
    "DataKey",
    "KeySource",
    "MemoryKeySource",
    "OutputReport",
    "SealedOutput",
    "SealedReader",
    "SealedWriter",
    "WorkloadCode",
    "WorkloadError",
    "create_sealed",
    "default_key_source",
    "open_sealed",
]
