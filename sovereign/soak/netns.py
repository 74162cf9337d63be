"""A network namespace for one ``serve`` replica, so the soak can cut the path between that replica and
PostgreSQL or OpenBao (a partition) while everything else keeps talking.

Layout (made here, as root, with ``ip``; removed by ``close()``):

* namespace ``soak-<pid>`` with a veth pair: ``<ns side> 10.231.N.2/24`` and, in the root namespace,
  ``10.231.N.1/24`` (the clients' side) plus ``10.231.N.5`` (PostgreSQL's side) and ``10.231.N.6``
  (OpenBao's side) on the same link. All of it is private to this host: nothing leaves the machine.
* TCP forwarders in the driver process (this machine has neither iptables nor nft, so PostgreSQL and
  OpenBao, which listen on 127.0.0.1, are reached through them): ``10.231.N.5:P -> 127.0.0.1:P`` and
  ``10.231.N.6:P -> 127.0.0.1:P``; and for the clients ``127.0.0.1:P -> 10.231.N.2:P`` (the replica's
  dev TLS certificate names 127.0.0.1, so clients keep that address).
* a partition is a ``blackhole`` route inside the namespace for PostgreSQL's or OpenBao's address: the
  kernel drops the replica's packets on that path only; healing deletes the route. Connections already
  open stall (their segments are dropped); new ones fail.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import threading
from dataclasses import dataclass, field


class NetnsError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@dataclass
class Forwarder:
    """Accepts on ``listen`` and relays each connection to ``target`` (one thread per direction)."""

    listen: tuple[str, int]
    target: tuple[str, int]
    _server: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Forwarder:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(128)
        server.settimeout(0.5)
        self._server = server
        threading.Thread(target=self._accept, daemon=True, name=f"fwd-{self.listen[1]}").start()
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._open.update((client, upstream))
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.5):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    data = src.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            with self._lock:
                self._open.difference_update((client, upstream))
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class ReplicaNetns:
    """The namespace, its veth link and the forwarders; ``partition``/``heal`` cut and restore a path."""

    def __init__(self, index: int = 0) -> None:
        tag = f"{os.getpid() % 100000}{index}"
        self.name = f"soak-{tag}"
        self.host_if, self.ns_if = f"skh{tag}"[:15], f"skn{tag}"[:15]
        n = 16 + (os.getpid() + index) % 200
        self.host_ip, self.ns_ip = f"10.231.{n}.1", f"10.231.{n}.2"
        self.pg_ip, self.bao_ip = f"10.231.{n}.5", f"10.231.{n}.6"
        self.forwarders: list[Forwarder] = []
        self.cut: set[str] = set()
        self.made = False

    def __repr__(self) -> str:
        return f"ReplicaNetns({self.name!r}, ns_ip={self.ns_ip!r})"

    def create(self) -> ReplicaNetns:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces for the partition faults need root")
        _ip("netns", "add", self.name)
        self.made = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        for addr in (f"{self.host_ip}/24", f"{self.pg_ip}/32", f"{self.bao_ip}/32"):
            _ip("addr", "add", addr, "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        inside = ("netns", "exec", self.name, "ip")
        _ip(*inside, "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _ip(*inside, "link", "set", self.ns_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", f"{self.pg_ip}/32", "dev", self.ns_if)
        _ip(*inside, "route", "add", f"{self.bao_ip}/32", "dev", self.ns_if)
        return self

    def prefix(self) -> list[str]:
        """Run a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def forward(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.forwarders.append(Forwarder(listen, target).start())

    def partition(self, peer: str) -> None:
        """``peer``: "pg" or "bao"; the replica's packets to it are dropped until ``heal``."""
        ip = self.pg_ip if peer == "pg" else self.bao_ip
        _ip("netns", "exec", self.name, "ip", "route", "replace", "blackhole", f"{ip}/32")
        self.cut.add(peer)

    def heal(self, peer: str) -> None:
        ip = self.pg_ip if peer == "pg" else self.bao_ip
        _ip("netns", "exec", self.name, "ip", "route", "replace", f"{ip}/32", "dev", self.ns_if)
        self.cut.discard(peer)

    def close(self) -> None:
        for f in self.forwarders:
            f.close()
        self.forwarders.clear()
        if self.made:
            with contextlib.suppress(NetnsError):
                _ip("link", "del", self.host_if)
            with contextlib.suppress(NetnsError):
                _ip("netns", "del", self.name)
            self.made = False
