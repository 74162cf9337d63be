"""What a failed call means when the server never answered it: the one reading of gRPC's transport
failures, shared by the node client (``enclave.client``) and the operator client (``sovereign.client``).

A call the server refused carries an ``ErrorDetail`` trailer with its own code (``proto.contract``); a call
that never reached a servicer carries only a gRPC status and C-core's text (connection refused, a TLS
handshake that failed, a port that serves other services). ``transport_failure`` turns those into a stable
code, a message without C-core's noise and a hint naming the likely fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import grpc


class TransportCode(StrEnum):
    SERVER_UNREACHABLE = "SERVER_UNREACHABLE"
    SERVER_NAME_UNKNOWN = "SERVER_NAME_UNKNOWN"
    SERVER_TIMEOUT = "SERVER_TIMEOUT"
    TLS_CA_INVALID = "TLS_CA_INVALID"
    TLS_UNTRUSTED = "TLS_UNTRUSTED"
    TLS_NOT_SPOKEN = "TLS_NOT_SPOKEN"
    TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"
    WRONG_ENDPOINT = "WRONG_ENDPOINT"


@dataclass(frozen=True)
class TransportFailure:
    code: TransportCode
    message: str
    hint: str


@dataclass(frozen=True)
class Endpoint:
    """Who was called, for the messages: ``target`` (HOST:PORT), ``service`` (e.g. ``Admin``) and
    ``where`` (which server option serves it and how the caller sets the address)."""

    target: str
    service: str
    where: str


def _reason(details: str) -> str:
    """The last, most specific part of C-core's text, without its trailing ``: OK``."""
    text = details.removesuffix(": OK")
    return text.rsplit("SSL routines:OPENSSL_internal:", 1)[-1][:200]


def transport_failure(status: grpc.StatusCode, details: str, endpoint: Endpoint) -> TransportFailure | None:
    """The meaning of a call that failed before a servicer answered; None for any other failure."""
    at = endpoint.target or "the server"
    if status is grpc.StatusCode.UNIMPLEMENTED:
        return TransportFailure(
            TransportCode.WRONG_ENDPOINT,
            f"{at} does not serve the {endpoint.service} service (UNIMPLEMENTED): another port was called",
            f"{endpoint.where}",
        )
    if status is grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransportFailure(
            TransportCode.SERVER_TIMEOUT,
            f"{at} did not answer in time",
            f"check that the control plane is up and reachable; {endpoint.where}",
        )
    if status is not grpc.StatusCode.UNAVAILABLE:
        return None
    if "Failed to create security handshaker" in details or "root certificate" in details:
        return TransportFailure(
            TransportCode.TLS_CA_INVALID,
            "the pinned CA could not be loaded: it is not a PEM certificate",
            "pin the control plane's CA certificate (PEM): serve's --tls-ca, or ca.pem in its --dev-tls folder",
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return TransportFailure(
            TransportCode.TLS_UNTRUSTED,
            f"{at}'s TLS certificate does not chain to the pinned CA ({_reason(details)})",
            "pin the CA that issued the server's certificate: serve's --tls-ca, or ca.pem in its --dev-tls folder",
        )
    if "WRONG_VERSION_NUMBER" in details:
        return TransportFailure(
            TransportCode.TLS_NOT_SPOKEN,
            f"{at} does not speak TLS",
            "a server run with --insecure-dev is plaintext: pass --insecure (development only), or call "
            f"its TLS port; {endpoint.where}",
        )
    if "Peer name" in details:
        return TransportFailure(
            TransportCode.TLS_UNTRUSTED,
            f"{at}'s TLS certificate does not name the host called ({_reason(details)})",
            "call the server by a name its certificate carries (e.g. 127.0.0.1 or localhost for a dev CA)",
        )
    if "handshake" in details.lower() or "SSL_ERROR" in details or "TSI_" in details:
        return TransportFailure(
            TransportCode.TLS_HANDSHAKE_FAILED,
            f"the TLS handshake with {at} failed ({_reason(details)})",
            f"check the pinned CA and that this is the server's TLS port; {endpoint.where}",
        )
    if "resolv" in details or "Domain name not found" in details or "DNS" in details:
        return TransportFailure(
            TransportCode.SERVER_NAME_UNKNOWN,
            f"cannot resolve the host name of {at}",
            f"check the host name in the address; {endpoint.where}",
        )
    return TransportFailure(
        TransportCode.SERVER_UNREACHABLE,
        f"cannot reach {at}"
        + (": connection refused" if "refused" in details.lower() else f" ({_reason(details)})"),
        f"is the control plane running and listening there? {endpoint.where}",
    )
