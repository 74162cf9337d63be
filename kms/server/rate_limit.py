"""Per-peer rate limits on the node port: a token bucket per peer address, refusing RESOURCE_EXHAUSTED.

Anyone may call Challenge, Register and Renew: the evidence is what authenticates a node, and checking
it costs CPU, a nonce row and a database write. A bucket per peer *address* (the port is dropped: one
host opening many connections is one peer) holds at most ``burst`` calls and refills ``rate`` per
second; a call finding it empty is refused with ``RATE_LIMITED`` and counted like every other refusal
before authentication (``kms.usecases.metrics.Refusals``). KeyRelease is not limited here: it has its own port
behind mutual TLS with node certificates (with --insecure-dev it shares this port and stays exempt).

The buckets are kept least recently used first and at most ``max_peers`` of them: past that the oldest
is dropped (a dropped peer starts again with a full bucket, which needs that many other addresses).
A hand-written bucket rather than a library: the ones on PyPI either sleep until a token is free
(aiolimiter) or count windows instead of a bucket (limits), and this one is forty lines with its clock
passed in.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from kms.errors import Code, KmsError
from kms.server.errors import abort_async
from kms.usecases.metrics import Refusals

RATE_LIMITED = KmsError(
    "too many requests from this address",
    code=Code.RATE_LIMITED,
    hint="slow down and retry with backoff; the server's limit is set by --node-rate-limit/--node-rate-burst",
)
EXEMPT_PREFIXES = ("/sovereign.v1.KeyRelease/",)


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:...``)."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv6" and rest.startswith("["):
        return "ipv6:" + rest[: rest.find("]") + 1]
    if scheme == "ipv4":
        return "ipv4:" + rest.rpartition(":")[0]
    return peer  # unix sockets and anything unforeseen: the whole string


class TokenBuckets:
    """One token bucket per key; thread-safe; ``monotonic`` is the clock (seconds)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_peers: int = 65536,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("rate must be positive, burst and max_peers at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._max = max_peers
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def allow(self, key: str) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        with self._lock:
            now = self._monotonic()
            tokens, at = self._buckets.pop(key, (self._burst, now))
            tokens = min(self._burst, tokens + max(0.0, now - at) * self._rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return allowed


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the stubs are generic, the runtime class is not
    _Interceptor = grpc.aio.ServerInterceptor


class PeerRateLimit(_Interceptor):
    """An asyncio server interceptor applying ``TokenBuckets`` keyed by peer address to every call
    except those of ``EXEMPT_PREFIXES``."""

    def __init__(self, buckets: TokenBuckets, refusals: Refusals | None = None) -> None:
        self._buckets = buckets
        self._refusals = refusals

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self._buckets.allow(peer_address(context.peer())):
            return
        if self._refusals is not None:
            self._refusals.refused("node", Code.RATE_LIMITED.value)
        await abort_async(context, RATE_LIMITED)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        return self._wrap(handler)

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        h: Any = handler
        admit = self._admit
        kwargs = {
            "request_deserializer": h.request_deserializer,
            "response_serializer": h.response_serializer,
        }

        def unary(inner: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
            async def run(request: Any, context: Any) -> Any:
                await admit(context)
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result

            return run

        def streaming(inner: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
            async def run(request: Any, context: Any) -> AsyncIterator[Any]:
                await admit(context)
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):  # a coroutine that writes with context.write
                    await result
                else:
                    for item in result:
                        yield item

            return run

        if h.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(h.unary_unary), **kwargs)
        if h.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(h.stream_unary), **kwargs)
        if h.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(h.unary_stream), **kwargs)
        return grpc.stream_stream_rpc_method_handler(streaming(h.stream_stream), **kwargs)
