"""The AppRole token holds exactly the control-plane policy: everything else is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hvac
import pytest

from kms.errors import Code, OpenBaoError

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration

REFUSED: dict[str, Callable[[hvac.Client], Any]] = {
    "list sys/policies": lambda c: c.sys.list_acl_policies(),
    "read sys/mounts": lambda c: c.sys.list_mounted_secrets_engines(),
    "export the KEK": lambda c: c.secrets.transit.export_key("sovereign-kek", key_type="encryption-key"),
    "delete the KEK": lambda c: c.secrets.transit.delete_key("sovereign-kek"),
    "reconfigure the KEK": lambda c: c.secrets.transit.update_key_configuration(
        "sovereign-kek", deletion_allowed=True
    ),
    "rotate the KEK": lambda c: c.secrets.transit.rotate_key("sovereign-kek"),
    "read the KEK": lambda c: c.secrets.transit.read_key("sovereign-kek"),
    "plaintext data key": lambda c: c.secrets.transit.generate_data_key(
        "sovereign-kek", key_type="plaintext"
    ),
    "another transit key": lambda c: c.secrets.transit.encrypt_data("other-key", plaintext="AAAA"),
    "create a transit key": lambda c: c.secrets.transit.create_key("mine"),
    "sign with the KEK": lambda c: c.secrets.transit.sign_data("sovereign-kek", hash_input="AAAA"),
    "decrypt with the audit key": lambda c: c.secrets.transit.decrypt_data(
        "sovereign-audit", ciphertext="vault:v1:AAAA"
    ),
    "issue secret ids": lambda c: c.auth.approle.generate_secret_id("sovereign-control-plane"),
    "create tokens": lambda c: c.auth.token.create(policies=["root"]),
}


@pytest.fixture(scope="module")
def other_key(kms_dev: Kms) -> str:
    kms_dev.admin().call("create", lambda c: c.secrets.transit.create_key("other-key"))
    return "other-key"


@pytest.mark.parametrize("action", sorted(REFUSED))
def test_approle_token_is_refused(kms_dev: Kms, other_key: str, action: str) -> None:
    transit = kms_dev.approle()
    with pytest.raises(OpenBaoError) as info:
        transit.call(action, REFUSED[action])
    assert info.value.code is Code.KMS_PERMISSION_DENIED, info.value
    assert "permission denied" in info.value.message


def test_approle_token_may_do_its_job(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    wrapped = transit.generate_wrapped_data_key()
    assert len(transit.unwrap(wrapped.ciphertext).plaintext) == 32
    assert transit.rewrap(wrapped.ciphertext).kek_version == wrapped.kek_version
    transit.verify(b"checkpoint", transit.sign(b"checkpoint"))


def test_not_even_root_can_delete_the_kek(kms_dev: Kms) -> None:
    with pytest.raises(OpenBaoError) as info:
        kms_dev.admin().call("delete", lambda c: c.secrets.transit.delete_key("sovereign-kek"))
    assert "deletion is not allowed" in info.value.message
    assert kms_dev.admin().key_info().name == "sovereign-kek"
