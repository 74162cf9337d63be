"""Signed checkpoints: (size, root, time) signed with the audit key (OpenBao transit, Ed25519).

Signed message (UTF-8, every line ends with "\\n")::

    sovereign/v1 checkpoint
    <key_id>                   name of the signing key, e.g. "sovereign-audit"
    <key_version>              decimal, the transit key version that signs (sign with key_version=N)
    <size>                     decimal, no leading zeros
    <root>                     64 lowercase hex digits, RFC 9162 root of the first <size> entries
    <time>                     YYYY-MM-DDTHH:MM:SS.ffffffZ

The first line separates it from anything else the key may ever sign. Signatures are stored in OpenBao's
transit form ``vault:v<key version>:<base64>``; the version is also inside the signed message, so it
cannot be relabelled, and a verifier holding every version of a rotated audit key picks the right one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kms.audit.errors import ExportInvalid, KeyInvalid
from kms.errors import Code

DOMAIN = b"sovereign/v1 checkpoint\n"
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_TRANSIT_SIG = re.compile(r"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})")


class Signature(NamedTuple):
    version: int
    value: bytes


def parse_transit_signature(text: str) -> Signature:
    """``vault:v3:<base64>`` -> Signature(3, raw bytes)."""
    m = _TRANSIT_SIG.fullmatch(text)
    if m is None:
        raise KeyInvalid("signature is not in OpenBao transit form vault:v<N>:<base64>")
    try:
        value = base64.b64decode(m.group(2), validate=True)
    except binascii.Error:
        raise KeyInvalid("signature base64 does not decode") from None
    if base64.b64encode(value).decode() != m.group(2):  # unused bits set: same bytes, different text
        raise KeyInvalid("signature base64 is not in canonical form")
    return Signature(int(m.group(1)), value)


def format_transit_signature(sig: Signature) -> str:
    return f"vault:v{sig.version}:{base64.b64encode(sig.value).decode()}"


class CheckpointSigner(Protocol):
    """Signs checkpoint messages. The real one is the OpenBao transit audit key (ed25519)."""

    @property
    def key_id(self) -> str: ...

    @property
    def key_version(self) -> int:
        """The key version ``sign`` uses (transit: sign with ``key_version`` set to it)."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Raw Ed25519 signature (transit's ``vault:vN:`` prefix removed, see parse_transit_signature)."""
        ...

    def public_key_bytes(self) -> bytes:
        """Raw 32-byte Ed25519 public key of the version that signs now."""
        ...


class LocalSigner:
    """An in-process Ed25519 signer (tests, benchmarks, air-gapped demos)."""

    def __init__(self, key: Ed25519PrivateKey | None = None, *, key_id: str = "local", version: int = 1):
        self._key = key if key is not None else Ed25519PrivateKey.generate()
        self._key_id = key_id
        self._version = version

    def __repr__(self) -> str:
        return f"LocalSigner(key_id={self._key_id!r}, version={self._version})"

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def key_version(self) -> int:
        return self._version

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def public_key_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Checkpoint:
    size: int
    root: bytes
    time: str
    key_id: str
    signature: Signature

    def message(self) -> bytes:
        return checkpoint_message(self.key_id, self.signature.version, self.size, self.root, self.time)

    def to_obj(self) -> dict[str, object]:
        return {
            "size": self.size,
            "root": self.root.hex(),
            "time": self.time,
            "key_id": self.key_id,
            "signature": format_transit_signature(self.signature),
        }

    @classmethod
    def from_obj(cls, obj: object) -> Checkpoint:
        """Decode a checkpoint object; raises ``ExportInvalid`` (malformed) on any shape problem."""
        if not isinstance(obj, dict) or set(obj) != {"size", "root", "time", "key_id", "signature"}:
            raise ExportInvalid("a checkpoint has exactly size, root, time, key_id and signature")
        size, root, time, key_id, sig = (obj[k] for k in ("size", "root", "time", "key_id", "signature"))
        if type(size) is not int or size < 0:
            raise ExportInvalid("checkpoint size must be a non-negative integer")
        if not isinstance(root, str) or not re.fullmatch(r"[0-9a-f]{64}", root):
            raise ExportInvalid("checkpoint root must be 64 lowercase hex digits")
        if not isinstance(key_id, str) or not isinstance(sig, str):
            raise ExportInvalid("checkpoint key_id and signature must be strings")
        if not isinstance(time, str) or not _TIME.fullmatch(time):  # fixed width: compared as strings
            raise ExportInvalid("checkpoint time must be YYYY-MM-DDTHH:MM:SS.ffffffZ")
        try:
            signature = parse_transit_signature(sig)
        except KeyInvalid as err:
            raise ExportInvalid(err.message) from None
        return cls(size, bytes.fromhex(root), time, key_id, signature)


