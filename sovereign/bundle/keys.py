"""Release signing keys (Ed25519, pynacl). Files: ``NAME.key`` holds the 32-byte seed in hex (0600);
``NAME.pub.pem`` holds the public key as a SubjectPublicKeyInfo PEM, which OpenSSL, ``cryptography``
and the stdlib installer all read."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from sovereign.bundle.installer import (
    ED25519_SPKI_PREFIX,
    BundleCode,
    BundleError,
    key_fingerprint,
    read_public_key,
)

# A key name is one file-name stem: no separators, no "..", so the files stay inside --out.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
MAX_KEY_NAME = 64


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path
    fingerprint: str  # "sha256:" + SHA-256 of the public key's DER (openssl pkey -pubin -outform DER)


def public_pem(verify_key: nacl.signing.VerifyKey) -> bytes:
    der = ED25519_SPKI_PREFIX + bytes(verify_key)
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der) + b"\n-----END PUBLIC KEY-----\n"


def check_name(name: str) -> str:
    if len(name) > MAX_KEY_NAME or not KEY_NAME.fullmatch(name):
        raise BundleError(
            f"key name {name!r} is not a plain file-name stem",
            code=BundleCode.BUNDLE_KEY_INVALID,
            hint=f"use letters, digits, '-', '_' and single dots, at most {MAX_KEY_NAME} characters, "
            "e.g. --name release; the folder goes in --out",
        )
    return name


def generate_pair(directory: Path, name: str) -> KeyPair:
    """Write a new key pair; refuses a name that is not a plain stem and an existing private key."""
    key_path, pub_path = generate(directory, name)
    return KeyPair(key_path, pub_path, key_fingerprint(read_public_key(pub_path)))


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair; refuses to overwrite an existing private key."""
    check_name(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(
            f"cannot create the key folder {directory}: {exc.strerror or type(exc).__name__}",
            code=BundleCode.BUNDLE_KEY_INVALID,
            hint="choose a folder you can write with --out",
        ) from None
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
