"""Start the console beside the gRPC servers, in the same event loop (uvicorn, TLS, no signal handling
of its own: ``sovereign serve`` owns SIGTERM/SIGINT and stops the console with everything else)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.config import ServerConfig
from kms.errors import Code, KmsError
from kms.server.app import ControlPlane, Running, tls_files, token_validator
from sovereign.console.app import ConsoleSettings, build_app
from sovereign.console.backend import Backend
from sovereign.console.login import Realm
from sovereign.console.overview import Overview


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningConsole:
    url: str
    port: int
    _server: _Server
    _task: asyncio.Task[None]
    _sampler: asyncio.Task[None]
    _backend: Backend

    async def stop(self) -> None:
        self._server.should_exit = True
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, 5)
        await self._backend.close()


def _bad(message: str, hint: str = "") -> KmsError:
    return KmsError(message, code=Code.SERVER_CONFIG_INVALID, hint=hint or None)


def _audit_key(config: ServerConfig, plane: ControlPlane) -> tuple[bytes, bool]:
    served = plane.audit.signer.public_key_bytes() if plane.audit and plane.audit.signer else None
    if not config.console_audit_key:
        if served is None:
            raise _bad("the console needs the audit public key", "give --console-audit-key FILE")
        return served, False
    try:
        key = serialization.load_pem_public_key(Path(config.console_audit_key).read_bytes())
    except (OSError, ValueError) as exc:
        raise _bad(f"cannot read the console audit key {config.console_audit_key}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise _bad(f"{config.console_audit_key} is not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if served is not None and raw != served:
        raise _bad(
            f"{config.console_audit_key} is not the key this server signs checkpoints with",
            "pin the current audit key (sovereign audit verify prints its fingerprint)",
        )
    return raw, True


async def start_console(config: ServerConfig, plane: ControlPlane, running: Running) -> RunningConsole:
    if running.admin_address is None:
        raise _bad("the console needs the operator port (replicas serve none)")
    cert, key, dev_ca = tls_files(config, plane.clock)
    ca_file = Path(config.tls_ca) if config.tls_ca else dev_ca
    if ca_file is None:
        raise _bad("the console needs the CA of the server certificate", "give --tls-ca FILE")
    audit_key, pinned = _audit_key(config, plane)
    host, _, port = config.console_listen.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        raise _bad(f"cannot listen on {config.console_listen} for the console: {exc.strerror}") from None
    bound = int(sock.getsockname()[1])
    url = (config.console_url or f"https://{host}:{bound}").rstrip("/")
    backend = Backend(running.admin_address, ca_file.read_bytes())
    overview = Overview(plane.metrics.registry)
    settings = ConsoleSettings(
        public_url=url,
        realm=Realm(config.oidc_issuer, config.oidc_audience, config.oidc_server_url, config.oidc_ca_file),
        validator=token_validator(config),
        roles=plane.roles,
        backend=backend,
        overview=overview,
        audit_key=audit_key,
        audit_key_pinned=pinned,
        clock=plane.clock,
        registry=plane.metrics.registry,
    )
    server = _Server(
        uvicorn.Config(
            build_app(settings), ssl_certfile=str(cert), ssl_keyfile=str(key), log_level="warning",
            access_log=False, lifespan="off", server_header=False,
        )
    )  # fmt: skip
    task = asyncio.create_task(server.serve(sockets=[sock]))
    sampler = asyncio.create_task(_sample(overview, plane))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        raise _bad(f"the console did not start on {config.console_listen}")
    return RunningConsole(url, bound, server, task, sampler, backend)


async def _sample(overview: Overview, plane: ControlPlane) -> None:
    while True:
        await asyncio.to_thread(overview.sample, plane.clock())
        await asyncio.sleep(10)
