"""Node-facing servicers on the asyncio gRPC server: Attestation and KeyRelease.

KeyRelease runs its checks and sealing on the event loop and awaits the batched unwrap + grant commit,
so 64 concurrent releases need no 64 parked threads (with the GIL, thread hand-offs cost more than the
work). Attestation (CPU-heavy evidence verification, database writes) runs in a small thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from attestation.errors import AttestationError
from kms.attest import Attestation
from kms.errors import Code, KmsError
from kms.release import Denial, KeyRelease, ReleaseDenied
from kms.server import codec
from kms.server.errors import INTERNAL, abort_async
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
    server: grpc.aio.Server, attestation: AttestationServicer, release: KeyReleaseServicer
) -> None:
    """Register both node services (their generated ``add_*`` helpers, with lenient request parsing)."""
    methods: dict[str, dict[str, tuple[Any, Any]]] = {
        "sovereign.v1.Attestation": {
            "Challenge": (attestation.Challenge, attestation_pb2.ChallengeRequest),
            "Register": (attestation.Register, attestation_pb2.RegisterRequest),
            "Renew": (attestation.Renew, attestation_pb2.RenewRequest),
        },
        "sovereign.v1.KeyRelease": {"ReleaseKey": (release.ReleaseKey, key_release_pb2.ReleaseRequest)},
    }
    for service, table in methods.items():
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=_lenient(cls), response_serializer=lambda m: m.SerializeToString()
            )
            for name, (fn, cls) in table.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


class AttestationServicer(attestation_pb2_grpc.AttestationServicer):
    def __init__(self, attestation: Attestation, pool: ThreadPoolExecutor) -> None:
        self._uc = attestation
        self._pool = pool

    async def _run(self, context: Context, request: Any, fn: Callable[[], T]) -> T:
        if request is UNDECODABLE:
            await abort_async(context, NOT_PROTOBUF)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except CODED as err:
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
        return await self._run(
            context, request, lambda: codec.outcome_out(self._uc.register(codec.register_in(request)))
        )

    async def Renew(
        self, request: attestation_pb2.RenewRequest, context: Context
    ) -> attestation_pb2.AttestationResult:
        return await self._run(
            context, request, lambda: codec.outcome_out(self._uc.renew(codec.renew_in(request)))
        )


class KeyReleaseServicer(key_release_pb2_grpc.KeyReleaseServicer):
    def __init__(self, release: KeyRelease) -> None:
        self._uc = release

    async def ReleaseKey(
        self, request: key_release_pb2.ReleaseRequest, context: Context
    ) -> key_release_pb2.ReleaseResponse:
        started = time.perf_counter()
        if request is UNDECODABLE:
            await abort_async(context, NOT_PROTOBUF)
        try:
            signed = codec.release_in(request)
            try:
                prepared = self._uc.prepare(signed)
            except Denial as denial:
                denial_id = await asyncio.wrap_future(self._uc.record_future(denial))
                raise self._uc.denied(denial, denial_id) from None
            outcome = await asyncio.wrap_future(self._uc.submit(prepared))
            return codec.released_out(self._uc.finish(prepared, outcome))
        except CODED as err:
            self._uc.count_denial(str(getattr(err.code, "value", err.code)))
            await abort_async(context, err)
        except Exception:
            log.exception("unexpected failure")
            await abort_async(context, INTERNAL)
        finally:
            self._uc.observe(started)
