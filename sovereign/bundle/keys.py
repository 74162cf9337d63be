"""Release signing keys (Ed25519, pynacl). Files: ``NAME.key`` holds the 32-byte seed in hex (0600);
``NAME.pub.pem`` holds the public key as a SubjectPublicKeyInfo PEM, which OpenSSL, ``cryptography``
and the stdlib installer all read."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import nacl.exceptions
import nacl.signing

from sovereign.bundle.installer import ED25519_SPKI_PREFIX, BundleCode, BundleError, read_public_key


def public_pem(verify_key: nacl.signing.VerifyKey) -> bytes:
    der = ED25519_SPKI_PREFIX + bytes(verify_key)
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der) + b"\n-----END PUBLIC KEY-----\n"


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair; refuses to overwrite an existing private key."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub.pem"
    key = nacl.signing.SigningKey.generate()
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BundleError(
            f"{key_path} exists; refusing to overwrite a signing key", code=BundleCode.BUNDLE_KEY_INVALID
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")
    pub_path.write_bytes(public_pem(key.verify_key))
    return key_path, pub_path


def load_signing_key(path: Path) -> nacl.signing.SigningKey:
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        seed = b""
    if len(seed) != 32:
        raise BundleError(
            f"{path} is not a signing key written by 'sovereign bundle keygen'",
            code=BundleCode.BUNDLE_KEY_INVALID,
        )
    return nacl.signing.SigningKey(seed)


def verify_with_nacl(message: bytes, signature: bytes, public_key: Path) -> bool:
    """The installer's ``Verifier`` for an existing installation (pynacl instead of the host's openssl)."""
    key = nacl.signing.VerifyKey(read_public_key(public_key))
    try:
        key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
