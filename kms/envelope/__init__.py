"""Pure formats shared by the control plane and the nodes (stdlib + cryptography only, no clock).

- sealed key: a data key HPKE-sealed to a node's attested KEM key, bound to the release AAD
- sealed stream: chunked AES-256-GCM for datasets and model outputs, constant memory

Byte-level layouts: docs/formats.md. ``kms.envelope.files`` holds the temp-file + rename helpers.
"""

from __future__ import annotations

from kms.envelope.aad import RELEASE_AAD_DOMAIN, release_aad
from kms.envelope.errors import Code, EnvelopeError, InvalidInput, SealedKeyError, StreamError
from kms.envelope.sealed_key import DEFAULT_INFO, open_sealed_key, parse_sealed_key, seal_key
from kms.envelope.stream import StreamInfo, decrypt_stream, encrypt_stream
from kms.envelope.stream_header import DEFAULT_CHUNK_SIZE, StreamHeader, read_header
from kms.envelope.suites import (
    DEFAULT_SUITE,
    MLKEM768_X25519_SUITE,
    SUITES,
    X25519_SUITE,
    PrivateKey,
    Suite,
    check_recipient_key,
    generate_keypair,
    load_private_key,
    load_public_key,
    suite_by_id_bytes,
)

__all__ = [
    "Code",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_INFO",
    "DEFAULT_SUITE",
    "EnvelopeError",
    "InvalidInput",
    "MLKEM768_X25519_SUITE",
    "PrivateKey",
    "RELEASE_AAD_DOMAIN",
    "SUITES",
    "SealedKeyError",
    "StreamError",
    "StreamHeader",
    "StreamInfo",
    "Suite",
    "X25519_SUITE",
    "check_recipient_key",
    "decrypt_stream",
    "encrypt_stream",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "open_sealed_key",
    "parse_sealed_key",
    "read_header",
    "release_aad",
    "seal_key",
    "suite_by_id_bytes",
]
