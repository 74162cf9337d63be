"""``RecordOutput`` on the release port (mutual TLS): decode, run ``kms.usecases.outputs.OutputRecorder`` in the
pool (a database write), encode the ledger sequence or the coded error. Registered as its own generic
handler for the KeyRelease service, next to ReleaseKey's."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from kms.errors import KmsError
from kms.server.errors import INTERNAL, abort_async
from kms.server.node_servicers import NOT_PROTOBUF, UNDECODABLE, PeerIdentities, _lenient
from kms.usecases.outputs import OutputRecorder
from proto.sovereign.v1 import key_release_pb2

log = logging.getLogger("sovereign.server")
Context = grpc.aio.ServicerContext[Any, Any]


class OutputServicer:
    def __init__(self, recorder: OutputRecorder, pool: ThreadPoolExecutor, *, mutual_tls: bool) -> None:
        self._recorder = recorder
        self._pool = pool
        self._mutual_tls = mutual_tls
        self._peers = PeerIdentities()

    async def RecordOutput(
        self, request: key_release_pb2.RecordOutputRequest, context: Context
    ) -> key_release_pb2.RecordOutputResponse:
        if request is UNDECODABLE:
            await abort_async(context, NOT_PROTOBUF)
        try:
            peer = self._peers.of(context.auth_context()) if self._mutual_tls else None
            body, signature = bytes(request.body), bytes(request.signature)
            sequence = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._recorder.record, body, signature, peer
            )
            return key_release_pb2.RecordOutputResponse(audit_sequence=sequence)
        except KmsError as err:
            await abort_async(context, err)
        except Exception:
            log.exception("unexpected failure")
            await abort_async(context, INTERNAL)


def add_output_service(server: grpc.aio.Server, servicer: OutputServicer) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.RecordOutput,
        request_deserializer=_lenient(key_release_pb2.RecordOutputRequest),
        response_serializer=lambda m: m.SerializeToString(),
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("sovereign.v1.KeyRelease", {"RecordOutput": handler}),)
    )
