"""Coded errors become gRPC statuses with an ErrorStatus trailer whose single ErrorDetail carries the code."""

from __future__ import annotations

import grpc
import pytest

from attestation.coded import Reason
from attestation.errors import BindingError
from kms.errors import Code, KmsError
from kms.server.errors import domain_of, failure, status_for
from kms.usecases.release import ReleaseDenied
from policies.errors import Code as PolicyCode
from policies.errors import PolicyError
from proto.contract import TRAILER, parse_error_detail
from proto.sovereign.v1 import common_pb2


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("REQUEST_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
        ("REQUEST_NOT_CANONICAL", grpc.StatusCode.INVALID_ARGUMENT),
        ("KEY_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        ("NODE_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        ("RELEASE_LEASE_EXPIRED", grpc.StatusCode.FAILED_PRECONDITION),
        ("KEY_DISABLED", grpc.StatusCode.FAILED_PRECONDITION),
        ("KMS_UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
        ("POLICY_VERSION_CONFLICT", grpc.StatusCode.ABORTED),
        ("REQUEST_REPLAYED", grpc.StatusCode.PERMISSION_DENIED),
        ("RELEASE_PURPOSE_NOT_ALLOWED", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_status_mapping(code: str, status: grpc.StatusCode) -> None:
    assert status_for(code) is status


def test_domains() -> None:
    assert domain_of("BINDING_MISMATCH") == "attestation"
    assert domain_of("RELEASE_NO_RULE") == "policies"
    assert domain_of("NONCE_REPLAYED") == "kms"


@pytest.mark.parametrize(
    "err",
    [
        KmsError("nonce used", code=Code.NONCE_REPLAYED, hint="get a fresh one"),
        BindingError("report data differs"),
        PolicyError("bad toml"),
        ReleaseDenied(
            [Reason(PolicyCode.RELEASE_NO_RULE.value, "no rule"), Reason("RELEASE_EVIDENCE_TOO_OLD", "old")],
            denial_id=12,
        ),
    ],
)
def test_trailer_round_trip(err: KmsError | BindingError | PolicyError | ReleaseDenied) -> None:
    status, message, trailer = failure(err)
    ((key, value),) = trailer
    assert key == TRAILER
    decoded = common_pb2.ErrorStatus.FromString(value)
    assert decoded.code == status.value[0] and decoded.message == message and len(decoded.details) == 1
    assert decoded.details[0].type_url == "type.googleapis.com/sovereign.v1.ErrorDetail"
    detail = parse_error_detail(trailer)
    assert detail is not None
    code = str(err.code)
    assert detail.reason == code and message.startswith(code)
    if isinstance(err, ReleaseDenied):
        assert (
            detail.metadata["denial_id"] == "12" and detail.metadata["reason_1"] == "RELEASE_EVIDENCE_TOO_OLD"
        )
