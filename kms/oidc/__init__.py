"""Operator authentication (Keycloak access tokens), role-based authorisation and the two-person rule.

``tokens.TokenValidator`` checks a bearer token and yields an ``Actor``; ``roles.RoleMap`` says which
roles may call which Admin/Audit method; ``interceptor.OperatorAuthInterceptor`` applies both to every
operator RPC; ``two_person.TwoPersonRule`` holds chosen changes for a second operator; ``cache`` and
``login`` are the operator's side (``sovereign login``). See docs/keycloak.md.
"""

from kms.oidc.errors import AuthError, Code
from kms.oidc.tokens import Actor, TokenValidator, keycloak_validator

__all__ = ["Actor", "AuthError", "Code", "TokenValidator", "keycloak_validator"]
