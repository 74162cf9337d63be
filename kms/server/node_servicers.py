"""Node-facing servicers on the asyncio gRPC server: Attestation and KeyRelease.

KeyRelease runs its checks and sealing on the event loop and awaits the batched unwrap + grant commit,
so 64 concurrent releases need no 64 parked threads (with the GIL, thread hand-offs cost more than the
work). Attestation (CPU-heavy evidence verification, database writes) runs in a small thread pool.

Mutual TLS: an ATTESTED Register/Renew that carries a client TLS key (signed by the node's attested
Ed25519 key over the request nonce) is answered with a short-lived client certificate from the node CA
(``kms.server.node_certs``). KeyRelease is served on its own port whose TLS requires such a certificate;
the servicer hands the certificate's identity to the release use case (``kms.usecases.release``), which requires
that it names the node of the signed body and carries the key that verified its signature, else
RELEASE_CLIENT_CERT_MISMATCH (recorded as a denial).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from attestation.errors import AttestationError
from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.server import codec, node_certs
from kms.server.errors import INTERNAL, abort_async, status_for
from kms.usecases.attest import Attestation, AttestationOutcome, Outcome
from kms.usecases.release import KeyRelease, ReleaseDenied
from policies.errors import PolicyError
from proto.sovereign.v1 import attestation_pb2, attestation_pb2_grpc, key_release_pb2, key_release_pb2_grpc

log = logging.getLogger("sovereign.server")
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
CODED = (KmsError, AttestationError, PolicyError, ReleaseDenied)


UNDECODABLE = object()  # what the lenient deserializer hands over for bytes that do not parse
NOT_PROTOBUF = KmsError("the request is not a valid protobuf message of its type", code=Code.REQUEST_INVALID)


def _lenient(cls: Any) -> Callable[[bytes], Any]:
    """Deserialize, or hand the servicer a marker so it can answer INVALID_ARGUMENT with a code (a
    raising deserializer makes gRPC answer UNKNOWN with the parser's text)."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError:
            return UNDECODABLE

    return parse


def add_node_services(
    server: grpc.aio.Server, attestation: AttestationServicer | None, release: KeyReleaseServicer | None
) -> None:
    """Register the given node services (generic handlers with lenient request parsing)."""
    methods: dict[str, dict[str, tuple[Any, Any]]] = {}
    if attestation is not None:
        methods["sovereign.v1.Attestation"] = {
            "Challenge": (attestation.Challenge, attestation_pb2.ChallengeRequest),
            "Register": (attestation.Register, attestation_pb2.RegisterRequest),
            "Renew": (attestation.Renew, attestation_pb2.RenewRequest),
        }
    if release is not None:
        methods["sovereign.v1.KeyRelease"] = {
            "ReleaseKey": (release.ReleaseKey, key_release_pb2.ReleaseRequest)
        }
    for service, table in methods.items():
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=_lenient(cls), response_serializer=lambda m: m.SerializeToString()
            )
            for name, (fn, cls) in table.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


@dataclass(frozen=True)
class ClientCerts:
    """Issuing node client certificates: the CA, their lifetime and where KeyRelease listens."""

    ca: node_certs.NodeCa
    ttl: timedelta
    release_port: int
    clock: Clock


def _tls_key(request: Any) -> Any:
    """The verified P-256 key of a Register/Renew request, or None if it carries none."""
    if not request.HasField("client_tls_key") or len(request.keys.signing_public_key) != 32:
        return None  # malformed node keys are the use case's to refuse (REQUEST_INVALID)
    k = request.client_tls_key
    return node_certs.check_tls_key(
        bytes(request.keys.signing_public_key), bytes(request.nonce), bytes(k.public_key), bytes(k.signature)
    )


