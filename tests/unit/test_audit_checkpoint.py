"""Checkpoints: the signed message, transit signature form, and the ways to give the audit public key."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kms.audit.checkpoint import (
    Checkpoint,
    LocalSigner,
    Signature,
    checkpoint_message,
    format_transit_signature,
    load_audit_keys,
    parse_transit_signature,
    sign_checkpoint,
)
from kms.audit.errors import ExportInvalid, KeyInvalid
from kms.errors import Code

ROOT = bytes(range(32))
TIME = "2026-05-01T08:30:15.000000Z"


def test_the_signed_message_is_documented_and_domain_separated() -> None:
    assert checkpoint_message("sovereign-audit", 2, 5, ROOT, TIME) == (
        b"sovereign/v1 checkpoint\nsovereign-audit\n2\n5\n"
        + ROOT.hex().encode()
        + b"\n"
        + TIME.encode()
        + b"\n"
    )
    with pytest.raises(KeyInvalid):
        checkpoint_message("bad\nid", 1, 5, ROOT, TIME)
    with pytest.raises(KeyInvalid):
        checkpoint_message("k", 0, 5, ROOT, TIME)


def test_sign_and_verify_round_trip_through_the_json_form() -> None:
    signer = LocalSigner(key_id="sovereign-audit", version=3)
    cp = sign_checkpoint(signer, 5, ROOT, TIME)
    assert cp.signature.version == 3
    again = Checkpoint.from_obj(json.loads(json.dumps(cp.to_obj())))
    assert again == cp
    load_audit_keys(signer.public_key_bytes()).verify(again)
    with pytest.raises(ExportInvalid) as info:
        load_audit_keys(LocalSigner().public_key_bytes()).verify(cp)
    assert info.value.code == Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID


def test_transit_signature_form() -> None:
    sig = Signature(2, b"\x01" * 64)
    text = format_transit_signature(sig)
    assert text.startswith("vault:v2:")
    assert parse_transit_signature(text) == sig
    for bad in ("vault:v0:AAAA", "vault:2:AAAA", "v2:AAAA", "vault:v2:%%%", text[:-3] + "B=="):
        with pytest.raises(KeyInvalid):
            parse_transit_signature(bad)


def test_key_forms_raw_pem_and_openbao_json() -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    other = LocalSigner(version=1)
    transit = {
        "data": {
            "type": "ed25519",
            "keys": {
                "1": {"public_key": base64.b64encode(other.public_key_bytes()).decode()},
                "2": {"public_key": base64.b64encode(raw).decode()},
            },
        }
    }
    export = {"data": {"type": "ed25519", "keys": {"2": pem.decode()}}}
    cp2 = sign_checkpoint(LocalSigner(private, key_id="a", version=2), 1, ROOT, TIME)
    cp1 = sign_checkpoint(other, 1, ROOT, TIME)
    for data in (raw, pem, json.dumps(transit).encode(), json.dumps(export).encode()):
        load_audit_keys(data).verify(cp2)
    load_audit_keys(json.dumps(transit).encode()).verify(cp1)
    with pytest.raises(ExportInvalid, match="version 1"):
        load_audit_keys(json.dumps(export).encode()).verify(cp1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x" * 31,
        b"{not json",
        b'{"data": {"keys": {}}}',
        b'{"data": {"type": "rsa-2048", "keys": {"1": "AAAA"}}}',
        b'{"data": {"keys": {"1": "***"}}}',
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
)
def test_unusable_keys_are_refused(data: bytes) -> None:
    with pytest.raises(KeyInvalid):
        load_audit_keys(data)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {},
        {"size": -1, "root": ROOT.hex(), "time": TIME, "key_id": "k", "signature": "vault:v1:AA=="},
        {"size": 1, "root": ROOT.hex().upper(), "time": TIME, "key_id": "k", "signature": "vault:v1:AA=="},
        {"size": True, "root": ROOT.hex(), "time": TIME, "key_id": "k", "signature": "vault:v1:AA=="},
        {"size": 1, "root": ROOT.hex(), "time": TIME, "key_id": "k", "signature": "raw"},
        {
            "size": 1,
            "root": ROOT.hex(),
            "time": "2026-05-01T08:30:15Z",
            "key_id": "k",
            "signature": "vault:v1:AA==",
        },
    ],
)
def test_malformed_checkpoints_are_refused(obj: object) -> None:
    with pytest.raises(ExportInvalid):
        Checkpoint.from_obj(obj)


def test_signer_repr_has_no_key_material() -> None:
    signer = LocalSigner(key_id="k")
    assert repr(signer) == "LocalSigner(key_id='k', version=1)"
