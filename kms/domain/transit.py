"""The OpenBao transit port: what the control plane needs from a KMS, and the values it returns.

``kms.openbao.vault.OpenBaoTransit`` implements it over hvac; unit tests use small fakes. The domain and the
use cases name only this port, never the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kms.errors import OpenBaoError

KEK_NAME = "sovereign-kek"  # the transit key that wraps data keys
AUDIT_KEY_NAME = "sovereign-audit"  # the transit key that signs ledger checkpoints
PROVENANCE_KEY_NAME = "sovereign-provenance"  # the transit key that signs training provenance statements


@dataclass(frozen=True)
class WrappedKey:
    """A data key as OpenBao wrapped it (``vault:vN:...``) and the KEK version that did."""

    ciphertext: str
    kek_version: int


@dataclass(frozen=True)
class Unwrapped:
    """Plaintext key bytes (hidden from repr) and the OpenBao request id of the decrypt."""

    plaintext: bytes = field(repr=False)
    request_id: str


@dataclass(frozen=True)
class Signature:
    """An audit-key signature: OpenBao's ``vault:vN:<b64>`` form and the raw Ed25519 bytes."""

    value: str
    key_version: int
    raw: bytes
    request_id: str


@dataclass(frozen=True)
class PublicKey:
    key_version: int
    raw: bytes  # 32-byte Ed25519 public key


@dataclass(frozen=True)
class SigningKeys:
    """An Ed25519 transit key's public halves: its latest version and the raw public key of every version."""

    name: str
    latest_version: int
    public: Mapping[int, bytes]


@dataclass(frozen=True)
class KeyInfo:
    name: str
    type: str
    latest_version: int
    min_decryption_version: int
    exportable: bool
    deletion_allowed: bool


class Transit(Protocol):
    """What the control plane needs from a KMS. ``kek=None`` means the configured KEK.

    ``sign_batch`` signs every message with one named Ed25519 key at exactly ``version`` (the version is
    part of what provenance statements sign) in one request; a refused item is an error in its slot."""

    kek: str

    def generate_wrapped_data_key(self, kek: str | None = None) -> WrappedKey: ...
    def unwrap(self, ciphertext: str, kek: str | None = None) -> Unwrapped: ...
    def unwrap_batch(
        self, ciphertexts: Sequence[str], kek: str | None = None
    ) -> list[Unwrapped | OpenBaoError]: ...
    def rewrap(self, ciphertext: str, kek: str | None = None) -> WrappedKey: ...
    def rotate_kek(self) -> int: ...
    def sign(self, data: bytes) -> Signature: ...
    def verify(self, data: bytes, signature: Signature) -> None: ...
    def public_key(self, version: int | None = None) -> PublicKey: ...
    def key_info(self, name: str | None = None) -> KeyInfo: ...
    def signing_keys(self, name: str) -> SigningKeys: ...
    def sign_batch(
        self, name: str, version: int, messages: Sequence[bytes]
    ) -> list[bytes | OpenBaoError]: ...
