"""The node agent's local API: one JSON object per frame over a Unix stream socket.

Both sides import this module: the resident agent (``enclave.local_server``) and the workload library's
``AgentSocketKeySource``. Standard library only (training code imports it; no gRPC).

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON (an object; at most
``MAX_FRAME`` bytes). One request, one response, per connection. Requests carry ``"v": 1`` and ``op``:

- ``{"op": "key", "name": NAME, "purpose": "read"|"write", "version": N}`` (``version`` 0: the latest
  the node may have) -> ``{"ok": true, "key_ref": "NAME@vN", "key": BASE64}``
- ``{"op": "check", "names": [NAME...], "purpose": "read"|"write"}`` -> ``{"ok": true, "keys":
  ["NAME@vN"...]}``: the keys are obtainable now (no key material in the answer)
- ``{"op": "status"}`` -> ``{"ok": true, "state": ..., "node_id": ..., "lease_expires_at": ...,
  "registrations": N, "renewals": N, "handouts": N, "refusals": N, "keys_held": N}``

A refusal is ``{"ok": false, "code": CODE, "message": ..., "hint": ...}``; the codes are listed below.

Sealed streams through the agent (``STREAM_OPS``; the workload never holds the data key). A request or
answer that carries bytes is followed on the same connection by one payload frame: a 4-byte big-endian
length, then that many raw bytes (at most ``MAX_PAYLOAD``). Chunks are at most ``MAX_STREAM_CHUNK``.

- ``{"op": "open_chunk", "header": BASE64, "index": N}`` + payload (chunk N's record as read from the
  file) -> ``{"ok": true, "payload": true, "flag": 0|1, "length": N}`` + payload (the chunk's
  plaintext). Stateless: each request checks the node's state and the key (purpose read) like a key
  handout.
- ``{"op": "seal_begin", "name": NAME, "chunk_size": N}`` -> ``{"ok": true, "stream": ID, "key_ref":
  ..., "header": BASE64}``: the agent holds the sealer (chunk counter and nonces never repeat).
- ``{"op": "seal_chunk", "stream": ID, "last": BOOL}`` + payload (plaintext) -> ``{"ok": true,
  "payload": true}`` + payload (the record: 17-byte record header, then ciphertext and tag). The last
  chunk ends the stream.
- ``{"op": "seal_abort", "stream": ID}`` -> ``{"ok": true}``.

A chunk the agent cannot open answers ``STREAM_FAILED`` with ``stream_code`` (a ``kms.envelope`` code)
and ``chunk``, so the workload raises the same ``StreamError`` as when it opens chunks itself.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

VERSION = 1
MAX_FRAME = 64 * 1024
OPS = frozenset({"key", "check", "status"})
STREAM_OPS = frozenset({"open_chunk", "seal_begin", "seal_chunk", "seal_abort"})
MAX_STREAM_CHUNK = 4 << 20
MAX_PAYLOAD = MAX_STREAM_CHUNK + 64  # a record: 17-byte header, the chunk, a 16-byte tag
MAX_STREAMS = 256  # sealing streams held at once; the least recently used one goes first
_LENGTH = struct.Struct(">I")

# Refusal codes the agent answers with (stable: workloads match on them).
PEER_REFUSED = "AGENT_PEER_REFUSED"  # the caller's uid/gid is not on the allow-list
REQUEST_INVALID = "AGENT_REQUEST_INVALID"  # not a well-formed request
NOT_READY = "AGENT_NOT_READY"  # not registered yet, or the lease lapsed and re-attestation is under way
NODE_REVOKED = "AGENT_NODE_REVOKED"  # the control plane revoked or suspended this node: keys dropped
KEY_DENIED = "AGENT_KEY_DENIED"  # the control plane refused this key for this purpose
AGENT_ERROR = "AGENT_ERROR"  # the agent could not reach the control plane or failed otherwise
STREAM_FAILED = "AGENT_STREAM_FAILED"  # a chunk did not authenticate or the header is bad (stream_code)
STREAM_UNKNOWN = "AGENT_STREAM_UNKNOWN"  # no such sealing stream (ended, dropped on revocation, evicted)
KEY_HANDOUT_DISABLED = "AGENT_KEY_HANDOUT_DISABLED"  # hand_out_keys = false: streams through the agent only


class ApiError(Exception):
    """A frame that is not a JSON object within bounds, or a connection that ended early."""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ApiError("the connection closed in the middle of a frame")
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ApiError(f"a frame is at most {MAX_FRAME} bytes")
    sock.sendall(_LENGTH.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if size > MAX_FRAME:
        raise ApiError(f"a frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    try:
        message = json.loads(_recv_exact(sock, size))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ApiError("a frame is not UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise ApiError("a frame is not a JSON object")
    return message


def refusal(code: str, message: str, hint: str = "") -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message, "hint": hint}


def call(path: str, request: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    """One request to the agent at ``path``; its response. ``OSError``/``ApiError`` when unreachable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        send_frame(sock, {"v": VERSION, **request})
        return recv_frame(sock)


def send_payload(sock: socket.socket, data: bytes | memoryview) -> None:
    if len(data) > MAX_PAYLOAD:
        raise ApiError(f"a payload is at most {MAX_PAYLOAD} bytes")
    sock.sendall(_LENGTH.pack(len(data)))
    sock.sendall(data)


def recv_payload(sock: socket.socket, into: memoryview | None = None) -> memoryview:
    """The next payload frame, received into ``into`` (if given and large enough) or a new buffer."""
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if size > MAX_PAYLOAD:
        raise ApiError(f"a payload of {size} bytes is over the {MAX_PAYLOAD}-byte limit")
    view = into[:size] if into is not None and len(into) >= size else memoryview(bytearray(size))
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ApiError("the connection closed in the middle of a payload")
        got += n
    return view


def widen_buffers(sock: socket.socket) -> None:
    """Room for a whole chunk in the socket buffers: a 1 MiB chunk then needs no wake-up in between
    (the kernel caps the size at net.core.wmem_max / rmem_max)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, MAX_PAYLOAD)


def call_with_payload(
    path: str,
    request: dict[str, Any],
    payload: bytes | memoryview | None,
    *,
    timeout: float = 30.0,
    into: memoryview | None = None,
) -> tuple[dict[str, Any], memoryview]:
    """A ``STREAM_OPS`` request (with ``payload`` if it carries bytes); the response and its payload
    (empty for a refusal or an answer without one), received into ``into`` when it has room."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        widen_buffers(sock)
        sock.connect(path)
        send_frame(sock, {"v": VERSION, **request})
        if payload is not None:
            send_payload(sock, payload)
        reply = recv_frame(sock)
        if reply.get("ok") is True and reply.get("payload") is True:
            return reply, recv_payload(sock, into)
        return reply, memoryview(b"")
