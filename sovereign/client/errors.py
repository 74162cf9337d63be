"""``OperatorError``: every failed operator call, with the server's stable code read from the
``ErrorDetail`` trailer (``grpc-status-details-bin``, proto/README.md) and the gRPC status name."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from attestation.coded import CodedError
from proto.contract import parse_error_detail


class OperatorError(CodedError):
    """A refused or failed call: ``code`` is the server's reason (e.g. ``AUTH_SAME_APPROVER``), or the
    gRPC status name when the reply carried none (an unreachable server: ``UNAVAILABLE``)."""

    def __init__(
        self,
        code: str,
        message: str,
        hint: str = "",
        status: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code, message, hint)
        self.status = status
        self.metadata: dict[str, str] = dict(metadata or {})

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"status": self.status}

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> OperatorError:
        call: grpc.Call = err  # type: ignore[assignment]  # every RpcError raised by a stub is a Call
        status = call.code()
        detail = parse_error_detail(call.trailing_metadata())
        return cls(
            detail.reason if detail else status.name,
            str(call.details() or ""),
            detail.hint if detail else "",
            status.name,
            detail.metadata if detail else None,
        )
