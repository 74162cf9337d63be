"""Sealed streams opened and sealed by the resident agent for workloads that never hold the data key.

``open_chunk`` is stateless: every request names the file's header and one chunk index, and goes
through ``ResidentAgent.key`` (purpose read) exactly like a key handout, so a revoked node, a lapsed
lease or a key no longer granted stops the very next chunk of a file the workload opened long before.
Sealing needs state, because a (stream, chunk index) pair must never be sealed twice under the same nonce:
the agent keeps the ``ChunkSealer`` (``seal_begin``), hands out records in order (``seal_chunk``) and
forgets the stream at its last chunk, on ``seal_abort``, when evicted (at most ``MAX_STREAMS``, least
recently used first) and whenever the agent drops its keys (revocation, lapse). Each sealing chunk also
goes through ``ResidentAgent.key`` (purpose write). A stream belongs to the uid that began it.
"""

from __future__ import annotations

import base64
import binascii
import io
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from enclave.resident import Refused, ResidentAgent
from enclave.workload import agent_api
from kms.envelope import StreamError, StreamHeader, read_header
from kms.envelope.errors import EnvelopeError
from kms.envelope.names import parse_key_ref
from kms.envelope.stream import MAX_CHUNKS
from kms.envelope.stream_chunks import RECORD_OVERHEAD, ChunkOpener, ChunkSealer

_MAX_HEADER = 4096  # base64 characters; a v1 header with the longest key_ref is far below


def _invalid(message: str) -> Refused:
    return Refused(agent_api.REQUEST_INVALID, message, "see enclave/workload/agent_api.py")


def _stream_failed(exc: EnvelopeError) -> dict[str, Any]:
    reply = agent_api.refusal(agent_api.STREAM_FAILED, exc.message, exc.hint)
    reply["stream_code"] = exc.code.value
    chunk = getattr(exc, "chunk", None)
    if chunk is not None:
        reply["chunk"] = chunk
    return reply