def checkpoint_message(key_id: str, key_version: int, size: int, root: bytes, time: str) -> bytes:
    if not _KEY_ID.fullmatch(key_id):
        raise KeyInvalid(f"key id {key_id!r} is not [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
    if key_version < 1 or size < 0 or len(root) != 32 or "\n" in time:
        raise KeyInvalid(
            "a checkpoint needs a key version >= 1, a size >= 0, a 32-byte root, a one-line time"
        )
    return DOMAIN + f"{key_id}\n{key_version}\n{size}\n{root.hex()}\n{time}\n".encode()


def sign_checkpoint(signer: CheckpointSigner, size: int, root: bytes, time: str) -> Checkpoint:
    version = signer.key_version
    value = signer.sign(checkpoint_message(signer.key_id, version, size, root, time))
    return Checkpoint(size, root, time, signer.key_id, Signature(version, value))


class AuditKeys:
    """The audit public key(s): one key for every version, or one per transit key version."""

    def __init__(self, keys: Mapping[int, Ed25519PublicKey] | Ed25519PublicKey) -> None:
        self._any = keys if isinstance(keys, Ed25519PublicKey) else None
        self._by_version = dict(keys) if not isinstance(keys, Ed25519PublicKey) else {}
        if self._any is None and not self._by_version:
            raise KeyInvalid("no audit public key given")

    def for_version(self, version: int) -> Ed25519PublicKey | None:
        return self._any if self._any is not None else self._by_version.get(version)

    def verify(self, cp: Checkpoint) -> None:
        """Raise ``ExportInvalid(AUDIT_CHECKPOINT_SIGNATURE_INVALID)`` unless the signature verifies."""
        key = self.for_version(cp.signature.version)
        if key is None:
            raise ExportInvalid(
                f"checkpoint of size {cp.size} is signed by key version {cp.signature.version}, "
                "which the given public key file does not contain",
                code=Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID,
            )
        try:
            key.verify(cp.signature.value, cp.message())
        except (InvalidSignature, KeyInvalid):
            raise ExportInvalid(
                f"checkpoint of size {cp.size} (key {cp.key_id!r} v{cp.signature.version}) has a signature "
                "that does not verify with the given audit public key",
                code=Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID,
            ) from None


def load_audit_keys(data: bytes) -> AuditKeys:
    """Raw 32 bytes, a PEM public key, or OpenBao JSON (``transit/keys/NAME`` or ``transit/export/...``)."""
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        return AuditKeys(_pem_key(stripped))
    if stripped.startswith(b"{") and (len(data) != 32 or _is_json(data)):
        return _transit_keys(stripped)
    if len(data) == 32:
        return AuditKeys(_raw_key(data))
    raise KeyInvalid("the audit public key is neither 32 raw bytes, PEM, nor OpenBao transit JSON")


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return True


def _raw_key(data: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise KeyInvalid("not a valid Ed25519 public key") from None


def _pem_key(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyInvalid("the PEM does not hold a public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyInvalid(f"the PEM holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def _transit_keys(data: bytes) -> AuditKeys:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise KeyInvalid("the key file starts like JSON but does not parse") from None
    body = doc.get("data", doc) if isinstance(doc, dict) else None
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, dict) or not keys:
        raise KeyInvalid("OpenBao key JSON without a data.keys object")
    if body.get("type", "ed25519") != "ed25519":  # type: ignore[union-attr]
        raise KeyInvalid(f"the transit key is {body.get('type')!r}, not ed25519")  # type: ignore[union-attr]
    out: dict[int, Ed25519PublicKey] = {}
    for version, value in keys.items():
        public = value.get("public_key") if isinstance(value, dict) else value
        if not str(version).isdigit() or not isinstance(public, str):
            raise KeyInvalid(f"key version {version!r} has no public key string")
        if public.lstrip().startswith("-----BEGIN"):
            out[int(version)] = _pem_key(public.encode())
        else:
            try:
                out[int(version)] = _raw_key(base64.b64decode(public, validate=True))
            except binascii.Error:
                raise KeyInvalid(f"key version {version} is not base64") from None
    return AuditKeys(out)
