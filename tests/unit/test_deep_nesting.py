"""JSON or TOML nested thousands deep makes the parsers raise RecursionError, which is not a ValueError.
Every reader of untrusted documents turns it into its own coded refusal: a bearer token before any
authentication, collateral and bundles from removable media, audit inputs, key and config files."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestation.collateral import classify
from attestation.collateral_bundle import open_bundle
from attestation.errors import AttestationError
from attestation.tdx import parse_collateral_bundle
from kms.audit.checkpoint import load_audit_keys
from kms.audit.errors import AuditError
from kms.audit.reconcile import parse_bao_log
from kms.config import load_config
from kms.errors import KmsError
from kms.oidc.errors import AuthError
from kms.oidc.jwks import FileJwks
from kms.oidc.tokens import split_unverified
from sovereign.bundle.installer import BundleError, parse_manifest

DEEP = b"[" * 3_000 + b"]" * 3_000  # far past the recursion limit, small enough for every size cap
DEEP_OBJECT = b'{"a":' + DEEP + b"}"
SIGNER = Ed25519PrivateKey.generate().public_key()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_deeply_nested_bearer_token_is_malformed() -> None:
    header = _b64(b'{"alg":' + DEEP + b"}")  # about 8,000 characters: under the token size cap
    with pytest.raises(AuthError) as info:
        split_unverified(f"{header}.{_b64(b'{}')}.c2ln")
    assert info.value.code.value == "AUTH_MALFORMED_TOKEN"


CASES: dict[str, tuple[Callable[[bytes], object], type[Exception]]] = {
    "collateral file": (lambda d: classify(d, "deep.json"), AttestationError),
    "TDX collateral bundle": (parse_collateral_bundle, AttestationError),
    "signed collateral bundle": (lambda d: open_bundle(d, [SIGNER]), AttestationError),
    "install bundle manifest": (parse_manifest, BundleError),
    "OpenBao audit log": (lambda d: parse_bao_log([d], role_name="r", path="p"), AuditError),
    "audit key file": (lambda d: load_audit_keys(b" " + d), AuditError),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_deep_documents_are_refused_with_a_code(name: str) -> None:
    read, refusal = CASES[name]
    with pytest.raises(refusal):
        read(DEEP_OBJECT)


def test_deep_files_of_the_server_and_the_operator_are_refused(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(DEEP)
    with pytest.raises(AuthError) as info:
        FileJwks(jwks).fetch()
    assert info.value.code.value == "AUTH_JWKS_INVALID"
    config = tmp_path / "server.toml"
    config.write_text("db = " + DEEP.decode())
    with pytest.raises(KmsError) as err:
        load_config(config)
    assert err.value.code.value == "SERVER_CONFIG_INVALID"
    assert json.dumps(str(err.value))  # a message, not a traceback
