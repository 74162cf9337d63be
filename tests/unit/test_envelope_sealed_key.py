"""Sealed key (HPKE) and the canonical release AAD."""

from __future__ import annotations

import pickle
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.envelope import (
    DEFAULT_INFO,
    DEFAULT_SUITE,
    MLKEM768_X25519_SUITE,
    SUITES,
    X25519_SUITE,
    Code,
    EnvelopeError,
    InvalidInput,
    SealedKeyError,
    check_recipient_key,
    generate_keypair,
    load_private_key,
    load_public_key,
    open_sealed_key,
    parse_sealed_key,
    release_aad,
    seal_key,
    suite_by_id_bytes,
)

FIELDS = {
    "node_id": "node-1",
    "key_name": "datasets/a",
    "key_version": 2,
    "purpose": "dataset-read",
    "request_id": b"\x01" * 16,
    "audit_sequence": 77,
    "lease_expiry": 1_800_000_000,
}
AAD = release_aad(**FIELDS)  # type: ignore[arg-type]
DATA_KEY = bytes(range(32))
KEYS = {name: generate_keypair(suite) for name, suite in SUITES.items()}


def code_of(exc: pytest.ExceptionInfo[EnvelopeError]) -> Code:
    return exc.value.code


def test_suites_use_iana_ids_and_default_is_x25519() -> None:
    assert DEFAULT_SUITE is X25519_SUITE
    assert X25519_SUITE.id_bytes() == bytes.fromhex("002000010002")
    assert MLKEM768_X25519_SUITE.id_bytes() == bytes.fromhex("647a00010002")
    for suite in SUITES.values():
        assert suite_by_id_bytes(suite.id_bytes()) is suite
    with pytest.raises(SealedKeyError) as info:
        suite_by_id_bytes(bytes.fromhex("001000010002"))
    assert code_of(info) is Code.SEALED_KEY_UNSUPPORTED_SUITE


@pytest.mark.parametrize("name", list(SUITES))
def test_round_trip(name: str) -> None:
    private, public = KEYS[name]
    assert len(public) == SUITES[name].public_key_len
    sealed = seal_key(public, SUITES[name], DATA_KEY, AAD)
    assert parse_sealed_key(sealed)[0] is SUITES[name]
    assert open_sealed_key(private, sealed, AAD) == DATA_KEY
    assert seal_key(public, SUITES[name], DATA_KEY, AAD) != sealed  # fresh ephemeral each time


@pytest.mark.parametrize("name", list(SUITES))
def test_private_key_export_reload(name: str) -> None:
    private, public = KEYS[name]
    again = load_private_key(SUITES[name], private.export_secret())
    assert again.public_bytes() == public
    assert open_sealed_key(again, seal_key(public, SUITES[name], DATA_KEY, AAD), AAD) == DATA_KEY


@pytest.mark.parametrize("name", list(SUITES))
def test_wrong_key_wrong_aad_wrong_info(name: str) -> None:
    private, public = KEYS[name]
    sealed = seal_key(public, SUITES[name], DATA_KEY, AAD)
    stranger, _ = generate_keypair(SUITES[name])
    other_aad = release_aad(**{**FIELDS, "audit_sequence": 78})  # type: ignore[arg-type]
    attempts = [(stranger, AAD, DEFAULT_INFO), (private, other_aad, DEFAULT_INFO), (private, AAD, b"other")]
    for key, aad, info_label in attempts:
        with pytest.raises(SealedKeyError) as info:
            open_sealed_key(key, sealed, aad, info=info_label)
        assert code_of(info) is Code.SEALED_KEY_OPEN_FAILED


def test_suite_mismatch() -> None:
    _, public = KEYS["x25519"]
    sealed = seal_key(public, X25519_SUITE, DATA_KEY, AAD)
    with pytest.raises(SealedKeyError) as info:
        open_sealed_key(KEYS["mlkem768-x25519"][0], sealed, AAD)
    assert code_of(info) is Code.SEALED_KEY_SUITE_MISMATCH


def test_unknown_suite_ids_in_a_blob_are_refused() -> None:
    private, public = KEYS["x25519"]
    sealed = seal_key(public, X25519_SUITE, DATA_KEY, AAD)
    with pytest.raises(SealedKeyError) as info:
        open_sealed_key(private, sealed[:5] + bytes.fromhex("0020000100ff") + sealed[11:], AAD)
    assert code_of(info) is Code.SEALED_KEY_UNSUPPORTED_SUITE


def test_malformed_framing() -> None:
    private, public = KEYS["x25519"]
    sealed = seal_key(public, X25519_SUITE, DATA_KEY, AAD)
    cases = {
        b"": Code.SEALED_KEY_MALFORMED,
        b"NOPE" + sealed[4:]: Code.SEALED_KEY_MALFORMED,
        sealed[:4] + b"\x09" + sealed[5:]: Code.SEALED_KEY_UNSUPPORTED_VERSION,
        sealed[:11] + b"\x00\x1f" + sealed[13:]: Code.SEALED_KEY_MALFORMED,
        sealed[: 13 + 32 + 16]: Code.SEALED_KEY_MALFORMED,
        sealed[:12]: Code.SEALED_KEY_MALFORMED,
        sealed + b"\x00" * 2000: Code.SEALED_KEY_MALFORMED,
    }
    for blob, code in cases.items():
        with pytest.raises(SealedKeyError) as info:
            open_sealed_key(private, blob, AAD)
        assert code_of(info) is code, blob[:16].hex()