def _header(request: dict[str, Any]) -> StreamHeader:
    text = request.get("header")
    if not isinstance(text, str) or len(text) > _MAX_HEADER:
        raise _invalid(f"header is the file's stream header in base64 (at most {_MAX_HEADER} characters)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("header is not base64") from None
    header = read_header(io.BytesIO(raw))  # StreamError for a malformed header
    if len(header.raw) != len(raw):
        raise _invalid("header has bytes after the stream header")
    if header.chunk_size > agent_api.MAX_STREAM_CHUNK:
        raise _invalid(f"chunks over {agent_api.MAX_STREAM_CHUNK} bytes are not opened through the agent")
    return header


def _index(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_CHUNKS:
        raise _invalid(f"index is a chunk number 0..{MAX_CHUNKS - 1}")
    return value


@dataclass
class _Sealing:
    sealer: ChunkSealer
    uid: int
    name: str
    version: int
    out: memoryview = field(repr=False)


class StreamService:
    """The ``STREAM_OPS`` of the local API for one ``ResidentAgent``. Each method returns the answer
    and its payload (``b""`` when none), or raises ``Refused``."""

    def __init__(self, agent: ResidentAgent, *, max_streams: int = agent_api.MAX_STREAMS) -> None:
        self.agent = agent
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._sealing: OrderedDict[str, _Sealing] = OrderedDict()
        agent.on_keys_dropped(self.drop_all)

    def __repr__(self) -> str:
        return f"StreamService(sealing={len(self._sealing)})"

    def drop_all(self) -> None:
        with self._lock:
            self._sealing.clear()

    def open_chunk(
        self, request: dict[str, Any], record: bytes | memoryview
    ) -> tuple[dict[str, Any], bytes | memoryview, str]:
        """Returns (answer, plaintext, key_ref) for one chunk of the file whose header is given."""
        index = _index(request.get("index"))
        try:
            header = _header(request)
        except StreamError as exc:
            return _stream_failed(exc), b"", ""
        named = parse_key_ref(header.key_ref)
        if named is None:
            raise Refused(agent_api.KEY_DENIED, "the file's key_ref does not name a key (NAME@vVERSION)")
        released = self.agent.key(named[0], "read", named[1])
        ref = f"{released.key_name}@v{released.key_version}"
        if len(record) > RECORD_OVERHEAD + header.chunk_size:
            raise _invalid(f"a record of this file is at most {RECORD_OVERHEAD + header.chunk_size} bytes")
        out = memoryview(bytearray(header.chunk_size))
        try:
            opened = ChunkOpener(released.key, header).open_record(index, memoryview(record), out)
        except EnvelopeError as exc:
            return _stream_failed(exc), b"", ref
        answer = {"ok": True, "payload": True, "flag": opened.flag, "length": opened.length}
        return answer, out[: opened.length], ref

    def seal_begin(self, request: dict[str, Any], uid: int) -> tuple[dict[str, Any], str]:
        name, chunk_size = request.get("name"), request.get("chunk_size")
        if not isinstance(name, str):
            raise _invalid("name is a key name")
        if (
            not isinstance(chunk_size, int)
            or isinstance(chunk_size, bool)
            or not 0 < chunk_size <= agent_api.MAX_STREAM_CHUNK
        ):
            raise _invalid(f"chunk_size is 1..{agent_api.MAX_STREAM_CHUNK} bytes")
        released = self.agent.key(name, "write", 0)
        ref = f"{released.key_name}@v{released.key_version}"
        try:
            sealer = ChunkSealer(released.key, key_ref=ref, chunk_size=chunk_size)
        except EnvelopeError as exc:
            raise _invalid(exc.message) from None
        stream = secrets.token_hex(16)
        sealing = _Sealing(
            sealer, uid, released.key_name, released.key_version, memoryview(bytearray(chunk_size + 16))
        )
        with self._lock:
            while len(self._sealing) >= self.max_streams:
                self._sealing.popitem(last=False)
            self._sealing[stream] = sealing
        answer = {
            "ok": True,
            "stream": stream,
            "key_ref": ref,
            "header": base64.b64encode(sealer.header).decode(),
        }
        return answer, ref

    def _sealing_of(self, request: dict[str, Any], uid: int) -> tuple[str, _Sealing]:
        stream = request.get("stream")
        with self._lock:
            sealing = self._sealing.get(stream) if isinstance(stream, str) else None
            if sealing is None or sealing.uid != uid:
                raise Refused(
                    agent_api.STREAM_UNKNOWN,
                    "no such sealing stream (it ended, was aborted, or the agent dropped its keys)",
                    "begin the file again (create_sealed)",
                )
            self._sealing.move_to_end(stream)  # type: ignore[arg-type]
            return stream, sealing  # type: ignore[return-value]

    def seal_chunk(
        self, request: dict[str, Any], plain: bytes | memoryview, uid: int
    ) -> tuple[dict[str, Any], bytes, str]:
        last = request.get("last")
        if not isinstance(last, bool):
            raise _invalid("last is true or false")
        self.agent.require_attested()  # a revoked node says so, rather than "no such stream"
        stream, sealing = self._sealing_of(request, uid)
        # Not under our lock: the agent's lock may call drop_all (revocation) meanwhile.
        self.agent.key(sealing.name, "write", sealing.version)
        ref = f"{sealing.name}@v{sealing.version}"
        with self._lock:
            if self._sealing.get(stream) is not sealing:  # dropped while the key was checked
                raise Refused(
                    agent_api.STREAM_UNKNOWN, "the sealing stream was dropped", "begin the file again"
                )
            try:
                record, sealed = sealing.sealer.seal(memoryview(plain), sealing.out, last=last)
            except EnvelopeError as exc:
                raise _invalid(exc.message) from None
            data = bytes(record) + bytes(sealed)
            if last:
                del self._sealing[stream]
        return {"ok": True, "payload": True}, data, ref

    def seal_abort(self, request: dict[str, Any], uid: int) -> dict[str, Any]:
        stream, _ = self._sealing_of(request, uid)
        with self._lock:
            self._sealing.pop(stream, None)
        return {"ok": True}

    @property
    def sealing(self) -> int:
        return len(self._sealing)
