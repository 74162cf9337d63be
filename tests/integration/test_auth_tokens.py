"""TokenValidator against a real OpenID Connect provider serving Keycloak's layout (tests/oidc)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from keycloak import KeycloakOpenID
from oidc import forge
from oidc.provider import CLIENT_ID, OTHER_REALM, REALM, Standin, keycloak_fixture, password_of  # noqa: F401

from kms.oidc.errors import AuthError, Code
from kms.oidc.jwks import FileJwks, parse_keyset
from kms.oidc.tokens import TokenValidator, keycloak_validator

pytestmark = pytest.mark.integration


def now() -> datetime:
    return datetime.now(UTC)


def openid(keycloak: Standin, realm: str = REALM, client_id: str = CLIENT_ID) -> KeycloakOpenID:
    return KeycloakOpenID(server_url=keycloak.server_url, realm_name=realm, client_id=client_id)


def password_token(keycloak: Standin, username: str, realm: str = REALM, client_id: str = CLIENT_ID) -> str:
    return str(openid(keycloak, realm, client_id).token(username, password_of(username))["access_token"])


_shared: dict[str, TokenValidator] = {}


def validator(keycloak: Standin, **options: object) -> TokenValidator:
    """A validator with its own key fetch when options are given, else one shared per provider."""
    if options:
        return keycloak_validator(keycloak.server_url, REALM, CLIENT_ID, **options)  # type: ignore[arg-type]
    if keycloak.server_url not in _shared:
        _shared[keycloak.server_url] = keycloak_validator(keycloak.server_url, REALM, CLIENT_ID)
    return _shared[keycloak.server_url]


def refused(v: TokenValidator, token: str | None, code: Code, at: datetime | None = None) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.validate(token, now=at or now())
    assert info.value.code is code, info.value
    assert info.value.hint
    return info.value


def test_unchanged_keycloak_openid_gets_a_token_that_validates(keycloak: Standin) -> None:
    client = openid(keycloak)
    response = client.token("alice", password_of("alice"))
    assert response["token_type"] == "Bearer"
    # python-keycloak's own decode with the realm's keys (fetched by it) accepts the provider's token.
    assert client.decode_token(response["access_token"])["preferred_username"] == "alice"

    actor = validator(keycloak).validate(response["access_token"], now=now())
    assert actor.username == "alice"
    assert actor.realm == REALM
    assert actor.issuer == keycloak.issuer()
    assert actor.client_id == CLIENT_ID
    assert {"sovereign-admin", "sovereign-key-custodian"} <= actor.roles
    userinfo: dict[str, str] = client.userinfo(response["access_token"])  # type: ignore[assignment]
    assert actor.subject == userinfo["sub"]
    assert actor.audit_id == f"operator:{actor.subject}"
    assert "access_token" not in repr(actor) and response["access_token"] not in repr(actor)


def test_client_roles_of_own_client_count_and_others_do_not(keycloak: Standin) -> None:
    frank = validator(keycloak).validate(password_token(keycloak, "frank"), now=now())
    assert "sovereign-key-custodian" in frank.roles
    assert frank.client_roles["sovereign"] == frozenset({"sovereign-key-custodian"})
    # The same role granted on another client is not a role here.
    other_client = keycloak.mint(
        claims={"resource_access": {"other-app": {"roles": ["sovereign-admin"]}}}, username="erin"
    )
    assert "sovereign-admin" not in validator(keycloak).validate(other_client, now=now()).roles


def test_es256_tokens_are_accepted_and_the_enc_key_is_skipped(keycloak: Standin) -> None:
    v = validator(keycloak)
    assert v.validate(keycloak.mint(alg="ES256"), now=now()).username == "alice"
    assert v.keys.kids == {f"{REALM}-rs256", f"{REALM}-es256"}  # RSA-OAEP enc key left out


def test_keys_are_fetched_once_and_refreshed_only_for_unknown_kid_rate_limited(keycloak: Standin) -> None:
    certs = f"/realms/{REALM}/protocol/openid-connect/certs"
    before = keycloak.hits(certs)
    v = keycloak_validator(keycloak.server_url, REALM, CLIENT_ID, refresh_interval=timedelta(minutes=5))
    assert keycloak.hits(certs) == before + 1
    genuine = password_token(keycloak, "alice")
    for _ in range(5):
        v.validate(genuine, now=now())
    assert keycloak.hits(certs) == before + 1, "keys must not be fetched per request"

    t0 = now()
    for _ in range(5):
        refused(v, forge.own_key(genuine, kid="rotated-kid"), Code.AUTH_UNKNOWN_KID, at=t0)
    assert keycloak.hits(certs) == before + 2, "one refresh per interval, however many unknown kids"
    refused(v, forge.own_key(genuine, kid="rotated-kid"), Code.AUTH_UNKNOWN_KID, at=t0 + timedelta(minutes=6))
    assert keycloak.hits(certs) == before + 3
    assert v.keys.refreshes == 2


def test_foreign_issuer_never_triggers_a_refresh(keycloak: Standin) -> None:
    certs = f"/realms/{REALM}/protocol/openid-connect/certs"
    v = keycloak_validator(keycloak.server_url, REALM, CLIENT_ID)
    before = keycloak.hits(certs)
    refused(v, password_token(keycloak, "alice", realm=OTHER_REALM), Code.AUTH_WRONG_ISSUER)
    assert keycloak.hits(certs) == before


def test_air_gapped_jwks_file_and_rotation_by_replacing_the_file(keycloak: Standin, tmp_path: Path) -> None:
    certs = openid(keycloak).certs()
    es_only = {"keys": [k for k in certs["keys"] if k["kid"].endswith("es256")]}
    jwks_file = tmp_path / "realm-jwks.json"
    jwks_file.write_text(json.dumps(es_only))
    # Only the ES256 key is in the file: the RS256 token below proves nothing else is consulted.
    v = TokenValidator(
        keycloak.issuer(), CLIENT_ID, jwks_source=FileJwks(jwks_file), refresh_interval=timedelta(0)
    )
    assert v.validate(keycloak.mint(alg="ES256"), now=now()).username == "alice"
    rs256 = password_token(keycloak, "bob")
    refused(v, rs256, Code.AUTH_UNKNOWN_KID)
    jwks_file.write_text(json.dumps(certs))  # the operator drops in the rotated set
    assert v.validate(rs256, now=now()).username == "bob"


def test_unusable_key_sets_fail_closed_at_start(tmp_path: Path) -> None:
    with pytest.raises(AuthError) as info:
        parse_keyset({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]})
    assert info.value.code is Code.AUTH_JWKS_INVALID
    missing = tmp_path / "absent.json"
    with pytest.raises(AuthError) as info:
        TokenValidator("https://kc.example/realms/r", "sovereign", jwks_source=FileJwks(missing))
    assert info.value.code is Code.AUTH_JWKS_UNAVAILABLE
    with pytest.raises(AuthError) as info:
        keycloak_validator("http://127.0.0.1:9/", "sovereign", "sovereign", timeout=2)
    assert info.value.code is Code.AUTH_JWKS_UNAVAILABLE


# --- the attacks of the issue, each refused with its own code -------------------------------------------


def test_missing_token(keycloak: Standin) -> None:
    refused(validator(keycloak), None, Code.AUTH_MISSING_TOKEN)
    refused(validator(keycloak), "", Code.AUTH_MISSING_TOKEN)
    refused(validator(keycloak), "not-a-jwt", Code.AUTH_MALFORMED_TOKEN)


def test_expired(keycloak: Standin) -> None:
    t = int(time.time())
    err = refused(
        validator(keycloak), keycloak.mint(claims={"exp": t - 3600, "iat": t - 3900}), Code.AUTH_TOKEN_EXPIRED
    )
    assert "expired" in err.message
    refused(validator(keycloak), keycloak.mint(claims={"exp": None}), Code.AUTH_MALFORMED_TOKEN)
    # A genuine provider token, checked after its lifetime (5 min) plus leeway.
    refused(
        validator(keycloak),
        password_token(keycloak, "alice"),
        Code.AUTH_TOKEN_EXPIRED,
        at=now() + timedelta(minutes=6),
    )


def test_expiry_leeway_is_bounded(keycloak: Standin) -> None:
    v = validator(keycloak, leeway=timedelta(seconds=30))
    t = int(time.time())
    token = keycloak.mint(claims={"exp": t + 60})
    at = datetime.fromtimestamp(t + 60, UTC)
    assert v.validate(token, now=at + timedelta(seconds=20)).username == "alice"
    refused(v, token, Code.AUTH_TOKEN_EXPIRED, at=at + timedelta(seconds=40))


def test_not_yet_valid(keycloak: Standin) -> None:
    t = int(time.time())
    refused(validator(keycloak), keycloak.mint(claims={"nbf": t + 3600}), Code.AUTH_TOKEN_NOT_YET_VALID)
    refused(validator(keycloak), keycloak.mint(claims={"iat": t + 3600}), Code.AUTH_TOKEN_NOT_YET_VALID)


def test_wrong_issuer_signed_by_the_realm_key(keycloak: Standin) -> None:
    err = refused(
        validator(keycloak),
        keycloak.mint(claims={"iss": "https://evil.example/realms/sovereign"}),
        Code.AUTH_WRONG_ISSUER,
    )
    assert "evil.example" in err.message


def test_wrong_audience_real_token_of_another_client(keycloak: Standin) -> None:
    token = password_token(keycloak, "alice", client_id="other-app")
    err = refused(validator(keycloak), token, Code.AUTH_WRONG_AUDIENCE)
    assert "other-app" in err.message


def test_strict_audience_mode_requires_aud(keycloak: Standin) -> None:
    strict = validator(keycloak, accept_azp=False)
    refused(strict, password_token(keycloak, "alice"), Code.AUTH_WRONG_AUDIENCE)  # aud "account" only
    assert (
        strict.validate(password_token(keycloak, "frank"), now=now()).username == "frank"
    )  # aud has sovereign


def test_alg_none(keycloak: Standin) -> None:
    err = refused(
        validator(keycloak), forge.alg_none(password_token(keycloak, "alice")), Code.AUTH_ALG_NOT_ALLOWED
    )
    assert "'none'" in err.message


def test_hs256_signed_with_the_public_key(keycloak: Standin) -> None:
    token = forge.hs256_with_public_key(password_token(keycloak, "alice"), keycloak.issuer())
    refused(validator(keycloak), token, Code.AUTH_ALG_NOT_ALLOWED)


def test_alg_swapped_against_the_key(keycloak: Standin) -> None:
    es = keycloak.mint(alg="ES256", header={"kid": f"{REALM}-rs256"})
    refused(validator(keycloak), es, Code.AUTH_ALG_NOT_ALLOWED)


def test_unknown_kid(keycloak: Standin) -> None:
    err = refused(
        validator(keycloak),
        forge.own_key(password_token(keycloak, "alice"), "attacker"),
        Code.AUTH_UNKNOWN_KID,
    )
    assert "attacker" in err.message


def test_tampered_claims_break_the_signature(keycloak: Standin) -> None:
    genuine = password_token(keycloak, "erin")
    escalated = forge.tampered(genuine, realm_access={"roles": ["sovereign-admin"]})
    refused(validator(keycloak), escalated, Code.AUTH_BAD_SIGNATURE)


def test_token_from_another_realm(keycloak: Standin) -> None:
    token = password_token(keycloak, "alice", realm=OTHER_REALM)
    refused(validator(keycloak), token, Code.AUTH_WRONG_ISSUER)
    # Even when it claims our issuer, the other realm's key is not ours.
    spoofed = keycloak.mint(OTHER_REALM, claims={"iss": keycloak.issuer()})
    refused(validator(keycloak), spoofed, Code.AUTH_UNKNOWN_KID)


def test_id_token_is_not_an_access_token(keycloak: Standin) -> None:
    refused(validator(keycloak), keycloak.mint(claims={"typ": "ID"}), Code.AUTH_WRONG_TOKEN_TYPE)
    refused(validator(keycloak), keycloak.mint(claims={"typ": None}), Code.AUTH_WRONG_TOKEN_TYPE)


def test_encrypted_or_oversized_tokens(keycloak: Standin) -> None:
    refused(validator(keycloak), "a.b.c.d.e", Code.AUTH_MALFORMED_TOKEN)
    refused(validator(keycloak), "a" * 20000, Code.AUTH_MALFORMED_TOKEN)
