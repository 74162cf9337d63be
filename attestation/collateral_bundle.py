"""Signed, content-addressed collateral bundles (pure): carry collateral from the connected side to
air-gapped sites.

A bundle is one JSON document::

    {"format": "sovereign-collateral-bundle/1",
     "manifest": "<base64 of the canonical manifest JSON>", "signature": "<base64 Ed25519 over it>",
     "objects": {"<sha256>": "<base64 of the item>", ...}}

The manifest lists every item (sha256, kind, description, source, nextUpdate) and the earliest
``nextUpdate`` of the set. Opening a bundle checks the signature against the site's pinned signer keys
first, then that the objects are exactly the listed ones, each matching its hash and declared kind. The
items' own AMD/Intel signatures are checked by the store on import.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from attestation.collateral import CollateralItem, ItemKind, classify
from attestation.errors import AttestationError, Code, CollateralError
from attestation.freshness import canonical, earliest_next_update, expiry

FORMAT = "sovereign-collateral-bundle/1"
MAX_BUNDLE_BYTES = 64 << 20


def _invalid(message: str, hint: str = "get the bundle again from the connected side") -> CollateralError:
    return CollateralError(message, code=Code.COLLATERAL_BUNDLE_INVALID, hint=hint)


def signing_key_from_seed_hex(text: str) -> Ed25519PrivateKey:
    """The key file format of ``sovereign bundle keygen``: the 32-byte seed in hex."""
    try:
        seed = bytes.fromhex(text.strip())
        if len(seed) != 32:
            raise ValueError
    except ValueError:
        raise _invalid(
            "not an Ed25519 signing key file (32-byte seed in hex)", "make one: sovereign bundle keygen"
        ) from None
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise _invalid(
            "signer key is not a PUBLIC KEY PEM", "pass the NAME.pub.pem the signer gave you"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise _invalid("signer key is not an Ed25519 key", "pass the NAME.pub.pem the signer gave you")
    return key


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _invalid(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _invalid(f"{what} is not base64") from None


def create(items: Sequence[tuple[CollateralItem, str]], key: Ed25519PrivateKey, created: datetime) -> bytes:
    """A signed bundle of ``items`` (item, source such as the URL it came from), deduplicated by hash."""
    unique: dict[str, tuple[CollateralItem, str]] = {}
    for item, source in items:
        unique.setdefault(item.sha256, (item, source))
    ordered = [unique[h] for h in sorted(unique)]
    earliest = earliest_next_update(i for i, _ in ordered)
    manifest = {
        "format": FORMAT,
        "created": created.isoformat(),
        "earliest_next_update": _iso(earliest),
        "items": [
            {
                "sha256": item.sha256,
                "kind": item.kind.value,
                "description": item.describe(),
                "source": source,
                "next_update": _iso(expiry(item)),
            }
            for item, source in ordered
        ],
    }
    manifest_bytes = canonical(manifest)
    doc = {
        "format": FORMAT,
        "manifest": _b64(manifest_bytes),
        "signature": _b64(key.sign(manifest_bytes)),
        "objects": {item.sha256: _b64(item.data) for item, _ in ordered},
    }
    return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"


@dataclass(frozen=True)
class OpenedBundle:
    manifest: dict[str, Any]
    items: list[tuple[CollateralItem, str]]

    @property
    def earliest_next_update(self) -> str | None:
        value = self.manifest.get("earliest_next_update")
        return str(value) if value else None


def is_bundle(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{" and FORMAT.encode() in data[:4096]


def open_bundle(data: bytes, signers: Sequence[Ed25519PublicKey]) -> OpenedBundle:
    """Verify the signature with one of ``signers``, then every object; raise on anything wrong."""
    if not signers:
        raise _invalid("no signer key to check the bundle with", "pass --signer-key NAME.pub.pem")
    if len(data) > MAX_BUNDLE_BYTES:
        raise _invalid(f"bundle is {len(data)} bytes, more than any collateral bundle")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid("bundle is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _invalid(f"not a {FORMAT} document")
    manifest_bytes = _unb64(doc.get("manifest"), "manifest")
    signature = _unb64(doc.get("signature"), "signature")
    if not any(_verifies(k, signature, manifest_bytes) for k in signers):
        raise CollateralError(
            "the collateral bundle's signature does not verify with any pinned signer key",
            code=Code.COLLATERAL_BUNDLE_INVALID,
            hint="the bundle was altered or signed by someone else; check --signer-key and fetch it again",
        )
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid("signed manifest is not JSON") from None
    entries = manifest.get("items") if isinstance(manifest, dict) else None
    if manifest.get("format") != FORMAT or not isinstance(entries, list):
        raise _invalid("signed manifest has no item list")
    objects = doc.get("objects")
    if not isinstance(objects, dict):
        raise _invalid("bundle has no objects")
    listed = {e.get("sha256") for e in entries if isinstance(e, dict)}
    if set(objects) != listed or len(listed) != len(entries):
        raise _invalid("bundle objects are not exactly the items its signed manifest lists")
    return OpenedBundle(manifest, [_item(e, objects) for e in entries])


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _item(entry: dict[str, Any], objects: dict[str, Any]) -> tuple[CollateralItem, str]:
    digest = str(entry["sha256"])
    data = _unb64(objects[digest], f"object {digest[:16]}")
    try:
        kind = ItemKind(str(entry.get("kind")))
    except ValueError:
        raise _invalid(f"object {digest[:16]} has unknown kind {entry.get('kind')!r}") from None
    item = CollateralItem(kind, data)
    if item.sha256 != digest:
        raise _invalid(f"object {digest[:16]} does not match its SHA-256 in the signed manifest")
    try:
        classified = classify(data, f"object {digest[:16]}")
    except AttestationError as exc:
        raise _invalid(f"object {digest[:16]}: {exc.message}") from None
    if [c.kind for c in classified] != [kind] or classified[0].data.strip() != data.strip():
        raise _invalid(f"object {digest[:16]} is not the single {kind.value} its manifest says")
    return item, str(entry.get("source", ""))
