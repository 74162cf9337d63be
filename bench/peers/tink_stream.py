"""Tink's streaming AEAD (AES256_GCM_HKDF_1MB) as the sealed-stream peer."""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass
from typing import Any

from bench.peers import PeerMissing

BLOCK = 1 << 20


class _Keep(io.BytesIO):
    """A BytesIO that survives Tink closing it at the end of the stream."""

    def close(self) -> None:
        pass


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


@dataclass
class TinkStream:
    primitive: Any

    @classmethod
    def generate(cls) -> TinkStream:
        try:
            tink = importlib.import_module("tink")
            streaming_aead = importlib.import_module("tink.streaming_aead")
        except ImportError as err:
            raise PeerMissing(
                "tink is not installed here; run through ./dev bench (it installs .venv-bench)"
            ) from err
        streaming_aead.register()
        handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
        return cls(handle.primitive(streaming_aead.StreamingAead))

    def encrypt(self, data: bytes, aad: bytes = b"", sink: io.RawIOBase | None = None) -> bytes:
        """Encrypt ``data`` in 1 MiB writes; returns the ciphertext unless a sink is given."""
        out = _Keep() if sink is None else sink
        view = memoryview(data)
        with self.primitive.new_encrypting_stream(out, aad) as enc:
            for start in range(0, len(view), BLOCK):
                enc.write(view[start : start + BLOCK])
        return out.getvalue() if isinstance(out, _Keep) else b""

    def decrypt(self, ciphertext: bytes, aad: bytes = b"", sink: io.RawIOBase | None = None) -> bytes:
        """Decrypt in 1 MiB reads; returns the plaintext unless a sink is given."""
        keep = io.BytesIO() if sink is None else None
        with self.primitive.new_decrypting_stream(io.BytesIO(ciphertext), aad) as dec:
            while chunk := dec.read(BLOCK):
                (keep or sink or _Discard()).write(chunk)
        return keep.getvalue() if keep is not None else b""


def discard() -> io.RawIOBase:
    return _Discard()
