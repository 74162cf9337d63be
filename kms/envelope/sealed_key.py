"""Sealed key: a data key encrypted to a node's attested HPKE public key (RFC 9180 base mode, single shot).

Wire format (big-endian, docs/formats.md has the table):

    magic "SOVK" | version 0x01 | kem_id u16 | kdf_id u16 | aead_id u16 | u16 len || enc | HPKE ciphertext

cryptography's public single-shot HPKE API takes ``info`` but no AEAD AAD; as RFC 9180 section 8.1
recommends for single-shot use, the context is bound through ``info``, which enters the key schedule:

    hpke_info = u16 len || info | header (the 11 bytes magic..aead_id) | u32 len || aad

so a different AAD, info label, suite or version makes ``open_sealed_key`` fail.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from kms.envelope._wire import Reader, prefixed
from kms.envelope.errors import Code, InvalidInput, SealedKeyError
from kms.envelope.suites import PrivateKey, Suite, load_public_key, suite_by_id_bytes

MAGIC = b"SOVK"
VERSION = 1
DEFAULT_INFO = b"sovereign/v1 sealed key"
MAX_PLAINTEXT = 1024
MAX_AAD = 1 << 20
_TAG_LEN = 16


def _malformed(message: str) -> SealedKeyError:
    return SealedKeyError(f"sealed key: {message}", code=Code.SEALED_KEY_MALFORMED)


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(f"sealed key: {message}")


def _header(suite: Suite) -> bytes:
    return MAGIC + bytes([VERSION]) + suite.id_bytes()


def _hpke_info(header: bytes, info: bytes, aad: bytes) -> bytes:
    if len(aad) > MAX_AAD:
        raise _invalid(f"aad of {len(aad)} bytes exceeds {MAX_AAD}")
    return prefixed(bytes(info), 2, _invalid) + header + prefixed(bytes(aad), 4, _invalid)


def seal_key(
    recipient_public: bytes,
    suite: Suite,
    plaintext_key: bytes,
    aad: bytes,
    info: bytes = DEFAULT_INFO,
) -> bytes:
    """Encrypt ``plaintext_key`` to ``recipient_public`` (a node's attested KEM key), bound to ``aad``."""
    if not 1 <= len(plaintext_key) <= MAX_PLAINTEXT:
        raise _invalid(f"plaintext key must be 1..{MAX_PLAINTEXT} bytes, got {len(plaintext_key)}")
    public = load_public_key(suite, recipient_public)
    header = _header(suite)
    sealed = suite.hpke_suite.encrypt(bytes(plaintext_key), public, info=_hpke_info(header, info, aad))
    enc, ciphertext = sealed[: suite.enc_len], sealed[suite.enc_len :]
    return header + prefixed(enc, 2, _invalid) + ciphertext


def parse_sealed_key(sealed: bytes) -> tuple[Suite, bytes, bytes]:
    """Split a sealed key into (suite, enc, ciphertext), checking the framing only."""
    reader = Reader(bytes(sealed), _malformed)
    if reader.take(len(MAGIC), "magic") != MAGIC:
        raise _malformed("bad magic; this is not a sovereign sealed key")
    version = reader.uint(1, "version")
    if version != VERSION:
        raise SealedKeyError(
            f"sealed key version {version} is not supported (this release reads {VERSION})",
            code=Code.SEALED_KEY_UNSUPPORTED_VERSION,
        )
    suite = suite_by_id_bytes(reader.take(6, "suite ids"))
    enc = reader.prefixed(2, "enc")
    if len(enc) != suite.enc_len:
        raise _malformed(f"enc is {len(enc)} bytes, {suite.name} uses {suite.enc_len}")
    ciphertext = reader.rest()
    if not _TAG_LEN < len(ciphertext) <= MAX_PLAINTEXT + _TAG_LEN:
        raise _malformed(f"ciphertext of {len(ciphertext)} bytes is outside 17..{MAX_PLAINTEXT + _TAG_LEN}")
    return suite, enc, ciphertext


def open_sealed_key(private: PrivateKey, sealed: bytes, aad: bytes, info: bytes = DEFAULT_INFO) -> bytes:
    """Decrypt a sealed key with the node's private key; ``aad`` and ``info`` must equal the sealer's."""
    suite, enc, ciphertext = parse_sealed_key(sealed)
    if suite != private.suite:
        raise SealedKeyError(
            f"sealed for suite {suite.name}, but this node key is {private.suite.name}",
            code=Code.SEALED_KEY_SUITE_MISMATCH,
        )
    hpke_info = _hpke_info(_header(suite), info, aad)
    try:
        return suite.hpke_suite.decrypt(enc + ciphertext, private.hpke_key(), info=hpke_info)
    except (InvalidTag, ValueError):
        raise SealedKeyError(
            "sealed key did not open: wrong node key, or a different AAD or info than the sealer used",
            code=Code.SEALED_KEY_OPEN_FAILED,
        ) from None
