"""Node-facing servicers on the asyncio gRPC server: Attestation and KeyRelease.

KeyRelease runs its checks and sealing on the event loop and awaits the batched unwrap + grant commit,
so 64 concurrent releases need no 64 parked threads (with the GIL, thread hand-offs cost more than the
work). Attestation (CPU-heavy evidence verification, database writes) runs in a small thread pool.

Mutual TLS: an ATTESTED Register/Renew that carries a client TLS key (signed by the node's attested
Ed25519 key over the request nonce) is answered with a short-lived client certificate from the node CA
(``kms.server.node_certs``). KeyRelease is served on its own port whose TLS requires such a certificate;
the servicer then requires that the certificate names the node of the signed body and carries the key
that verified its signature, else RELEASE_CLIENT_CERT_MISMATCH (recorded as a denial).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from attestation.errors import AttestationError
from kms.attest import Attestation, AttestationOutcome, Outcome
from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.release import Denial, KeyRelease, Prepared, ReleaseDenied, SignedRelease
from kms.server import codec, node_certs
from kms.server.errors import INTERNAL, abort_async, status_for
from kms.storage.decisions import DenialRow
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
            code = str(getattr(err.code, "value", err.code))
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
    """``clock`` set: mutual TLS is required (the node client certificate must match the signer)."""

    def __init__(self, release: KeyRelease, clock: Clock | None = None) -> None:
        self._uc = release
        self._clock = clock
        self._peers = PeerIdentities()

    def _peer_mismatch(
        self, context: Context, signed: SignedRelease, signing_public: bytes | None
    ) -> Denial | None:
        """A denial to record when the client certificate belongs to another node (or other keys)."""
        if self._clock is None:
            return None
        peer = self._peers.of(context.auth_context())  # no certificate: refused, not recorded
        try:
            node_certs.check_peer(peer, signed.fields.node_id, signing_public or peer.signing_public)
        except KmsError as err:
            f = signed.fields
            row = DenialRow(
                self._clock(), f.node_id, f.key_name, f.purpose, f.request_id, err.code.value, err.message
            )
            return Denial([err.to_dict()], row)
        return None

    async def _checked(self, context: Context, signed: SignedRelease, *, fresh: bool) -> Prepared:
        """The use case's checks plus the client certificate's; a denial is recorded, then raised."""
        try:
            prepared = self._uc.prepare(signed, fresh=fresh)  # verifies the body's signature first
            mismatch = self._peer_mismatch(context, signed, prepared.node.signing_public)
            if mismatch is not None:
                raise mismatch
            return prepared
        except Denial as denial:
            denial = self._peer_mismatch(context, signed, None) or denial
            denial_id = await asyncio.wrap_future(self._uc.record_future(denial))
            raise self._uc.denied(denial, denial_id) from None

    async def ReleaseKey(
        self, request: key_release_pb2.ReleaseRequest, context: Context
    ) -> key_release_pb2.ReleaseResponse:
        started = time.perf_counter()
        if request is UNDECODABLE:
            await abort_async(context, NOT_PROTOBUF)
        try:
            signed = codec.release_in(request)
            prepared = await self._checked(context, signed, fresh=False)
            outcome = await self._uc.submit_async(prepared)
            if self._uc.lease_changed(outcome):  # renewed since the cached read: check again, once
                prepared = await self._checked(context, signed, fresh=True)
                outcome = await self._uc.submit_async(prepared)
            return codec.released_out(self._uc.finish(prepared, outcome))
        except CODED as err:
            self._uc.count_denial(str(getattr(err.code, "value", err.code)))
            await abort_async(context, err)
        except Exception:
            log.exception("unexpected failure")
            await abort_async(context, INTERNAL)
        finally:
            self._uc.observe(started)
