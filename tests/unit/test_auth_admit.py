"""The operator interceptor's admission, around a validator that fails in a way nobody foresaw: the call
is refused with a code and the refusal reaches the audit hook (never an UNKNOWN error, never admitted).
The validator here is a stand-in: what is under test is the interceptor's pure admission logic."""

from __future__ import annotations

from typing import Any

import pytest

from kms.oidc.errors import AuthError
from kms.oidc.roles import RoleMap
from kms.oidc.tokens import Actor
from kms.server.auth_interceptor import OperatorAuthInterceptor


class Exploding:
    def validate(self, token: str | None, *, now: Any) -> Actor:
        raise RecursionError("a parser gave up")


def test_an_unexpected_failure_in_the_token_check_is_a_coded_refusal() -> None:
    refused: list[tuple[Actor | None, str, str]] = []
    interceptor = OperatorAuthInterceptor(
        Exploding(), RoleMap.default(), on_refused=lambda a, m, e: refused.append((a, m, e.code.value))
    )
    with pytest.raises(AuthError) as info:
        interceptor.admit("/sovereign.v1.Admin/ListNodes", [("authorization", "Bearer x.y.z")])
    assert info.value.code.value == "AUTH_MALFORMED_TOKEN"
    assert refused == [(None, "/sovereign.v1.Admin/ListNodes", "AUTH_MALFORMED_TOKEN")]
