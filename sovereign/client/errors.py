"""``OperatorError``: every failed operator call, with the server's stable code read from the
``ErrorDetail`` trailer (``grpc-status-details-bin``, proto/README.md), or, for a call that never
reached the server's services, the transport code of ``proto.rpc_failure`` with a hint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import grpc

from attestation.coded import CodedError
from proto.contract import parse_error_detail
from proto.rpc_failure import Endpoint, TransportCode, transport_failure

OPERATOR_PORT = (
    "the operator port is serve's --admin-listen (default 127.0.0.1:8445): set --server or "
    "SOVEREIGN_ADMIN_ADDR (8443 is the node port, 8444 KeyRelease)"
)
MAX_CA_FILE = 1 << 20


class OperatorError(CodedError):
    """A refused or failed call: ``code`` is the server's reason (e.g. ``AUTH_SAME_APPROVER``), a
    ``TransportCode`` when the server was not reached (e.g. ``TLS_UNTRUSTED``), or the gRPC status
    name when the reply carried neither."""

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
    def from_rpc(cls, err: grpc.RpcError, endpoint: Endpoint | None = None) -> OperatorError:
        call: grpc.Call = err  # type: ignore[assignment]  # every RpcError raised by a stub is a Call
        status = call.code()
        details = str(call.details() or "")
        detail = parse_error_detail(call.trailing_metadata())
        if detail is not None:
            # The server's status message is "CODE: message" (kms.server.errors): the code is shown once.
            message = details.removeprefix(f"{detail.reason}: ")
            return cls(detail.reason, message, detail.hint, status.name, detail.metadata)
        failure = transport_failure(status, details, endpoint or Endpoint("", "operator", OPERATOR_PORT))
        if failure is not None:
            return cls(failure.code.value, failure.message, failure.hint, status.name)
        return cls(status.name, details, "", status.name)


def read_ca(path: Path) -> bytes:
    """The pinned CA file's bytes, refused early (TLS_CA_INVALID, naming the file) when unreadable or not
    PEM: gRPC would otherwise fail every handshake with an unrelated message."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CA_FILE + 1)
    except OSError as err:
        raise OperatorError(
            TransportCode.TLS_CA_INVALID.value,
            f"cannot read the CA file {path}: {err.strerror}",
            "give the control plane's CA certificate (PEM) with --ca or SOVEREIGN_CA",
        ) from None
    if len(data) > MAX_CA_FILE or b"-----BEGIN CERTIFICATE-----" not in data:
        raise OperatorError(
            TransportCode.TLS_CA_INVALID.value,
            f"the CA file {path} is not a PEM certificate",
            "give the control plane's CA certificate (PEM): serve's --tls-ca, or ca.pem in its --dev-tls folder",
        )
    return data
