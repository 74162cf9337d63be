"""HPKE suites (RFC 9180) and node KEM keys.

Two suites, identified on the wire by their IANA HPKE ids (kem, kdf, aead as u16 big-endian):

- ``x25519``: DHKEM(X25519, HKDF-SHA256) 0x0020 / HKDF-SHA256 0x0001 / AES-256-GCM 0x0002 (default)
- ``mlkem768-x25519``: MLKEM768-X25519 (X-Wing) 0x647A / HKDF-SHA256 0x0001 / AES-256-GCM 0x0002

Key encodings: X25519 keys are the 32-byte RFC 7748 strings. X-Wing keys follow
draft-connolly-cfrg-xwing-kem: the private key is a 32-byte seed expanded with SHAKE256 to 96 bytes
(ML-KEM-768 seed d||z, then the X25519 private key); the public key is the ML-KEM-768 encapsulation
key (1184 bytes) followed by the X25519 public key (32 bytes).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import NoReturn

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from kms.envelope.errors import Code, InvalidInput, SealedKeyError

HpkePrivate = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
HpkePublic = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey

_PROBE_INFO = b"sovereign/v1 recipient key check"
_MLKEM768_PUBLIC_LEN = 1184
_X25519_LEN = 32
_XWING_SEED_LEN = 32


@dataclass(frozen=True)
class Suite:
    """One HPKE base-mode cipher suite. ``id_bytes()`` is the 6-byte ``kem_suite`` of the binding."""

    name: str
    kem_id: int
    kdf_id: int
    aead_id: int
    public_key_len: int
    private_key_len: int
    hpke_suite: hpke.Suite = field(repr=False, compare=False)
    enc_len: int = field(repr=False, compare=False)

    def id_bytes(self) -> bytes:
        return (
            self.kem_id.to_bytes(2, "big") + self.kdf_id.to_bytes(2, "big") + self.aead_id.to_bytes(2, "big")
        )


def _suite(name: str, kem: hpke.KEM, kem_id: int, public_len: int, private_len: int) -> Suite:
    return Suite(
        name=name,
        kem_id=kem_id,
        kdf_id=0x0001,
        aead_id=0x0002,
        public_key_len=public_len,
        private_key_len=private_len,
        hpke_suite=hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
        enc_len=kem.enc_length(),
    )


X25519_SUITE = _suite("x25519", hpke.KEM.X25519, 0x0020, _X25519_LEN, _X25519_LEN)
MLKEM768_X25519_SUITE = _suite(
    "mlkem768-x25519", hpke.KEM.MLKEM768_X25519, 0x647A, _MLKEM768_PUBLIC_LEN + _X25519_LEN, _XWING_SEED_LEN
)
SUITES: dict[str, Suite] = {s.name: s for s in (X25519_SUITE, MLKEM768_X25519_SUITE)}
DEFAULT_SUITE = X25519_SUITE
_BY_IDS: dict[bytes, Suite] = {s.id_bytes(): s for s in SUITES.values()}


def suite_by_id_bytes(ids: bytes) -> Suite:
    """The suite for a 6-byte (kem, kdf, aead) id, e.g. a node's registered ``kem_suite``."""
    suite = _BY_IDS.get(bytes(ids))
    if suite is None:
        raise SealedKeyError(
            f"HPKE suite {bytes(ids).hex()} is not supported", code=Code.SEALED_KEY_UNSUPPORTED_SUITE
        )
    return suite


def _bad_key(suite: Suite, what: str, got: int, want: int) -> NoReturn:
    raise InvalidInput(f"{suite.name} {what} must be {want} bytes, got {got}", code=Code.KEM_KEY_INVALID)


class PrivateKey:
    """A node's HPKE private key. Its repr and str show the suite and a public-key fingerprint only."""

    __slots__ = ("_key", "_public", "_secret", "suite")

    def __init__(self, suite: Suite, key: HpkePrivate, secret: bytes, public: bytes) -> None:
        self.suite = suite
        self._key = key
        self._secret = secret
        self._public = public

    def public_bytes(self) -> bytes:
        return self._public

    def export_secret(self) -> bytes:
        """The private key encoding (see module doc). Secret: for test vectors and sealed storage only."""
        return self._secret

    def hpke_key(self) -> HpkePrivate:
        return self._key

    def __repr__(self) -> str:
        fingerprint = hashlib.sha256(self._public).hexdigest()[:16]
        return f"PrivateKey(suite={self.suite.name!r}, public_sha256={fingerprint!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("kms.envelope.PrivateKey cannot be pickled: it holds a secret key")


def load_private_key(suite: Suite, secret: bytes) -> PrivateKey:
    """Rebuild a private key from ``PrivateKey.export_secret()`` bytes."""
    secret = bytes(secret)
    if len(secret) != suite.private_key_len:
        _bad_key(suite, "private key", len(secret), suite.private_key_len)
    if suite is X25519_SUITE:
        xkey = x25519.X25519PrivateKey.from_private_bytes(secret)
        return PrivateKey(suite, xkey, secret, xkey.public_key().public_bytes_raw())
    expanded = hashlib.shake_256(secret).digest(96)
    mkey = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    xkey = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    public = mkey.public_key().public_bytes_raw() + xkey.public_key().public_bytes_raw()
    return PrivateKey(suite, hpke.MLKEM768X25519PrivateKey(mkey, xkey), secret, public)


def generate_keypair(suite: Suite = DEFAULT_SUITE) -> tuple[PrivateKey, bytes]:
    """A fresh key pair for ``suite`` (node side, inside the TEE): (private key, public key bytes)."""
    private = load_private_key(suite, os.urandom(suite.private_key_len))
    return private, private.public_bytes()


def load_public_key(suite: Suite, public: bytes) -> HpkePublic:
    """Parse and check a recipient public key; raise ``KEM_KEY_INVALID`` if it does not fit ``suite``."""
    public = bytes(public)
    if len(public) != suite.public_key_len:
        _bad_key(suite, "public key", len(public), suite.public_key_len)
    try:
        if suite is X25519_SUITE:
            return x25519.X25519PublicKey.from_public_bytes(public)
        mpub = mlkem.MLKEM768PublicKey.from_public_bytes(public[:_MLKEM768_PUBLIC_LEN])
        xpub = x25519.X25519PublicKey.from_public_bytes(public[_MLKEM768_PUBLIC_LEN:])
    except ValueError as exc:
        raise InvalidInput(
            f"{suite.name} public key does not decode: {exc}", code=Code.KEM_KEY_INVALID
        ) from None
    return hpke.MLKEM768X25519PublicKey(mpub, xpub)


def check_recipient_key(suite: Suite, public: bytes) -> HpkePublic:
    """``load_public_key`` plus proof that sealing to the key works: one trial HPKE encapsulation.

    Sealing fails for a low-order X25519 point (alone or as X-Wing's X25519 half: the shared secret is
    all zeros for every ephemeral key) and for an ML-KEM key whose encoding is refused. Both depend on
    the recipient key only, never on the fresh ephemeral of each seal, so a key that passes here seals.
    Raises ``KEM_KEY_INVALID``.
    """
    key = load_public_key(suite, public)
    try:
        suite.hpke_suite.encrypt(b"\x00", key, info=_PROBE_INFO)
    except ValueError:
        raise InvalidInput(
            f"{suite.name} public key cannot be sealed to (a low-order X25519 point?)",
            code=Code.KEM_KEY_INVALID,
        ) from None
    return key
