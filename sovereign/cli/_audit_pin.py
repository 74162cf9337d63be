"""The pinned audit public key: the file ``sovereign audit public-key -o FILE`` writes and ``audit verify``
/ ``audit proof --public-key FILE`` read (``kms.audit.checkpoint.load_audit_keys``: the shape of
OpenBao's ``transit/keys/NAME``, one public key per version), and the fingerprints printed to compare
out of band."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from sovereign.bundle.installer import key_fingerprint


def pin_document(key_name: str, versions: dict[int, bytes]) -> bytes:
    keys = {str(v): {"public_key": base64.b64encode(raw).decode()} for v, raw in sorted(versions.items())}
    return (json.dumps({"name": key_name, "type": "ed25519", "keys": keys}, indent=2) + "\n").encode()


def fingerprints(versions: dict[int, bytes]) -> dict[str, str]:
    """``sha256:`` of each version's SubjectPublicKeyInfo DER (what ``openssl pkey -pubin -outform DER |
    sha256sum`` prints for the same key), by version."""
    return {str(v): key_fingerprint(raw) for v, raw in sorted(versions.items())}


def write_pin(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a reader never sees half a key file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
