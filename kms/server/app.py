"""Wire the control plane together from a ``ServerConfig`` and serve it over gRPC.

Three ports, each TLS with the server certificate (reloaded when its files are replaced) unless
--insecure-dev: the node-facing one (Attestation, health, reflection; a token bucket per peer address,
``kms.server.rate_limit``), KeyRelease with mutual TLS (node client certificates from the node CA,
``kms.server.node_certs``), and the operator endpoint (Admin, Audit) behind ``OperatorAuthInterceptor``
(Keycloak bearer token + role; refusals of authenticated operators audited, the others counted). The
operator port serves no reflection: it would describe the Admin and Audit API to callers without a
token (operators use the .proto files). With --insecure-dev everything is plaintext on loopback only
and KeyRelease shares the node port (development only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tomllib
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
from kms.clock import Clock, system_clock
from kms.config import ServerConfig, two_person_actions
from kms.domain.catalogue import Catalogue
from kms.domain.transit import Transit
from kms.errors import Code, KmsError
from kms.oidc.errors import AuthError
from kms.oidc.roles import ADMIN_SERVICE, RoleMap
from kms.oidc.tokens import TokenValidator, keycloak_validator
from kms.oidc.two_person import TwoPersonConfig, TwoPersonRule
from kms.openbao.vault import BaoSettings, OpenBaoTransit
from kms.server.audit_servicer import add_audit_service
from kms.server.auth_interceptor import OperatorAuthInterceptor
from kms.server.monitoring import ControlPlaneCollector, Sources
from kms.server.node_certs import NodeCa
from kms.server.node_servicers import AttestationServicer, ClientCerts, KeyReleaseServicer, add_node_services
from kms.server.operator_audit import OperatorAudit
from kms.server.output_servicer import OutputServicer, add_output_service
from kms.server.rate_limit import PeerRateLimit, TokenBuckets
from kms.server.servicers import AdminServicer
from kms.server.tls import ReloadingCertificate, ensure_dev_tls
from kms.sql import open_store
from kms.sql.group_commit import GroupCommit
from kms.sql.keys import SqlKeyStore
from kms.sql.nodes import SqlNodes
from kms.sql.pending_changes import SqlPendingStore
from kms.sql.store import Store
from kms.usecases.admin import Admin
from kms.usecases.attest import Attestation
from kms.usecases.audit_service import AuditPlane, start_audit
from kms.usecases.gpu_appraisal import GpuVerifier
from kms.usecases.grants import GrantLedger
from kms.usecases.metrics import Metrics
from kms.usecases.nonces import Nonces
from kms.usecases.outputs import OutputRecorder
from kms.usecases.policy_source import PolicySource
from kms.usecases.provenance_issue import ProvenanceIssuer
from kms.usecases.release import KeyRelease
from kms.usecases.verifier import EvidenceVerifier, load_signers
from proto.sovereign.v1 import (
    admin_pb2_grpc,
    attestation_pb2,
    key_release_pb2,
)

NODE_SERVICES = (
    attestation_pb2.DESCRIPTOR.services_by_name["Attestation"].full_name,
    key_release_pb2.DESCRIPTOR.services_by_name["KeyRelease"].full_name,
)
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
    operator_audit: OperatorAudit = field(default_factory=lambda: OperatorAudit(None))
    two_person: TwoPersonRule | None = None
    roles: RoleMap = field(default_factory=RoleMap.default)
    clock: Clock = system_clock
    audit: AuditPlane | None = None
    outputs: OutputRecorder | None = None  # RecordOutput (release port)
    provenance: ProvenanceIssuer | None = None  # GetProvenance, GetSigningKeys (Audit)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()


def bao_settings(config: ServerConfig) -> BaoSettings:
    """AppRole when configured, else the dev-mode token file (config validation enforced which).
    ``config`` already holds what the environment says (``kms.config.load_config``); reading it again
    here would let a variable override the command line, hence the empty environment."""
    settings = BaoSettings.resolve(
        {},
        addr=config.bao_addr,
        role_id=config.bao_role_id or None,
        secret_id_file=Path(config.bao_secret_id_file) if config.bao_secret_id_file else None,
        token_file=Path(config.bao_token_file) if config.bao_token_file else None,
        ca_cert=config.bao_ca_cert or None,
    )
    return dataclasses.replace(settings, pool_size=32, failover_budget=config.failover_budget)


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
        metrics = Metrics()
        openbao_up: Callable[[], bool] | None = None
        if transit is None:
            bao = OpenBaoTransit(bao_settings(config), observe=metrics.observe_openbao)
            closers.append(bao.close)
            transit, openbao_up = bao, bao.healthy
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
        verifier = EvidenceVerifier(
            trust, Path(config.collateral), signers=load_signers(config.collateral_signers)
        )
        metrics.registry.register(
            ControlPlaneCollector(Sources(store, Path(config.collateral), clock, openbao_up))
        )
        catalogue = Catalogue(SqlKeyStore(store), transit, clock)
        commit = GroupCommit(store, window=config.denial_window_ms / 1000)
        closers.append(commit.close)
        audit = start_audit(
            store, commit, transit, clock, address=config.listen, policy_version=policies.active().version,
            sign=not config.replica,
        )  # fmt: skip
        closers.append(audit.stop)  # after the batchers stop, before the group commit closes
        ledger = GrantLedger(store, transit, commit, clock, metrics=metrics)
        closers.append(ledger.close)
        provenance = ProvenanceIssuer(store, transit, clock, observe=metrics.observe_provenance)
        closers.append(provenance.close)  # its thread, before the OpenBao client closes
        if not config.replica:  # replicas serve statements; one process issues them as checkpoints come
            provenance.start()
        nonces = Nonces(store, clock, ttl=timedelta(seconds=config.nonce_ttl))
        roles = load_role_map(config)
        two_person = TwoPersonRule(
            SqlPendingStore(store),
            roles,
            _two_person_config(config),
        )
        return ControlPlane(
            operator_audit=OperatorAudit(audit.ledger, metrics.refusals),
            audit=audit,
            two_person=two_person,
            roles=roles,
            clock=clock,
            store=store,
            attestation=Attestation(
                SqlNodes(store),
                nonces=nonces,
                verifier=verifier,
                policies=policies,
                clock=clock,
                metrics=metrics,
                audit=audit.ledger,
                gpus=GpuVerifier(trust, lambda: verifier.collateral().gpu),
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
            admin=Admin(store, catalogue, policies, verifier, clock, audit=audit.ledger),
            outputs=OutputRecorder(store, audit.ledger, clock, skew=timedelta(seconds=config.clock_skew)),
            provenance=provenance,
            policies=policies,
            metrics=metrics,
            closers=closers,
        )
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        raise


def _auth_config_error(err: AuthError) -> KmsError:
    return KmsError(f"operator authentication: {err.message}", code=Code.SERVER_CONFIG_INVALID, hint=err.hint)


def _two_person_config(config: ServerConfig) -> TwoPersonConfig:
    try:
        return TwoPersonConfig(two_person_actions(config), timedelta(seconds=config.two_person_ttl))
    except AuthError as err:
        raise _auth_config_error(err) from None


def load_role_map(config: ServerConfig) -> RoleMap:
    """The default role map, or the one in ``config.role_map`` (JSON or TOML)."""
    if not config.role_map:
        return RoleMap.default()
    path = Path(config.role_map)
    try:
        text = path.read_text()
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return RoleMap.from_config(doc)
    except (OSError, ValueError, RecursionError) as exc:
        raise KmsError(f"cannot read role map {path}: {exc}", code=Code.SERVER_CONFIG_INVALID) from None
    except AuthError as err:
        raise _auth_config_error(err) from None


def token_validator(config: ServerConfig) -> TokenValidator:
    """The realm's token validator; its keys are loaded now (the server does not start without them)."""
    try:
        base, _, realm = config.oidc_issuer.rstrip("/").rpartition("/realms/")
        return keycloak_validator(
            config.oidc_server_url or base,
            realm,
            config.oidc_audience,
            jwks_file=Path(config.oidc_jwks_file) if config.oidc_jwks_file else None,
            ca_file=config.oidc_ca_file or None,
            issuer=config.oidc_issuer,
        )
    except AuthError as err:
        raise _auth_config_error(err) from None


