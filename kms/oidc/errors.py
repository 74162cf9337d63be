"""Operator authentication and authorisation errors.

Every refusal carries a stable code (the same string goes into the gRPC ``ErrorDetail.reason`` and the
audit entry of the refusal), a message saying what failed and a hint saying what to do. Messages never
contain tokens, only claim values that are not secret (issuer, audience, kid, subject, roles).
"""

from __future__ import annotations

from enum import StrEnum

from attestation.coded import CodedError


class Code(StrEnum):
    """Stable codes. Never rename: they are part of the wire and audit contract."""

    # Token (UNAUTHENTICATED)
    AUTH_MISSING_TOKEN = "AUTH_MISSING_TOKEN"  # noqa: S105 (an error code)
    AUTH_MALFORMED_TOKEN = "AUTH_MALFORMED_TOKEN"  # noqa: S105
    AUTH_TOKEN_EXPIRED = "AUTH_TOKEN_EXPIRED"  # noqa: S105
    AUTH_TOKEN_NOT_YET_VALID = "AUTH_TOKEN_NOT_YET_VALID"  # noqa: S105
    AUTH_WRONG_ISSUER = "AUTH_WRONG_ISSUER"
    AUTH_WRONG_AUDIENCE = "AUTH_WRONG_AUDIENCE"
    AUTH_WRONG_TOKEN_TYPE = "AUTH_WRONG_TOKEN_TYPE"  # noqa: S105
    AUTH_BAD_SIGNATURE = "AUTH_BAD_SIGNATURE"
    AUTH_ALG_NOT_ALLOWED = "AUTH_ALG_NOT_ALLOWED"
    AUTH_UNKNOWN_KID = "AUTH_UNKNOWN_KID"
    # Authorisation (PERMISSION_DENIED)
    AUTH_ROLE_MISSING = "AUTH_ROLE_MISSING"
    AUTH_METHOD_UNMAPPED = "AUTH_METHOD_UNMAPPED"
    AUTH_SAME_APPROVER = "AUTH_SAME_APPROVER"
    # Two-person rule
    AUTH_CHANGE_NOT_FOUND = "AUTH_CHANGE_NOT_FOUND"
    AUTH_CHANGE_NOT_PENDING = "AUTH_CHANGE_NOT_PENDING"
    AUTH_CHANGE_EXPIRED = "AUTH_CHANGE_EXPIRED"
    AUTH_PAYLOAD_MISMATCH = "AUTH_PAYLOAD_MISMATCH"
    # Configuration and key set
    AUTH_JWKS_UNAVAILABLE = "AUTH_JWKS_UNAVAILABLE"
    AUTH_JWKS_INVALID = "AUTH_JWKS_INVALID"
    AUTH_CONFIG_INVALID = "AUTH_CONFIG_INVALID"
    # Operator side (CLI token cache, login)
    AUTH_NOT_LOGGED_IN = "AUTH_NOT_LOGGED_IN"
    AUTH_CACHE_INSECURE = "AUTH_CACHE_INSECURE"
    AUTH_CACHE_INVALID = "AUTH_CACHE_INVALID"
    AUTH_LOGIN_FAILED = "AUTH_LOGIN_FAILED"
    AUTH_PROVIDER_UNAVAILABLE = "AUTH_PROVIDER_UNAVAILABLE"


_LOGIN = "sign in again: sovereign login --server-url URL --realm REALM --client-id CLIENT"

_DEFAULT_HINTS: dict[Code, str] = {
    Code.AUTH_MISSING_TOKEN: "send 'authorization: Bearer <access token>'; get one with: sovereign login",
    Code.AUTH_MALFORMED_TOKEN: "send the access token (a signed JWT) issued by the configured Keycloak realm",
    Code.AUTH_TOKEN_EXPIRED: _LOGIN,
    Code.AUTH_TOKEN_NOT_YET_VALID: "check the clocks of the identity provider and this server (NTP)",
    Code.AUTH_WRONG_ISSUER: "use a token from the realm this control plane trusts (see docs/keycloak.md)",
    Code.AUTH_WRONG_AUDIENCE: (
        "request the token with the control plane's client id, or add an audience mapper for it in Keycloak"
    ),
    Code.AUTH_WRONG_TOKEN_TYPE: "send the access token, not the ID or refresh token",
    Code.AUTH_BAD_SIGNATURE: "the token was not signed by the realm's keys; obtain a new one with sovereign login",
    Code.AUTH_ALG_NOT_ALLOWED: "configure the realm to sign access tokens with RS256 or ES256",
    Code.AUTH_UNKNOWN_KID: (
        "the realm's signing key is not known here; if the realm rotated keys, refresh the JWKS "
        "(air-gapped: update the JWKS file)"
    ),
    Code.AUTH_ROLE_MISSING: "ask a Keycloak administrator to grant the role named in the message",
    Code.AUTH_METHOD_UNMAPPED: "add the method to the role map of the control plane's configuration",
    Code.AUTH_SAME_APPROVER: "a different operator with the required role must approve this change",
    Code.AUTH_CHANGE_NOT_FOUND: "list pending changes with: sovereign admin pending list",
    Code.AUTH_CHANGE_NOT_PENDING: "the change was already approved, rejected or expired; propose it again",
    Code.AUTH_CHANGE_EXPIRED: "the change was not approved in time; propose it again",
    Code.AUTH_PAYLOAD_MISMATCH: "the stored change does not match what was proposed; investigate the database",
    Code.AUTH_JWKS_UNAVAILABLE: "check the Keycloak URL and realm, or configure a JWKS file for air-gapped sites",
    Code.AUTH_JWKS_INVALID: "the JWKS must hold RS256 (RSA >= 2048 bits) or ES256 (P-256) signing keys with a kid",
    Code.AUTH_CONFIG_INVALID: "fix the operator authentication settings named in the message (docs/keycloak.md)",
    Code.AUTH_NOT_LOGGED_IN: "sign in first: sovereign login --server-url URL --realm REALM --client-id CLIENT",
    Code.AUTH_CACHE_INSECURE: "the token cache must be private: chmod 600 on the file and 700 on its folder",
    Code.AUTH_CACHE_INVALID: "remove the cache (sovereign logout) and sign in again",
    Code.AUTH_LOGIN_FAILED: "check the user name, password, realm and client id",
    Code.AUTH_PROVIDER_UNAVAILABLE: "check --server-url (Keycloak base URL) and --realm, and that Keycloak is up",
}


class AuthError(CodedError):
    """An operator was not authenticated or not allowed. Carries a stable code and a hint."""

    code: Code

    def __init__(self, code: Code, message: str, *, hint: str | None = None) -> None:
        super().__init__(code, message, hint if hint is not None else _DEFAULT_HINTS.get(code, ""))