def test_bad_public_keys_and_inputs() -> None:
    with pytest.raises(InvalidInput) as info:
        seal_key(b"\x00" * 31, X25519_SUITE, DATA_KEY, AAD)
    assert code_of(info) is Code.KEM_KEY_INVALID
    with pytest.raises(InvalidInput) as info:
        load_public_key(MLKEM768_X25519_SUITE, b"\x00" * 32)
    assert code_of(info) is Code.KEM_KEY_INVALID
    with pytest.raises(InvalidInput) as info:
        load_private_key(X25519_SUITE, b"\x00" * 16)
    assert code_of(info) is Code.KEM_KEY_INVALID
    with pytest.raises(InvalidInput):
        seal_key(KEYS["x25519"][1], X25519_SUITE, b"", AAD)


LOW_ORDER_X25519 = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", LOW_ORDER_X25519, ids=lambda p: p.hex()[:8])
def test_recipient_keys_that_cannot_be_sealed_to_are_refused(point: bytes) -> None:
    """load_public_key takes them; sealing fails; check_recipient_key refuses them up front."""
    mlkem_half = KEYS["mlkem768-x25519"][1][:1184]
    for suite, public in ((X25519_SUITE, point), (MLKEM768_X25519_SUITE, mlkem_half + point)):
        load_public_key(suite, public)
        with pytest.raises(ValueError):
            seal_key(public, suite, DATA_KEY, AAD)
        with pytest.raises(InvalidInput) as info:
            check_recipient_key(suite, public)
        assert code_of(info) is Code.KEM_KEY_INVALID


def test_malformed_mlkem_keys_are_refused() -> None:
    public = KEYS["mlkem768-x25519"][1]
    with pytest.raises(InvalidInput) as info:
        check_recipient_key(MLKEM768_X25519_SUITE, b"\xff" * 1152 + public[1152:])
    assert code_of(info) is Code.KEM_KEY_INVALID


@settings(max_examples=200, deadline=None)
@given(public=st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(LOW_ORDER_X25519)))
def test_a_recipient_key_is_refused_exactly_when_sealing_to_it_fails(public: bytes) -> None:
    try:
        check_recipient_key(X25519_SUITE, public)
    except InvalidInput:
        with pytest.raises(ValueError):
            seal_key(public, X25519_SUITE, DATA_KEY, AAD)
        return
    assert len(seal_key(public, X25519_SUITE, DATA_KEY, AAD)) > 0


def test_private_key_repr_and_pickle_keep_the_secret() -> None:
    private = KEYS["mlkem768-x25519"][0]
    text = repr(private) + str(private)
    assert private.export_secret().hex() not in text and "mlkem768-x25519" in text
    with pytest.raises(TypeError):
        pickle.dumps(private)


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, 92), xor=st.integers(1, 255))
def test_any_bit_change_is_rejected(position: int, xor: int) -> None:
    private, public = KEYS["x25519"]
    sealed = bytearray(seal_key(public, X25519_SUITE, DATA_KEY, AAD))
    assert len(sealed) == 93
    sealed[position] ^= xor
    with pytest.raises(SealedKeyError):
        open_sealed_key(private, bytes(sealed), AAD)


def test_release_aad_layout_matches_the_doc() -> None:
    def field(raw: bytes) -> bytes:
        return struct.pack(">H", len(raw)) + raw

    manual = (
        b"sovereign/v1 release aad"
        + field(b"node-1")
        + field(b"datasets/a")
        + struct.pack(">Q", 2)
        + field(b"dataset-read")
        + field(b"\x01" * 16)
        + struct.pack(">Q", 77)
        + struct.pack(">Q", 1_800_000_000)
    )
    assert manual == AAD


def test_release_aad_is_unambiguous_across_field_boundaries() -> None:
    a = release_aad(**{**FIELDS, "node_id": "ab", "key_name": "c"})  # type: ignore[arg-type]
    b = release_aad(**{**FIELDS, "node_id": "a", "key_name": "bc"})  # type: ignore[arg-type]
    assert a != b
    for name, other in [
        ("key_version", 3),
        ("purpose", "model-write"),
        ("lease_expiry", 1),
        ("request_id", b"x"),
    ]:
        assert release_aad(**{**FIELDS, name: other}) != AAD  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("node_id", ""),
        ("key_name", "x" * 1025),
        ("purpose", "\udc80"),
        ("key_version", -1),
        ("audit_sequence", 1 << 64),
        ("lease_expiry", True),
        ("request_id", "not-bytes"),
        ("request_id", b""),
    ],
)
def test_release_aad_rejects_bad_fields(name: str, value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        release_aad(**{**FIELDS, name: value})  # type: ignore[arg-type]
    assert code_of(info) is Code.ENVELOPE_INPUT_INVALID


def test_xwing_key_expansion_matches_the_draft_vector() -> None:
    # draft-connolly-cfrg-xwing-kem, appendix C, first vector: seed -> public key (ends quoted).
    seed = bytes.fromhex("7f9c2ba4e88f827d616045507605853ed73b8093f6efbc88eb1a6eacfa66ef26")
    public = load_private_key(MLKEM768_X25519_SUITE, seed).public_bytes()
    assert public.startswith(
        bytes.fromhex("e2236b35a8c24b39b10aa1323a96a919a2ced88400633a7b07131713fc14b2b5")
    )
    assert public.endswith(bytes.fromhex("eff389b27dce59844570216223593d4ba32d9abac8cd049040ef6534"))
    assert len(public) == 1216
