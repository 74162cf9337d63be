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
  "registrations": N, "renewals": N, "handouts": N, "refusals": N}``

A refusal is ``{"ok": false, "code": CODE, "message": ..., "hint": ...}``; the codes are listed below.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

VERSION = 1
MAX_FRAME = 64 * 1024
OPS = frozenset({"key", "check", "status"})
_LENGTH = struct.Struct(">I")

# Refusal codes the agent answers with (stable: workloads match on them).
PEER_REFUSED = "AGENT_PEER_REFUSED"  # the caller's uid/gid is not on the allow-list
REQUEST_INVALID = "AGENT_REQUEST_INVALID"  # not a well-formed request
NOT_READY = "AGENT_NOT_READY"  # not registered yet, or the lease lapsed and re-attestation is under way
NODE_REVOKED = "AGENT_NODE_REVOKED"  # the control plane revoked or suspended this node: keys dropped
KEY_DENIED = "AGENT_KEY_DENIED"  # the control plane refused this key for this purpose
AGENT_ERROR = "AGENT_ERROR"  # the agent could not reach the control plane or failed otherwise


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