@dataclass
class Running:
    node: grpc.aio.Server
    admin: grpc.Server | None  # replicas serve no Admin
    node_address: str
    release_address: str  # == node_address with --insecure-dev
    admin_address: str | None
    ca_path: Path | None
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    pool: ThreadPoolExecutor
    release: grpc.aio.Server | None = None

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        admin_done = self.admin.stop(grace) if self.admin is not None else None
        await self.node.stop(grace)
        if self.release is not None:
            await self.release.stop(grace)
        if admin_done is not None:
            admin_done.wait(grace + 1)
        self.pool.shutdown(wait=False, cancel_futures=True)


def tls_files(config: ServerConfig, clock: Clock) -> tuple[Path, Path, Path | None]:
    """(certificate, key, dev CA to print) of the server's TLS identity."""
    if config.dev_tls:
        files = ensure_dev_tls(Path(config.dev_tls), clock())
        return files.cert, files.key, files.ca
    return Path(config.tls_cert), Path(config.tls_key), None


def _listen(server: Any, address: str, creds: grpc.ServerCredentials | None) -> int:
    port = int(server.add_secure_port(address, creds) if creds else server.add_insecure_port(address))
    if port == 0:
        raise KmsError(f"cannot listen on {address}", code=Code.SERVER_CONFIG_INVALID)
    return port


