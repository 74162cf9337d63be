"""Wire the control plane together from a ``ServerConfig`` and serve it over gRPC.

Two servers: the node-facing one on TCP (TLS unless --insecure-dev) with Attestation, KeyRelease, health
and reflection; the Admin service only on a local Unix socket (0600), never on the TCP port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from attestation.trust import TrustStore
from kms.admin import Admin
from kms.attest import Attestation
from kms.catalogue import Catalogue
from kms.clock import Clock, system_clock
from kms.config import ServerConfig
from kms.errors import Code, KmsError
from kms.grants import GrantLedger
from kms.metrics import Metrics
from kms.nonces import Nonces
from kms.policy_source import PolicySource
from kms.release import KeyRelease
from kms.server.node_servicers import AttestationServicer, KeyReleaseServicer, add_node_services
from kms.server.servicers import AdminServicer
from kms.server.tls import ensure_dev_tls
from kms.storage import open_store
from kms.storage.group_commit import GroupCommit
from kms.storage.keys import SqlKeyStore
from kms.storage.store import Store
from kms.vault import BaoSettings, OpenBaoTransit, Transit
from kms.verifier import EvidenceVerifier
from proto.sovereign.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    attestation_pb2,
    key_release_pb2,
)

NODE_SERVICES = (
    attestation_pb2.DESCRIPTOR.services_by_name["Attestation"].full_name,
    key_release_pb2.DESCRIPTOR.services_by_name["KeyRelease"].full_name,
)
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
ADMIN_MAX_MESSAGE = 4 << 20
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


@dataclass
class ControlPlane:
    """Every use case, built over one store, one transit client and one clock."""

    store: Store
    attestation: Attestation
    release: KeyRelease
    admin: Admin
    policies: PolicySource
    metrics: Metrics
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()


def bao_settings(config: ServerConfig) -> BaoSettings:
    """AppRole when configured, else the dev-mode token file (config validation enforced which)."""
    settings = BaoSettings.resolve(
        {},
        addr=config.bao_addr,
        role_id=config.bao_role_id or None,
        secret_id_file=Path(config.bao_secret_id_file) if config.bao_secret_id_file else None,
        token_file=Path(config.bao_token_file) if config.bao_token_file else None,
        ca_cert=config.bao_ca_cert or None,
    )
    return dataclasses.replace(settings, pool_size=32)


def build(
    config: ServerConfig,
    *,
    trust: TrustStore,
    clock: Clock = system_clock,
    transit: Transit | None = None,
) -> ControlPlane:
    """``trust`` is the resolved ``config.trust`` profile (the CLI reads the JSON file)."""
    store = open_store(config.db, clock=clock)
    closers: list[Callable[[], None]] = [store.close]
    try:
        if transit is None:
            bao = OpenBaoTransit(bao_settings(config))
            closers.append(bao.close)
            transit = bao
        metrics = Metrics()
        policies = PolicySource(store, clock)
        if config.policy:
            path = Path(config.policy)
            try:
                text = path.read_text()
            except OSError as exc:
                raise KmsError(
                    f"cannot read policy {path}: {exc.strerror}", code=Code.SERVER_CONFIG_INVALID
                ) from None
            policies.seed(text, str(path))
        policies.active()  # fail at start, not on the first request, when no policy is stored
        verifier = EvidenceVerifier(trust, Path(config.collateral))
        catalogue = Catalogue(SqlKeyStore(store), transit, clock)
        commit = GroupCommit(store, window=config.denial_window_ms / 1000)
        closers.append(commit.close)
        ledger = GrantLedger(store, transit, commit, clock, window=config.release_window_ms / 1000)
        closers.append(ledger.close)
        nonces = Nonces(store, clock, ttl=timedelta(seconds=config.nonce_ttl))
        return ControlPlane(
            store=store,
            attestation=Attestation(
                store, nonces=nonces, verifier=verifier, policies=policies, clock=clock, metrics=metrics
            ),
            release=KeyRelease(
                store,
                catalogue=catalogue,
                ledger=ledger,
                policies=policies,
                clock=clock,
                skew=timedelta(seconds=config.clock_skew),
                metrics=metrics,
            ),
            admin=Admin(store, catalogue, policies, verifier, clock),
            policies=policies,
            metrics=metrics,
            closers=closers,
        )
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        raise


@dataclass
class Running:
    node: grpc.aio.Server
    admin: grpc.Server | None  # replicas serve no Admin
    node_address: str
    admin_socket: Path | None
    ca_path: Path | None
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    pool: ThreadPoolExecutor

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        admin_done = self.admin.stop(grace) if self.admin is not None else None
        await self.node.stop(grace)
        if admin_done is not None:
            admin_done.wait(grace + 1)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.admin_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.admin_socket.unlink()


def _credentials(config: ServerConfig, clock: Clock) -> tuple[grpc.ServerCredentials | None, Path | None]:
    if config.insecure_dev:
        return None, None
    if config.dev_tls:
        files = ensure_dev_tls(Path(config.dev_tls), clock())
        cert, key, ca = files.cert, files.key, files.ca
    else:
        cert, key, ca = Path(config.tls_cert), Path(config.tls_key), None
    try:
        pair = (key.read_bytes(), cert.read_bytes())
    except OSError as exc:
        raise KmsError(f"cannot read TLS files: {exc}", code=Code.SERVER_CONFIG_INVALID) from None
    return grpc.ssl_server_credentials([pair]), ca


async def serve(config: ServerConfig, plane: ControlPlane, *, clock: Clock = system_clock) -> Running:
    """Start both servers in the running event loop; the caller awaits a stop signal, then ``stop``."""
    creds, ca = _credentials(config, clock)
    node = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
        ]
    )
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="attest")
    add_node_services(node, AttestationServicer(plane.attestation, pool), KeyReleaseServicer(plane.release))
    checker = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, node)
    reflection.enable_server_reflection((*NODE_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), node)
    port = node.add_secure_port(config.listen, creds) if creds else node.add_insecure_port(config.listen)
    if port == 0:
        raise KmsError(f"cannot listen on {config.listen}", code=Code.SERVER_CONFIG_INVALID)
    admin, socket_path = (None, None) if config.replica else _admin_server(config, plane)
    await node.start()
    for name in ("", *NODE_SERVICES):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = config.listen.rpartition(":")[0]
    return Running(node, admin, f"{host}:{port}", socket_path, ca, checker, pool)


def _admin_server(config: ServerConfig, plane: ControlPlane) -> tuple[grpc.Server, Path]:
    """Admin only on a Unix socket created 0600 (never on the TCP port)."""
    admin = grpc.server(
        ThreadPoolExecutor(max_workers=8, thread_name_prefix="admin"),
        options=[("grpc.max_receive_message_length", ADMIN_MAX_MESSAGE)],
    )
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(plane.admin), admin)
    reflection.enable_server_reflection((ADMIN_SERVICE, reflection.SERVICE_NAME), admin)
    socket_path = Path(config.admin_socket).resolve()
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a stale socket from a crashed run
    admin.add_insecure_port(f"unix:{socket_path}")
    old = os.umask(0o177)  # the socket is created 0600 from the start
    try:
        admin.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    return admin, socket_path