class AttestationServicer(attestation_pb2_grpc.AttestationServicer):
    def __init__(
        self, attestation: Attestation, pool: ThreadPoolExecutor, certs: ClientCerts | None = None
    ) -> None:
        self._uc = attestation
        self._pool = pool
        self._certs = certs

    def _result(
        self, request: Any, outcome: AttestationOutcome, tls_key: Any
    ) -> attestation_pb2.AttestationResult:
        out = codec.outcome_out(outcome)
        if self._certs is None:
            return out
        out.release_port = self._certs.release_port
        if tls_key is not None and outcome.outcome is Outcome.ATTESTED and outcome.lease is not None:
            now = self._certs.clock()
            out.client_certificate = self._certs.ca.issue(
                outcome.node_id,
                bytes(request.keys.signing_public_key),
                tls_key,
                now=now,
                not_after=min(outcome.lease.expires_at, now + self._certs.ttl),
            )
        return out

    async def _run(self, context: Context, request: Any, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the pool. A request refused as malformed (undecodable, bad shape, a bad client
        TLS key: INVALID_ARGUMENT) is a refusal before authentication: counted, never audited; the use
        case counts the REJECTED outcomes of unauthenticated requests itself."""
        if request is UNDECODABLE:
            self._uc.refused(NOT_PROTOBUF.code.value)
            await abort_async(context, NOT_PROTOBUF)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except CODED as err:
            code = str(err.code)
            if status_for(code) is grpc.StatusCode.INVALID_ARGUMENT:
                self._uc.refused(code)
            await abort_async(context, err)
        except Exception:
            log.exception("unexpected failure")
            await abort_async(context, INTERNAL)

    async def Challenge(
        self, request: attestation_pb2.ChallengeRequest, context: Context
    ) -> attestation_pb2.ChallengeResponse:
        def call() -> attestation_pb2.ChallengeResponse:
            challenge, suites = self._uc.challenge(request.node_name)
            return attestation_pb2.ChallengeResponse(
                nonce=challenge.nonce,
                expires_at=codec.ts(challenge.expires_at),
                accepted_kem_suites=[codec.suite_out(s) for s in suites],
            )

        return await self._run(context, request, call)

    async def Register(
        self, request: attestation_pb2.RegisterRequest, context: Context
    ) -> attestation_pb2.AttestationResult:
        def call() -> attestation_pb2.AttestationResult:
            tls_key = _tls_key(request)  # checked first: a bad key records nothing
            return self._result(request, self._uc.register(codec.register_in(request)), tls_key)

        return await self._run(context, request, call)

    async def Renew(
        self, request: attestation_pb2.RenewRequest, context: Context
    ) -> attestation_pb2.AttestationResult:
        def call() -> attestation_pb2.AttestationResult:
            tls_key = _tls_key(request)
            return self._result(request, self._uc.renew(codec.renew_in(request)), tls_key)

        return await self._run(context, request, call)


class PeerIdentities:
    """Node client certificates already parsed, by their exact PEM bytes. Parsing is a pure function of
    those bytes and TLS verified the chain at the handshake, so a node's repeat calls skip the X.509
    parse; nothing about who may connect is cached."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._parsed: dict[bytes, node_certs.PeerIdentity] = {}

    def of(self, auth_context: Any) -> node_certs.PeerIdentity:
        pems = (auth_context or {}).get("x509_pem_cert") or []
        hit = self._parsed.get(pems[0]) if pems else None
        if hit is not None:
            return hit
        peer = node_certs.peer_identity(auth_context)  # no or a foreign certificate: raises, not kept
        if len(self._parsed) >= self._max:
            self._parsed.clear()
        self._parsed[pems[0]] = peer
        return peer


class KeyReleaseServicer(key_release_pb2_grpc.KeyReleaseServicer):
    """Decodes the request and the TLS client certificate, runs the release use case, encodes the
    answer. ``mutual_tls``: the call must carry a node client certificate (the KeyRelease port)."""

    def __init__(self, release: KeyRelease, *, mutual_tls: bool = False) -> None:
        self._uc = release
        self._mutual_tls = mutual_tls
        self._peers = PeerIdentities()

    async def ReleaseKey(
        self, request: key_release_pb2.ReleaseRequest, context: Context
    ) -> key_release_pb2.ReleaseResponse:
        if request is UNDECODABLE:
            await abort_async(context, NOT_PROTOBUF)
        try:
            try:
                signed = codec.release_in(request)
                peer = self._peers.of(context.auth_context()) if self._mutual_tls else None
            except KmsError as err:
                self._uc.refused(err.code.value)  # refused before the use case saw it
                raise
            return codec.released_out(await self._uc.release(signed, peer))
        except CODED as err:
            await abort_async(context, err)
        except Exception:
            log.exception("unexpected failure")
            await abort_async(context, INTERNAL)
