"""Map coded errors to gRPC statuses with the ``grpc-status-details-bin`` trailer (proto/README.md).

The trailer holds an ``ErrorStatus`` (wire-identical to google.rpc.Status) with exactly one ``Any`` that
packs an ``ErrorDetail`` whose ``reason`` is the stable code; ``proto.contract`` packs it here and parses
it on the nodes and operator clients. Messages never carry secrets: they are the
coded errors' own messages, which are written to be safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import grpc

from attestation.coded import CodedError
from attestation.errors import Code as AttestationCode
from kms.errors import Code as KmsCode
from kms.errors import KmsError
from kms.usecases.release import ReleaseDenied
from policies.errors import Code as PolicyCode
from proto.contract import TRAILER, pack_error_status

SC = grpc.StatusCode

_STATUS: dict[str, grpc.StatusCode] = {
    **dict.fromkeys(
        (
            KmsCode.REQUEST_INVALID,
            KmsCode.REQUEST_NOT_CANONICAL,
            KmsCode.KEY_NAME_INVALID,
            KmsCode.KEY_WRONG_KIND,
            PolicyCode.POLICY_INVALID,
            AttestationCode.COLLATERAL_MALFORMED,
            AttestationCode.COLLATERAL_REJECTED,
            AttestationCode.COLLATERAL_BUNDLE_INVALID,
        ),
        SC.INVALID_ARGUMENT,
    ),
    **dict.fromkeys(
        (
            KmsCode.NODE_NOT_FOUND,
            KmsCode.KEY_NOT_FOUND,
            KmsCode.KEY_VERSION_NOT_FOUND,
            KmsCode.PROVENANCE_OUTPUT_NOT_FOUND,
        ),
        SC.NOT_FOUND,
    ),
    KmsCode.KEY_EXISTS: SC.ALREADY_EXISTS,
    KmsCode.RATE_LIMITED: SC.RESOURCE_EXHAUSTED,
    KmsCode.RELEASE_CLIENT_CERT_MISSING: SC.UNAUTHENTICATED,
    **dict.fromkeys((KmsCode.NODE_TLS_KEY_INVALID, KmsCode.NODE_KEM_KEY_INVALID), SC.INVALID_ARGUMENT),
    **dict.fromkeys((KmsCode.POLICY_VERSION_CONFLICT, KmsCode.STORAGE_CONFLICT), SC.ABORTED),
    **dict.fromkeys(
        (
            PolicyCode.RELEASE_NODE_NOT_ATTESTED,
            PolicyCode.RELEASE_LEASE_EXPIRED,
            KmsCode.RELEASE_NODE_CHANGED,
            KmsCode.KEY_DISABLED,
            KmsCode.KEY_DESTROYED,
            KmsCode.NODE_TRANSITION_INVALID,
            KmsCode.NODE_GROUPS_NOT_ELIGIBLE,
            KmsCode.NODE_EVIDENCE_FAILS_POLICY,
            KmsCode.KMS_NOT_BOOTSTRAPPED,
            KmsCode.KMS_PERMISSION_DENIED,
            KmsCode.KMS_DECRYPT_FAILED,
            KmsCode.SERVER_CONFIG_INVALID,
            AttestationCode.COLLATERAL_STORE_ERROR,
        ),
        SC.FAILED_PRECONDITION,
    ),
    **dict.fromkeys(
        (
            KmsCode.KMS_UNAVAILABLE,
            KmsCode.KMS_SEALED,
            KmsCode.KMS_TOKEN_EXPIRED,
            KmsCode.KMS_AUTH_FAILED,
            KmsCode.SERVER_OVERLOADED,
            KmsCode.STORAGE_ERROR,
            KmsCode.PROVENANCE_NOT_CHECKPOINTED,
            KmsCode.PROVENANCE_SIGNER_FAILED,
        ),
        SC.UNAVAILABLE,
    ),
    **dict.fromkeys(
        (KmsCode.INTERNAL_ERROR, KmsCode.KMS_BAD_RESPONSE, KmsCode.KMS_ERROR, KmsCode.STORAGE_SCHEMA_TOO_NEW),
        SC.INTERNAL,
    ),
}


def status_for(code: str) -> grpc.StatusCode:
    """Denials (policy, signature, replay, skew, ...) default to PERMISSION_DENIED."""
    return _STATUS.get(code, SC.PERMISSION_DENIED)


def domain_of(code: str) -> str:
    if code in AttestationCode.__members__:
        return "attestation"
    if code in PolicyCode.__members__:
        return "policies"
    return "kms"


def details(
    status: grpc.StatusCode, code: str, message: str, hint: str, metadata: Mapping[str, str] | None = None
) -> bytes:
    return pack_error_status(
        status.value[0], code, domain=domain_of(code), message=message, hint=hint, metadata=metadata
    )


def describe(err: CodedError) -> tuple[str, str, str, dict[str, str]]:
    """(code, message, hint, metadata) of any coded error."""
    code = str(err.code)
    metadata: dict[str, str] = {}
    if isinstance(err, ReleaseDenied):
        if err.denial_id:
            metadata["denial_id"] = str(err.denial_id)
        for i, reason in enumerate(err.reasons[1:8], start=1):
            metadata[f"reason_{i}"] = reason.code
    return code, err.message[:1024], err.hint or "", metadata


def failure(err: CodedError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """(status, status message, trailing metadata with the ErrorStatus) for a coded error."""
    code, message, hint, metadata = describe(err)
    status = status_for(code)
    text = f"{code}: {message}"  # ErrorStatus.message equals the call's status message
    return status, text, ((TRAILER, details(status, code, text, hint, metadata)),)


INTERNAL = KmsError("internal error; see the server log", code=KmsCode.INTERNAL_ERROR)


def abort(context: grpc.ServicerContext, err: CodedError) -> NoReturn:
    status, message, trailer = failure(err)
    context.set_trailing_metadata(trailer)
    context.abort(status, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


async def abort_async(context: grpc.aio.ServicerContext[Any, Any], err: CodedError) -> NoReturn:
    status, message, trailer = failure(err)
    await context.abort(status, message, trailing_metadata=trailer)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
