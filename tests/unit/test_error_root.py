"""One error root: every package's coded error derives from ``attestation.coded.CodedError`` with one shape."""

from __future__ import annotations

import pytest

from attestation.coded import CodedError, Reason
from attestation.errors import AttestationError, BindingError
from enclave.errors import NodeCode, NodeError
from enclave.resident import Refused
from enclave.workload.errors import WorkloadCode, WorkloadError
from kms.envelope.errors import EnvelopeError, StreamError
from kms.errors import Code, KmsError, reason_for
from kms.oidc.errors import AuthError
from kms.oidc.errors import Code as AuthCode
from kms.usecases.release import ReleaseDenied
from policies.errors import PolicyError
from sovereign.client.errors import OperatorError
from sovereign.console.backend import BackendError

ROOTS = [
    AttestationError,
    KmsError,
    AuthError,
    ReleaseDenied,
    EnvelopeError,
    NodeError,
    WorkloadError,
    PolicyError,
    OperatorError,
    Refused,
    BackendError,
]


@pytest.mark.parametrize("root", ROOTS, ids=lambda c: c.__name__)
def test_every_package_root_is_a_coded_error(root: type[Exception]) -> None:
    assert issubclass(root, CodedError)


SECRET = "s3cr3t-hint-material"


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (BindingError("nonce differs", hint=SECRET), "BINDING_MISMATCH"),
        (KmsError("nonce used", code=Code.NONCE_REPLAYED, hint=SECRET), "NONCE_REPLAYED"),
        (AuthError(AuthCode.AUTH_MISSING_TOKEN, "no token", hint=SECRET), "AUTH_MISSING_TOKEN"),
        (ReleaseDenied([Reason("RELEASE_NO_RULE", "no rule", SECRET)], denial_id=3), "RELEASE_NO_RULE"),
        (StreamError("bad chunk", hint=SECRET, chunk=2), "STREAM_MALFORMED"),
        (NodeError("gone", code=NodeCode.NODE_NOT_ATTESTED, hint=SECRET), "NODE_NOT_ATTESTED"),
        (WorkloadError("x", code=WorkloadCode.WORKLOAD_INPUT_INVALID, hint=SECRET), "WORKLOAD_INPUT_INVALID"),
        (PolicyError("bad toml", hint=SECRET, line=4), "POLICY_INVALID"),
        (
            OperatorError("AUTH_SAME_APPROVER", "same person", SECRET, "PERMISSION_DENIED"),
            "AUTH_SAME_APPROVER",
        ),
    ],
)
def test_one_shape_code_message_hint(err: CodedError, code: str) -> None:
    assert isinstance(err.code, str) and str(err.code) == code  # a StrEnum or a plain str: no .value needed
    assert str(err) == f"{code}: {err.message}"
    assert err.as_reason() == Reason(code, err.message, SECRET)
    assert {"code": code, "message": err.message, "hint": SECRET}.items() <= err.to_dict().items()
    assert SECRET not in repr(err) and repr(err).startswith(f"{type(err).__name__}(code='{code}'")


def test_release_denied_carries_reasons_not_dicts() -> None:
    first, second = reason_for(Code.KEY_DISABLED, "off"), Reason("RELEASE_EVIDENCE_TOO_OLD", "old")
    denied = ReleaseDenied([first, second], denial_id=7)
    assert denied.reasons == (first, second) and denied.code == "KEY_DISABLED"
    assert denied.hint == first.hint != "" and denied.audit_sequence == 7
