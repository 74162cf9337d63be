"""The transit adapter against a real OpenBao: data keys, batches, signatures, tokens, secrecy."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.domain.transit import Unwrapped
from kms.errors import Code, OpenBaoError
from kms.openbao.vault import AppRoleAuth, BaoSettings, OpenBaoTransit, TokenAuth

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration


def test_wrapped_data_key_round_trip(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    wrapped = transit.generate_wrapped_data_key()
    assert wrapped.ciphertext.startswith(f"vault:v{wrapped.kek_version}:")
    first, second = transit.unwrap(wrapped.ciphertext), transit.unwrap(wrapped.ciphertext)
    assert len(first.plaintext) == 32
    assert first.plaintext == second.plaintext
    assert first.request_id and first.request_id != second.request_id
    assert transit.unwrap(transit.generate_wrapped_data_key().ciphertext).plaintext != first.plaintext


def test_plaintext_never_shows_in_repr_or_str(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    result = transit.unwrap(transit.generate_wrapped_data_key().ciphertext)
    forms = [result.plaintext.hex(), base64.b64encode(result.plaintext).decode(), repr(result.plaintext)]
    for text in (repr(result), str(result), repr(transit)):
        assert not any(form in text for form in forms)
    assert kms_dev.approle_settings().auth.secret_id not in repr(kms_dev.approle_settings())  # type: ignore[union-attr]


def test_batch_unwrap_matches_single_unwraps_and_isolates_bad_items(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    wrapped = [transit.generate_wrapped_data_key().ciphertext for _ in range(5)]
    batch = transit.unwrap_batch([*wrapped[:2], "vault:v1:AAAA", *wrapped[2:]])
    assert len(batch) == 6
    bad = batch.pop(2)
    assert isinstance(bad, OpenBaoError) and bad.code is Code.KMS_DECRYPT_FAILED
    assert all(isinstance(item, Unwrapped) for item in batch)
    singles = [transit.unwrap(c).plaintext for c in wrapped]
    assert [item.plaintext for item in batch if isinstance(item, Unwrapped)] == singles
    assert len({item.request_id for item in batch if isinstance(item, Unwrapped)}) == 1
    assert transit.unwrap_batch([]) == []


def test_all_bad_batch_reports_each_item(kms_dev: Kms) -> None:
    batch = kms_dev.approle().unwrap_batch(["vault:v1:AAAA", "vault:v1:BBBB"])
    assert [getattr(item, "code", None) for item in batch] == [Code.KMS_DECRYPT_FAILED] * 2


def test_tampered_ciphertext_is_refused_with_a_code(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    wrapped = transit.generate_wrapped_data_key().ciphertext
    raw = bytearray(base64.b64decode(wrapped.split(":")[2]))
    raw[-1] ^= 1
    with pytest.raises(OpenBaoError) as info:
        transit.unwrap(f"vault:v1:{base64.b64encode(bytes(raw)).decode()}")
    assert info.value.code is Code.KMS_DECRYPT_FAILED


def test_rotate_and_rewrap_keep_the_key(fresh_dev: Kms) -> None:
    transit, admin = fresh_dev.approle(), fresh_dev.admin()
    wrapped = transit.generate_wrapped_data_key()
    plaintext = transit.unwrap(wrapped.ciphertext).plaintext
    assert admin.rotate_kek() == wrapped.kek_version + 1
    rewrapped = transit.rewrap(wrapped.ciphertext)
    assert rewrapped.kek_version == wrapped.kek_version + 1
    assert rewrapped.ciphertext != wrapped.ciphertext
    assert transit.unwrap(rewrapped.ciphertext).plaintext == plaintext
    assert transit.generate_wrapped_data_key().kek_version == wrapped.kek_version + 1


def test_signatures_verify_offline_with_the_public_key(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    sig = transit.sign(b"size=7 root=abc")
    public = transit.public_key()
    assert len(public.raw) == 32 and public.key_version == sig.key_version
    Ed25519PublicKey.from_public_bytes(public.raw).verify(sig.raw, b"size=7 root=abc")
    transit.verify(b"size=7 root=abc", sig)
    with pytest.raises(OpenBaoError) as info:
        transit.verify(b"size=8 root=abc", sig)
    assert info.value.code is Code.KMS_SIGNATURE_INVALID


def test_revoked_approle_token_is_replaced_by_a_fresh_login(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    wrapped = transit.generate_wrapped_data_key()
    old = transit.client.token
    kms_dev.admin().call("revoke", lambda c: c.auth.token.revoke(old))
    assert len(transit.unwrap(wrapped.ciphertext).plaintext) == 32
    assert transit.client.token != old


def test_revoked_static_token_reports_expiry(kms_dev: Kms) -> None:
    admin = kms_dev.admin()
    token = admin.call("create", lambda c: c.auth.token.create(policies=["sovereign-control-plane"]))["auth"][
        "client_token"
    ]
    transit = OpenBaoTransit(BaoSettings(addr=kms_dev.server.addr, auth=TokenAuth(token)))
    wrapped = transit.generate_wrapped_data_key()
    admin.call("revoke", lambda c: c.auth.token.revoke(token))
    with pytest.raises(OpenBaoError) as info:
        transit.unwrap(wrapped.ciphertext)
    assert info.value.code is Code.KMS_TOKEN_EXPIRED


def test_token_near_expiry_is_renewed_before_use(kms_dev: Kms) -> None:
    clock = [1000.0]
    transit = OpenBaoTransit(kms_dev.approle_settings(), monotonic=lambda: clock[0])
    wrapped = transit.generate_wrapped_data_key()
    ttl_before = transit.call("lookup", lambda c: c.auth.token.lookup_self())["data"]["ttl"]
    token = transit.client.token
    clock[0] += ttl_before * 0.9  # pretend most of the TTL has passed: the next call refreshes first
    transit.unwrap(wrapped.ciphertext)
    assert transit.client.token == token  # renewed, not replaced
    info = transit.call("lookup", lambda c: c.auth.token.lookup_self())["data"]
    assert info["ttl"] > 0


def test_wrong_secret_id_fails_login_with_a_code(kms_dev: Kms, tmp_path: Path) -> None:
    settings = BaoSettings(addr=kms_dev.server.addr, auth=AppRoleAuth(kms_dev.report.role_id, "wrong"))
    with pytest.raises(OpenBaoError) as info:
        OpenBaoTransit(settings).generate_wrapped_data_key()
    assert info.value.code is Code.KMS_AUTH_FAILED
    assert "wrong" not in info.value.message


def test_settings_resolve_from_environment(tmp_path: Path) -> None:
    secret = tmp_path / "secret-id"
    secret.write_text("s3cret\n")
    env = {
        "SOVEREIGN_BAO_ADDR": "http://127.0.0.1:1",
        "SOVEREIGN_BAO_ROLE_ID": "r",
        "SOVEREIGN_BAO_SECRET_ID_FILE": str(secret),
        "SOVEREIGN_BAO_TOKEN": "t",
    }
    settings = BaoSettings.resolve(env)
    assert settings.auth == AppRoleAuth("r", "s3cret")
    assert BaoSettings.resolve(env, approle=False).auth == TokenAuth("t")
    with pytest.raises(OpenBaoError) as info:
        BaoSettings.resolve({"SOVEREIGN_BAO_ADDR": "http://127.0.0.1:1"})
    assert info.value.code is Code.KMS_CONFIG_INVALID
