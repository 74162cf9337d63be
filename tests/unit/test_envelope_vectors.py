"""Fixed envelope vectors (tests/vectors/envelope/): a format change breaks these on purpose.

If the format version changes deliberately, regenerate with
``.venv/bin/python tests/unit/test_envelope_vectors.py`` and review the diff.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.envelope import (
    DEFAULT_INFO,
    SUITES,
    decrypt_stream,
    encrypt_stream,
    load_private_key,
    open_sealed_key,
    read_header,
    release_aad,
    seal_key,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "envelope"
AAD_FIELDS: dict[str, Any] = {
    "node_id": "node-7f3a",
    "key_name": "datasets/imagenet",
    "key_version": 3,
    "purpose": "dataset-read",
    "request_id": "00112233445566778899aabbccddeeff",
    "audit_sequence": 4242,
    "lease_expiry": 1798761600,
}
STREAM_CASES = [
    ("empty", 16, 0),
    ("one-byte", 16, 1),
    ("exact-one-chunk", 16, 16),
    ("exact-multiple", 16, 48),
    ("partial-last", 16, 40),
    ("odd-chunk", 17, 50),
]


def _det(label: str, n: int) -> bytes:
    """Deterministic test bytes (public test values, not secrets)."""
    return hashlib.shake_256(f"sovereign envelope vector {label}".encode()).digest(n)


def _aad(fields: dict[str, Any]) -> bytes:
    return release_aad(**{**fields, "request_id": bytes.fromhex(fields["request_id"])})


def _load(name: str) -> dict[str, Any]:
    path = VECTORS / name
    if not path.is_file():  # reported by test_vectors_cover_every_suite_and_stream_shape
        return {"vectors": [], "missing": str(path)}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def generate_vectors(out_dir: Path = VECTORS) -> None:
    """Recreate the vector files (sealing is randomised, so sealed blobs change on every run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    aad = _aad(AAD_FIELDS)
    sealed_vectors = []
    for name, suite in SUITES.items():
        private = load_private_key(suite, _det(f"{name} recipient", suite.private_key_len))
        plaintext = _det(f"{name} data key", 32)
        sealed_vectors.append(
            {
                "suite": name,
                "suite_id": suite.id_bytes().hex(),
                "recipient_private": private.export_secret().hex(),
                "recipient_public": private.public_bytes().hex(),
                "aad": aad.hex(),
                "plaintext": plaintext.hex(),
                "sealed": seal_key(private.public_bytes(), suite, plaintext, aad).hex(),
            }
        )
    sealed_doc = {
        "format": "sovereign sealed key v1 (docs/formats.md)",
        "info": DEFAULT_INFO.decode(),
        "aad_fields": AAD_FIELDS,
        "vectors": sealed_vectors,
    }
    stream_vectors = []
    for name, chunk_size, size in STREAM_CASES:
        case = {
            "name": name,
            "data_key": _det(f"{name} data key", 32).hex(),
            "key_ref": f"datasets/test@v{size}",
            "salt": _det(f"{name} salt", 32).hex(),
            "nonce_prefix": _det(f"{name} prefix", 7).hex(),
            "chunk_size": chunk_size,
            "plaintext": _det(f"{name} plaintext", size).hex(),
        }
        case["ciphertext"] = _encrypt_case(case).hex()
        stream_vectors.append(case)
    stream_doc = {"format": "sovereign sealed stream v1 (docs/formats.md)", "vectors": stream_vectors}
    for file, doc in (("sealed_key.json", sealed_doc), ("stream.json", stream_doc)):
        (out_dir / file).write_text(json.dumps(doc, indent=2) + "\n")


def _encrypt_case(case: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    encrypt_stream(
        bytes.fromhex(case["data_key"]),
        io.BytesIO(bytes.fromhex(case["plaintext"])),
        out,
        key_ref=case["key_ref"],
        chunk_size=case["chunk_size"],
        salt=bytes.fromhex(case["salt"]),
        nonce_prefix=bytes.fromhex(case["nonce_prefix"]),
    )
    return out.getvalue()


SEALED = _load("sealed_key.json")
STREAMS = _load("stream.json")


def test_vectors_cover_every_suite_and_stream_shape() -> None:
    assert "missing" not in SEALED and "missing" not in STREAMS, "vector files missing; see module doc"
    assert {v["suite"] for v in SEALED["vectors"]} == set(SUITES)
    assert [v["name"] for v in STREAMS["vectors"]] == [name for name, _, _ in STREAM_CASES]


def test_release_aad_vector() -> None:
    for vector in SEALED["vectors"]:
        assert _aad(SEALED["aad_fields"]).hex() == vector["aad"]


@pytest.mark.parametrize("vector", SEALED["vectors"], ids=lambda v: v["suite"])
def test_sealed_key_vector_opens(vector: dict[str, Any]) -> None:
    suite = SUITES[vector["suite"]]
    assert suite.id_bytes().hex() == vector["suite_id"]
    private = load_private_key(suite, bytes.fromhex(vector["recipient_private"]))
    assert private.public_bytes().hex() == vector["recipient_public"]
    opened = open_sealed_key(private, bytes.fromhex(vector["sealed"]), bytes.fromhex(vector["aad"]))
    assert opened.hex() == vector["plaintext"]


@pytest.mark.parametrize("vector", STREAMS["vectors"], ids=lambda v: v["name"])
def test_stream_vector_decrypts_and_reencrypts_bit_exact(vector: dict[str, Any]) -> None:
    ciphertext = bytes.fromhex(vector["ciphertext"])
    header = read_header(io.BytesIO(ciphertext))
    assert header.key_ref == vector["key_ref"].encode()
    assert header.chunk_size == vector["chunk_size"]
    assert header.salt.hex() == vector["salt"]
    assert header.nonce_prefix.hex() == vector["nonce_prefix"]
    out = io.BytesIO()
    decrypt_stream(bytes.fromhex(vector["data_key"]), io.BytesIO(ciphertext), out)
    assert out.getvalue().hex() == vector["plaintext"]
    assert _encrypt_case(vector) == ciphertext


def _reference_stream_decrypt(data_key: bytes, blob: bytes) -> bytes:
    """An independent decoder written from docs/formats.md, to catch drift between doc and code."""
    n = int.from_bytes(blob[9:11], "big")
    core, tag = blob[: 82 + n], blob[82 + n : 114 + n]
    salt, prefix, key_check = core[11 + n : 43 + n], core[43 + n : 50 + n], core[50 + n :]
    hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"sovereign/v1 stream key check")
    assert hkdf.derive(data_key) == key_check
    okm = HKDF(hashes.SHA256(), 64, salt=salt, info=b"sovereign/v1 stream" + core).derive(data_key)
    assert hmac.digest(okm[32:], core, "sha256") == tag
    header_hash = hashlib.sha256(blob[: 114 + n]).digest()
    pos, out, index = 114 + n, b"", 0
    while True:
        record = blob[pos : pos + 17]
        assert record[:8] == header_hash[:8] and int.from_bytes(record[8:12], "big") == index
        length = int.from_bytes(record[13:17], "big")
        nonce = prefix + index.to_bytes(4, "big") + record[12:13]
        sealed = blob[pos + 17 : pos + 17 + length + 16]
        out += AESGCM(okm[:32]).decrypt(nonce, sealed, header_hash + record)
        pos += 17 + length + 16
        if record[12] == 1:
            assert pos == len(blob)
            return out
        index += 1


def _reference_open(suite_name: str, secret: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open a sealed key following docs/formats.md with cryptography's HPKE directly."""
    suite = SUITES[suite_name]
    private = load_private_key(suite, secret).hpke_key()
    assert blob[:5] == b"SOVK\x01" and blob[5:11] == suite.id_bytes()
    enc_len = int.from_bytes(blob[11:13], "big")
    info = len(DEFAULT_INFO).to_bytes(2, "big") + DEFAULT_INFO + blob[:11] + len(aad).to_bytes(4, "big") + aad
    return suite.hpke_suite.decrypt(blob[13 : 13 + enc_len] + blob[13 + enc_len :], private, info=info)


@pytest.mark.parametrize("vector", STREAMS["vectors"], ids=lambda v: v["name"])
def test_stream_vector_matches_documented_layout(vector: dict[str, Any]) -> None:
    plain = _reference_stream_decrypt(bytes.fromhex(vector["data_key"]), bytes.fromhex(vector["ciphertext"]))
    assert plain.hex() == vector["plaintext"]


@pytest.mark.parametrize("vector", SEALED["vectors"], ids=lambda v: v["suite"])
def test_sealed_key_vector_matches_documented_layout(vector: dict[str, Any]) -> None:
    opened = _reference_open(
        vector["suite"],
        bytes.fromhex(vector["recipient_private"]),
        bytes.fromhex(vector["sealed"]),
        bytes.fromhex(vector["aad"]),
    )
    assert opened.hex() == vector["plaintext"]


if __name__ == "__main__":
    generate_vectors()
    print(f"wrote {VECTORS}")
