"""OpenID Connect authorization code flow with PKCE (RFC 7636, S256) against a Keycloak-layout realm."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

import requests

from kms.oidc.errors import AuthError, Code


@dataclass(frozen=True)
class Realm:
    issuer: str  # https://keycloak/realms/NAME, as tokens carry it
    client_id: str
    server_url: str = ""  # where the console reaches the realm, if not the issuer's host
    ca_file: str = ""

    @property
    def _base(self) -> str:
        if not self.server_url:
            return self.issuer.rstrip("/")
        realm = self.issuer.rstrip("/").rpartition("/realms/")[2]
        return f"{self.server_url.rstrip('/')}/realms/{realm}"

    @property
    def authorization_endpoint(self) -> str:
        # The browser goes here: always the public issuer URL.
        return f"{self.issuer.rstrip('/')}/protocol/openid-connect/auth"

    @property
    def token_endpoint(self) -> str:
        return f"{self._base}/protocol/openid-connect/token"


def new_verifier() -> str:
    return secrets.token_urlsafe(64)[:96]


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(realm: Realm, *, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
    query = {
        "response_type": "code",
        "client_id": realm.client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid profile",
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge_of(verifier),
        "code_challenge_method": "S256",
        "prompt": "login",  # a console session always starts with the password typed (fresh sign-in)
    }
    return f"{realm.authorization_endpoint}?{urlencode(query)}"


def exchange_code(realm: Realm, *, code: str, redirect_uri: str, verifier: str, timeout: float = 10.0) -> str:
    """The access token for ``code``; any failure is an ``AuthError`` that names no secret."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": realm.client_id,
        "code_verifier": verifier,
    }
    try:
        response = requests.post(
            realm.token_endpoint,
            data=form,
            timeout=timeout,
            verify=realm.ca_file or True,
            allow_redirects=False,
        )
        body = json.loads(response.text)
    except (requests.RequestException, ValueError, RecursionError) as exc:
        raise AuthError(
            Code.AUTH_PROVIDER_UNAVAILABLE,
            f"the realm's token endpoint did not answer ({type(exc).__name__})",
            hint="check that the realm is reachable from the control plane",
        ) from None
    token = body.get("access_token") if isinstance(body, dict) and response.status_code == 200 else None
    if not isinstance(token, str) or not token:
        error = body.get("error", "") if isinstance(body, dict) else ""
        raise AuthError(Code.AUTH_LOGIN_FAILED, f"the realm refused the sign-in code ({str(error)[:64]})")
    return token
