"""Operators of the e2e tests: users of the Keycloak stand-in (tests/oidc) signing in for real.

``StandinRealm`` is the ``e2e.world.Realm`` of the stand-in: the server fetches the realm's keys from
it at start, and ``token(username)`` signs in with the password grant through ``kms.oidc.login`` (the
code behind ``sovereign login``). ``operator_token`` is the same for callers outside the tests (the
demo): start the stand-in with ``oidc.provider.start()`` and ask for a token of one of its users
(alice, bob: admin + key custodian; carol: auditor; dave: read-only operator; erin: no role).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from oidc.provider import CLIENT_ID, REALM, Standin, password_of

from kms.oidc.login import openid_client, password_login


def operator_token(standin: Standin, username: str, realm: str = REALM) -> str:
    """An access token for ``username`` from the stand-in, by the password grant."""
    openid = openid_client(standin.server_url, realm, CLIENT_ID)
    return password_login(openid, username, password_of(username), now=datetime.now(UTC)).access_token


@dataclass(frozen=True)
class StandinRealm:
    standin: Standin
    realm: str = REALM

    @property
    def issuer(self) -> str:
        return self.standin.issuer(self.realm)

    @property
    def jwks_file(self) -> Path | None:
        return None

    def token(self, username: str) -> str:
        return operator_token(self.standin, username, self.realm)
