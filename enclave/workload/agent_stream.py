"""Sealed files read and written through the node agent: the workload never holds the data key.

``open_sealed(path, via_agent=True)`` and ``create_sealed(path, key=..., via_agent=True)`` use these in
place of the in-process chunk opener and sealer. The workload reads the file's records itself and sends
each one to the agent, which authenticates and decrypts it (``open_chunk``) and answers with the
plaintext; when writing, the agent seals each chunk (``seal_chunk``) and the workload writes the record.
Each chunk is one request on the agent's socket (``enclave.workload.agent_api``), so the agent checks the
node's state for every chunk: a revoked node, a lapsed lease or a key no longer granted ends the reading
of a file that is already open, at the next chunk, with the agent's code. The price is one local
round trip and a copy per chunk (bench/bench_agent.py measures it).
"""

from __future__ import annotations

import base64
import binascii
import contextlib

from enclave.workload import agent_api
from enclave.workload.errors import WorkloadCode, WorkloadError
from enclave.workload.keys import AgentSocketKeySource
from kms.envelope import Code, StreamError, StreamHeader
from kms.envelope.stream import FLAG_LAST, FLAG_MORE, RECORD_HEADER_LEN, Record
from kms.envelope.stream_chunks import ChunkOpener, Layout


def _broken(message: str) -> WorkloadError:
    return WorkloadError(f"the node agent's answer {message}", code=WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE)


def _stream_error(reply: dict[str, object]) -> StreamError | None:
    """The agent's ``STREAM_FAILED`` answer as the ``StreamError`` opening the chunk here would raise."""
    try:
        code = Code(str(reply.get("stream_code")))
    except ValueError:
        return None
    chunk = reply.get("chunk")
    return StreamError(
        str(reply.get("message", ""))[:500],
        code=code,
        chunk=chunk if isinstance(chunk, int) and not isinstance(chunk, bool) else None,
    )


class AgentChunkOpener(ChunkOpener):
    """A ``ChunkOpener`` whose records the agent opens. Holds no key: ``find_end`` and ``open`` (the
    last-chunk checks) run here unchanged, only ``open_record`` is a request to the agent."""

    def __init__(self, source: AgentSocketKeySource, header: StreamHeader) -> None:  # no super(): no key
        if header.chunk_size > agent_api.MAX_STREAM_CHUNK:
            raise WorkloadError(
                f"chunks of {header.chunk_size} bytes are over the agent's "
                f"{agent_api.MAX_STREAM_CHUNK}-byte limit",
                code=WorkloadCode.WORKLOAD_INPUT_INVALID,
                hint="open this file in-process (via_agent=False), or re-seal it with smaller chunks",
            )
        self.layout = Layout(len(header.raw), header.chunk_size)
        self._source = source
        self._header = base64.b64encode(header.raw).decode()

    def __repr__(self) -> str:
        return f"AgentChunkOpener(agent={self._source.path!r}, chunk_size={self.layout.chunk_size})"

    def open_record(self, position: int, raw: memoryview, out: memoryview) -> Record:
        request = {"op": "open_chunk", "header": self._header, "index": position}
        try:
            reply, plain = self._source.call_stream(request, raw, into=out)
        except WorkloadError as err:
            if getattr(err, "reason", "") == agent_api.STREAM_FAILED:
                failure = _stream_error(getattr(err, "reply", {}))
                if failure is not None:
                    raise failure from None
            raise
        flag, length = reply.get("flag"), reply.get("length")
        if flag not in (FLAG_LAST, FLAG_MORE) or length != len(plain) or len(plain) > len(out):
            raise _broken("to open_chunk is not a chunk")
        if plain.obj is not out.obj:  # received elsewhere (no room in out): copy it in
            out[: len(plain)] = plain
        return Record(b"", position, int(flag), len(plain))


class AgentChunkSealer:
    """What ``SealedWriter`` needs of a ``ChunkSealer`` (``header``, ``seal``, ``abort``), sealed by
    the agent under the current version of key ``name`` (purpose write)."""

    def __init__(self, source: AgentSocketKeySource, name: str, chunk_size: int) -> None:
        if not 0 < chunk_size <= agent_api.MAX_STREAM_CHUNK:
            raise WorkloadError(
                f"chunk_size is 1..{agent_api.MAX_STREAM_CHUNK} bytes through the agent",
                code=WorkloadCode.WORKLOAD_INPUT_INVALID,
            )
        self._source = source
        self.chunk_size = chunk_size
        reply, _ = source.call_stream({"op": "seal_begin", "name": name, "chunk_size": chunk_size}, None)
        try:
            self.stream = str(reply["stream"])
            self.key_ref = str(reply["key_ref"])
            self.header = base64.b64decode(str(reply["header"]), validate=True)
        except (KeyError, binascii.Error, ValueError):
            raise _broken("to seal_begin is not a stream") from None

    def __repr__(self) -> str:
        return f"AgentChunkSealer(agent={self._source.path!r}, key_ref={self.key_ref!r})"

    def seal(self, plain: memoryview, out: memoryview, *, last: bool) -> tuple[memoryview, memoryview]:
        _, data = self._source.call_stream({"op": "seal_chunk", "stream": self.stream, "last": last}, plain)
        if len(data) != RECORD_HEADER_LEN + len(plain) + 16 or len(out) < len(data) - RECORD_HEADER_LEN:
            raise _broken("to seal_chunk is not a record")
        record = memoryview(data)
        sealed = out[: len(data) - RECORD_HEADER_LEN]
        sealed[:] = record[RECORD_HEADER_LEN:]
        return record[:RECORD_HEADER_LEN], sealed

    def abort(self) -> None:
        """Tell the agent to forget the stream (best effort: it also forgets unfinished ones itself)."""
        with contextlib.suppress(WorkloadError):
            self._source.call_stream({"op": "seal_abort", "stream": self.stream}, None)
