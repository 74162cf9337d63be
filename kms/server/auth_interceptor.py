"""gRPC server interceptor: bearer token and role check for every Admin and Audit call.

Other services (Attestation, KeyRelease, health, reflection) pass through untouched: nodes authenticate
by hardware evidence and their Ed25519 signature instead. A refused call ends with UNAUTHENTICATED or
PERMISSION_DENIED and the ``grpc-status-details-bin`` trailer (``ErrorDetail.reason`` = the AUTH_* code,
built with kms.server.errors' ``details``); ``on_refused`` is told first so that the refusal is
audited (an authenticated actor's refusal) or counted (one without a valid token: ``actor`` None, see
kms.server.operator_audit). Only refusals of authenticated actors are logged here, one line per call;
the hook rate-limits the log of the others. An admitted call runs with its ``Actor`` in a contextvar
(``current_actor()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc

from kms.clock import Clock, system_clock
from kms.oidc.errors import AuthError, Code
from kms.oidc.roles import OPERATOR_SERVICES, RoleMap
from kms.oidc.tokens import Actor
from kms.server.errors import details
from proto.contract import TRAILER

log = logging.getLogger(__name__)

_CURRENT: ContextVar[Actor | None] = ContextVar("sovereign_operator", default=None)

RefusalHook = Callable[[Actor | None, str, AuthError], None]

_UNAUTHENTICATED = frozenset(
    {
        Code.AUTH_MISSING_TOKEN,
        Code.AUTH_MALFORMED_TOKEN,
        Code.AUTH_TOKEN_EXPIRED,
        Code.AUTH_TOKEN_NOT_YET_VALID,
        Code.AUTH_WRONG_ISSUER,
        Code.AUTH_WRONG_AUDIENCE,
        Code.AUTH_WRONG_TOKEN_TYPE,
        Code.AUTH_BAD_SIGNATURE,
        Code.AUTH_ALG_NOT_ALLOWED,
        Code.AUTH_UNKNOWN_KID,
    }
)
_STATUS = {
    Code.AUTH_CHANGE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.AUTH_CHANGE_NOT_PENDING: grpc.StatusCode.FAILED_PRECONDITION,
    Code.AUTH_CHANGE_EXPIRED: grpc.StatusCode.FAILED_PRECONDITION,
    Code.AUTH_PAYLOAD_MISMATCH: grpc.StatusCode.INTERNAL,
    Code.AUTH_JWKS_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.AUTH_JWKS_INVALID: grpc.StatusCode.UNAVAILABLE,
}


def status_for(code: Code) -> grpc.StatusCode:
    """Token problems are UNAUTHENTICATED; role, mapping and same-approver refusals PERMISSION_DENIED."""
    if code in _UNAUTHENTICATED:
        return grpc.StatusCode.UNAUTHENTICATED
    return _STATUS.get(code, grpc.StatusCode.PERMISSION_DENIED)


def abort(context: grpc.ServicerContext, err: AuthError) -> NoReturn:
    """End the call with the status and ErrorDetail trailer of ``err`` (servicers use it for two-person errors)."""
    status = status_for(err.code)
    context.set_trailing_metadata(((TRAILER, details(status, err.code.value, err.message[:1024], err.hint)),))
    context.abort(status, f"{err.code.value}: {err.message[:1024]}")
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def current_actor() -> Actor:
    """The operator of the Admin/Audit call being served. Outside one it is a programming error."""
    actor = _CURRENT.get()
    if actor is None:
        raise RuntimeError("current_actor() called outside an authenticated operator call")
    return actor


def bearer_token(metadata: Any) -> str | None:
    """The token of the single ``authorization: Bearer <token>`` entry; None if there is none."""
    values = [value for key, value in metadata or () if key.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, "more than one authorization header was sent")
    value = values[0]
    if not isinstance(value, str):
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, "the authorization header is not text")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(Code.AUTH_MALFORMED_TOKEN, "the authorization header is not 'Bearer <token>'")
    return token.strip()


class Validator(Protocol):
    def validate(self, token: str | None, *, now: Any) -> Actor: ...


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # the stubs are generic, the runtime class is not
    _Interceptor = grpc.ServerInterceptor


class OperatorAuthInterceptor(_Interceptor):
    def __init__(
        self,
        validator: Validator,
        roles: RoleMap,
        *,
        on_refused: RefusalHook | None = None,
        clock: Clock = system_clock,
        services: tuple[str, ...] = OPERATOR_SERVICES,
    ) -> None:
        self._validator = validator
        self._roles = roles
        self._on_refused = on_refused
        self._clock = clock
        self._prefixes = tuple(f"/{s}/" for s in services)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefixes):
            return handler
        return _wrap(handler, lambda context: self._admit(method, context))

    def admit(self, method: str, metadata: Any) -> Actor:
        """Authenticate and authorise one call; on refusal call the hook, then raise AuthError."""
        actor: Actor | None = None
        try:
            actor = self._validator.validate(bearer_token(metadata), now=self._clock())
            self._roles.authorize(actor, method)
        except AuthError as err:
            self._refused(actor, method, err)
            raise
        except Exception:  # an input nobody foresaw: refuse it, with its audit entry, never answer UNKNOWN
            log.exception("operator token check failed unexpectedly for %s", method)
            refusal = AuthError(Code.AUTH_MALFORMED_TOKEN, "the token could not be checked")
            self._refused(actor, method, refusal)
            raise refusal from None
        return actor

    def _admit(self, method: str, context: grpc.ServicerContext) -> Actor:
        try:
            return self.admit(method, context.invocation_metadata())
        except AuthError as err:
            abort(context, err)

    def _refused(self, actor: Actor | None, method: str, err: AuthError) -> None:
        if actor is not None:
            log.info("operator call refused: %s %s %s", method, actor.audit_id, err.code.value)
        if self._on_refused is None:
            return
        try:
            self._on_refused(actor, method, err)
        except Exception:
            # The refusal stands either way; a failing audit hook must not turn it into an admission.
            log.exception("on_refused hook failed for %s (%s)", method, err.code.value)


Admit = Callable[[grpc.ServicerContext], Actor]


def _unary(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        token = _CURRENT.set(admit(context))
        try:
            return behavior(request, context)
        finally:
            _CURRENT.reset(token)

    return run


def _streaming(behavior: Callable[..., Iterator[Any]], admit: Admit) -> Callable[..., Iterator[Any]]:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        token = _CURRENT.set(admit(context))
        try:
            yield from behavior(request, context)
        finally:
            _CURRENT.reset(token)

    return run


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], admit: Admit) -> grpc.RpcMethodHandler[Any, Any]:
    h: Any = handler
    kwargs = {"request_deserializer": h.request_deserializer, "response_serializer": h.response_serializer}
    if h.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(h.unary_unary, admit), **kwargs)
    if h.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(h.unary_stream, admit), **kwargs)
    if h.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(h.stream_unary, admit), **kwargs)
    return grpc.stream_stream_rpc_method_handler(_streaming(h.stream_stream, admit), **kwargs)
