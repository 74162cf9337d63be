"""The resident agent's local API server: a Unix stream socket, callers checked with SO_PEERCRED.

The socket is created with the configured mode (default 0660) and owning group, never world-writable
by accident (bound under a 0177 umask, then chmod/chown). Each connection's peer credentials (pid,
uid, gid, from the kernel) are checked against the allow-list before a frame is read: the agent's own
uid, ``allowed_uids`` and ``allowed_gids`` (primary gid). Every handout is logged with the peer's pid
and uid and counted; refusals are logged and counted too. Protocol: ``enclave.workload.agent_api``;
the sealed-stream requests (chunks opened and sealed for workloads that never hold the key) are served by
``enclave.agent_streams``, each chunk logged with the caller's pid and uid.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.agent_streams import StreamService
from enclave.errors import NodeCode, NodeError
from enclave.resident import Refused, ResidentAgent
from enclave.workload import agent_api, output_report

log = logging.getLogger(__name__)
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_PAYLOAD_OPS = frozenset({"open_chunk", "seal_chunk"})  # requests followed by a payload frame


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(conn: socket.socket) -> Peer:
    pid, uid, gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return Peer(pid, uid, gid)


def resolve_group(group: str | int | None) -> int | None:
    """A group name or number -> gid; None for none. ``CONFIG_INVALID`` for an unknown group."""
    if group is None or group == "":
        return None
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise NodeError(f"no group named {group!r} on this host", code=NodeCode.CONFIG_INVALID) from None


class LocalApiServer:
    """Serves ``agent`` on ``path`` in a background thread (one short-lived thread per connection)."""

    def __init__(
        self,
        agent: ResidentAgent,
        path: Path,
        *,
        mode: int = 0o660,
        group: int | None = None,
        allowed_uids: Iterable[int] = (),
        allowed_gids: Iterable[int] = (),
        timeout: float = 30.0,
        hand_out_keys: bool = True,
    ) -> None:
        if mode & 0o007:
            raise NodeError(
                f"socket mode {mode:o} lets every local user connect",
                code=NodeCode.CONFIG_INVALID,
                hint="use 0600 or 0660 and list the workloads' uids/gids in allowed_uids/allowed_gids",
            )
        self.agent = agent
        self.path = path
        self.mode = mode
        self.group = group
        self.allowed_uids = frozenset({os.getuid(), *allowed_uids})
        self.allowed_gids = frozenset(allowed_gids)
        self.timeout = timeout
        self.hand_out_keys = hand_out_keys
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.streams = StreamService(agent)

    def __repr__(self) -> str:
        return f"LocalApiServer(path={str(self.path)!r})"

    def start(self) -> None:
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise NodeError(
                f"cannot create the agent socket {self.path}: {exc.strerror}",
                code=NodeCode.CONFIG_INVALID,
                hint="check that its folder exists and is writable by the agent",
            ) from None
        finally:
            os.umask(old)
        try:
            if self.group is not None:
                os.chown(self.path, -1, self.group)
            os.chmod(self.path, self.mode)
        except OSError as exc:
            sock.close()
            raise NodeError(
                f"cannot set the owner/mode of {self.path}: {exc.strerror}", code=NodeCode.CONFIG_INVALID
            ) from None
        sock.listen(64)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="node-agent-socket", daemon=True)
        self._thread.start()
        log.info("node agent: local API on %s (mode %o)", self.path, self.mode)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise NodeError(
                f"{self.path} exists and is not a socket",
                code=NodeCode.CONFIG_INVALID,
                hint="choose another path",
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            os.unlink(self.path)  # left behind by an agent that died
            return
        finally:
            probe.close()
        raise NodeError(
            f"another agent already serves {self.path}",
            code=NodeCode.CONFIG_INVALID,
            hint="use that agent (SOVEREIGN_AGENT_SOCKET) or stop it first",
        )

    def close(self) -> None:
        self._closing.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._thread is not None:
            self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def allowed(self, peer: Peer) -> bool:
        return peer.uid in self.allowed_uids or peer.gid in self.allowed_gids

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.timeout)
            agent_api.widen_buffers(conn)
            try:
                peer = peer_of(conn)
                if not self.allowed(peer):
                    self.agent.counters.refused(agent_api.PEER_REFUSED)
                    log.warning(
                        "node agent: refused pid %d uid %d gid %d (not allowed)", *vars(peer).values()
                    )
                    # Read the request first: closing with it unread would reset the connection and
                    # the caller could lose the refusal (and its code) with it.
                    with contextlib.suppress(agent_api.ApiError, OSError):
                        if agent_api.recv_frame(conn).get("op") in _PAYLOAD_OPS:
                            agent_api.recv_payload(conn)
                    agent_api.send_frame(
                        conn,
                        agent_api.refusal(
                            agent_api.PEER_REFUSED,
                            f"uid {peer.uid} / gid {peer.gid} may not use this node agent",
                            "the agent's operator lists allowed workloads in allowed_uids / allowed_gids",
                        ),
                    )
                    return
                try:
                    request = agent_api.recv_frame(conn)
                    payload = agent_api.recv_payload(conn) if request.get("op") in _PAYLOAD_OPS else None
                except agent_api.ApiError as exc:
                    self.agent.counters.refused(agent_api.REQUEST_INVALID)
                    agent_api.send_frame(conn, agent_api.refusal(agent_api.REQUEST_INVALID, str(exc)))
                    return
                if request.get("op") in agent_api.STREAM_OPS:
                    reply, data = self.handle_stream(request, payload, peer)
                    agent_api.send_frame(conn, reply)
                    if reply.get("payload") is True:
                        agent_api.send_payload(conn, data)
                    return
                agent_api.send_frame(conn, self.handle(request, peer))
            except OSError:
                return

    def _refused(self, op: object, refused: Refused, peer: Peer) -> dict[str, Any]:
        self.agent.counters.refused(refused.code)
        log.warning("node agent: refused %s to pid %d uid %d: %s", op, peer.pid, peer.uid, refused.code)
        return refused.to_reply()

    def handle_stream(
        self, request: dict[str, Any], payload: memoryview | None, peer: Peer
    ) -> tuple[dict[str, Any], bytes | memoryview]:
        """The sealed-stream requests (``agent_api.STREAM_OPS``); the answer and its payload."""
        op = request.get("op")
        try:
            if request.get("v") != agent_api.VERSION:
                raise Refused(agent_api.REQUEST_INVALID, f"unknown request version {request.get('v')!r}")
            streams = self.streams
            if op == "open_chunk":
                reply, data, ref = streams.open_chunk(request, payload or b"")
                what = f"opened chunk {request.get('index')} of a {ref or 'sealed'} file"
            elif op == "seal_begin":
                reply, ref = streams.seal_begin(request, peer.uid)
                data, what = b"", f"began sealing under {ref} (stream {reply['stream'][:8]})"
            elif op == "seal_chunk":
                reply, data, ref = streams.seal_chunk(request, payload or b"", peer.uid)
                what = f"sealed a chunk under {ref} (stream {str(request.get('stream'))[:8]})"
            else:
                reply, data, ref = streams.seal_abort(request, peer.uid), b"", ""
                what = f"aborted sealing stream {str(request.get('stream'))[:8]}"
        except Refused as refused:
            return self._refused(op, refused, peer), b""
        except Exception as exc:  # a bug must still answer with a code, never drop the connection
            log.exception("node agent: %s for pid %d uid %d failed", op, peer.pid, peer.uid)
            failed = Refused(agent_api.AGENT_ERROR, f"the agent failed on {op} ({type(exc).__name__})")
            return self._refused(op, failed, peer), b""
        if reply.get("ok") is not True:
            self.agent.counters.refused(str(reply.get("code")))
            log.warning(
                "node agent: %s for pid %d uid %d failed: %s %s (chunk %s)",
                op, peer.pid, peer.uid, reply.get("stream_code"), ref, reply.get("chunk", "-"),
            )  # fmt: skip
            return reply, b""
        per_chunk = op in ("open_chunk", "seal_chunk")
        if per_chunk:
            self.agent.counters.chunk(ref.rsplit("@v", 1)[0], "open" if op == "open_chunk" else "seal")
        # a line per chunk (one per MiB read) is for debugging; a stream's start and abort stay visible
        log.log(
            logging.DEBUG if per_chunk else logging.INFO,
            "node agent: %s for pid %d uid %d",
            what,
            peer.pid,
            peer.uid,
        )
        return reply, data

    def handle(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        op = request.get("op")
        try:
            if request.get("v") != agent_api.VERSION or op not in agent_api.OPS | {
                "attach",
                output_report.OP,
            }:
                raise Refused(
                    agent_api.REQUEST_INVALID, f"unknown request (v={request.get('v')!r}, op={op!r})"
                )
            if op == "status":
                return {"ok": True, **self.agent.status()}
            if op == "attach":
                return self._attach(request, peer)
            if op == output_report.OP:
                return self._output(request, peer)
            purpose = request.get("purpose", "read")
            if op == "check":
                names = request.get("names")
                if (
                    not isinstance(names, list)
                    or not all(isinstance(n, str) for n in names)
                    or len(names) > 64
                ):
                    raise Refused(agent_api.REQUEST_INVALID, "names is a list of at most 64 key names")
                refs = [self._key(n, purpose, 0, peer, check=True) for n in names]
                return {"ok": True, "keys": refs}
            name = request.get("name")
            version = request.get("version", 0)
            if not isinstance(name, str) or not isinstance(purpose, str):
                raise Refused(agent_api.REQUEST_INVALID, "name and purpose are strings")
            if not self.hand_out_keys:
                raise Refused(
                    agent_api.KEY_HANDOUT_DISABLED,
                    "this agent keeps its keys: it opens and seals files for workloads but hands out no key",
                    "use open_sealed(path, via_agent=True) / create_sealed(..., via_agent=True)",
                )
            released = self.agent.key(name, purpose, version)
            ref = f"{released.key_name}@v{released.key_version}"
            self.agent.counters.handed(peer.uid, released.key_name, purpose)
            log.info("node agent: handed %s (%s) to pid %d uid %d", ref, purpose, peer.pid, peer.uid)
            return {"ok": True, "key_ref": ref, "key": base64.b64encode(released.key).decode()}
        except Refused as refused:
            return self._refused(op, refused, peer)

    def _key(self, name: Any, purpose: Any, version: int, peer: Peer, *, check: bool) -> str:
        if not isinstance(purpose, str):
            raise Refused(agent_api.REQUEST_INVALID, "purpose is a string")
        released = self.agent.key(name, purpose, version)
        ref = f"{released.key_name}@v{released.key_version}"
        log.info("node agent: checked %s (%s) for pid %d uid %d", ref, purpose, peer.pid, peer.uid)
        return ref

    def _output(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Record a sealed output the workload reports (enclave.workload.output_report)."""
        try:
            report = output_report.OutputReport.from_request(request)
        except output_report.ReportInvalid as exc:
            raise Refused(agent_api.REQUEST_INVALID, str(exc)) from None
        sequence = self.agent.record_output(report)
        log.info(
            "node agent: recorded output %s (%s@v%d) for pid %d uid %d at sequence %d",
            report.sha256[:16], report.key_name, report.key_version, peer.pid, peer.uid, sequence,
        )  # fmt: skip
        return {"ok": True, "sequence": sequence}

    def _attach(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Only the process that started a workload may attach it (its parent, per /proc)."""
        pid = request.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            raise Refused(agent_api.REQUEST_INVALID, "pid is a process id")
        if _parent_of(pid) != peer.pid:
            raise Refused(
                agent_api.REQUEST_INVALID, f"process {pid} is not a child of the caller ({peer.pid})"
            )
        self.agent.attach(pid)
        log.info("node agent: attached workload pid %d (started by pid %d uid %d)", pid, peer.pid, peer.uid)
        return {"ok": True}


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