def _options(max_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]


def _node_interceptors(config: ServerConfig, plane: ControlPlane) -> list[Any]:
    """The per-peer rate limit of the node port (per process: with --processes N a peer whose
    connections land on several processes gets up to N buckets)."""
    if config.node_rate_limit <= 0:
        return []
    buckets = TokenBuckets(config.node_rate_limit, config.node_rate_burst)
    return [PeerRateLimit(buckets, plane.metrics.refusals)]


async def serve(config: ServerConfig, plane: ControlPlane, *, clock: Clock = system_clock) -> Running:
    """Start the servers in the running event loop; the caller awaits a stop signal, then ``stop``."""
    tls: tuple[Path, Path, Path | None] | None = None if config.insecure_dev else tls_files(config, clock)
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="attest")
    node = grpc.aio.server(
        options=_options(config.max_message_bytes), interceptors=_node_interceptors(config, plane)
    )
    release: grpc.aio.Server | None = None
    if tls is None:
        certs = None
        add_node_services(
            node, AttestationServicer(plane.attestation, pool), KeyReleaseServicer(plane.release)
        )
        if plane.outputs is not None:
            add_output_service(node, OutputServicer(plane.outputs, pool, mutual_tls=False))
    else:
        ca = NodeCa.load_or_create(Path(config.node_ca_dir), clock())
        release = grpc.aio.server(options=_options(config.max_message_bytes))
        release_creds = ReloadingCertificate(tls[0], tls[1], client_ca=ca.pem).credentials()
        release_port = _listen(release, config.release_listen, release_creds)
        certs = ClientCerts(ca, timedelta(seconds=config.node_cert_ttl), release_port, clock)
        add_node_services(node, AttestationServicer(plane.attestation, pool, certs), None)
        add_node_services(release, None, KeyReleaseServicer(plane.release, mutual_tls=True))
        if plane.outputs is not None:
            add_output_service(release, OutputServicer(plane.outputs, pool, mutual_tls=True))
    checker = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, node)
    reflection.enable_server_reflection((*NODE_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), node)
    creds = None if tls is None else ReloadingCertificate(tls[0], tls[1]).credentials()
    port = _listen(node, config.listen, creds)
    admin, admin_address = (None, None) if config.replica else _admin_server(config, plane, tls)
    await node.start()
    if release is not None:
        await release.start()
    for name in ("", *NODE_SERVICES):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = config.listen.rpartition(":")[0]
    release_host = config.release_listen.rpartition(":")[0]
    release_address = f"{release_host}:{certs.release_port}" if certs else f"{host}:{port}"
    return Running(
        node, admin, f"{host}:{port}", release_address, admin_address, tls[2] if tls else None, checker, pool,
        release,
    )  # fmt: skip


def _admin_server(
    config: ServerConfig, plane: ControlPlane, tls: tuple[Path, Path, Path | None] | None
) -> tuple[grpc.Server, str]:
    """Admin (and Audit) on the operator port: TLS, bearer token and role on every call."""
    if plane.two_person is None:
        raise KmsError(
            "the control plane was built without the two-person rule", code=Code.SERVER_CONFIG_INVALID
        )
    auth = OperatorAuthInterceptor(
        token_validator(config), plane.roles, on_refused=plane.operator_audit.on_refused, clock=plane.clock
    )
    admin = grpc.server(
        ThreadPoolExecutor(max_workers=8, thread_name_prefix="admin"),
        interceptors=[auth],
        options=[("grpc.max_receive_message_length", ADMIN_MAX_MESSAGE)],
    )
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(plane.admin, plane.two_person, plane.operator_audit, plane.clock), admin
    )
    checker = health.HealthServicer()  # no token needed: it says only SERVING or not
    health_pb2_grpc.add_HealthServicer_to_server(checker, admin)
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    checker.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    if plane.audit is not None:
        add_audit_service(admin, plane.audit.reader, plane.provenance)
    creds = None if tls is None else ReloadingCertificate(tls[0], tls[1]).credentials()
    port = _listen(admin, config.admin_listen, creds)
    admin.start()
    return admin, f"{config.admin_listen.rpartition(':')[0]}:{port}"
