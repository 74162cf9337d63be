"""The node's identity: an HPKE key pair to receive sealed keys and an Ed25519 key to sign requests.

Both are made in memory inside the TEE and bound to the hardware through the report data
(``attestation.binding``). Nothing here writes private keys anywhere: a node that restarts makes
a new identity and registers again. ``repr`` and ``public_keys`` show public material only, and
the object refuses to be pickled or copied so it cannot be persisted by accident. (CPython cannot
promise to wipe key bytes from memory; they live in the TEE's encrypted memory for the process's
life.)
"""

from __future__ import annotations

from typing import Any, NoReturn

from nacl.signing import SigningKey

from attestation.binding import expected_report_data
from attestation.errors import BindingError
from enclave.errors import NodeCode, NodeError
from kms.envelope import DEFAULT_SUITE, PrivateKey, Suite, generate_keypair


def _invalid(message: str) -> NodeError:
    return NodeError(message, code=NodeCode.IDENTITY_INVALID)


class NodeIdentity:
    """A node's key pairs. Build with ``NodeIdentity.generate()``."""

    __slots__ = ("_kem_private", "_signing_key")

    def __init__(self, *, kem_private: PrivateKey, signing_key: SigningKey) -> None:
        if not isinstance(kem_private, PrivateKey):
            raise _invalid("the KEM key must be a kms.envelope.PrivateKey")
        if not isinstance(signing_key, SigningKey):
            raise _invalid("the signing key must be a nacl.signing.SigningKey (Ed25519)")
        self._kem_private = kem_private
        self._signing_key = signing_key

    @classmethod
    def generate(cls, suite: Suite = DEFAULT_SUITE) -> NodeIdentity:
        """Fresh keys from the operating system's CSPRNG (inside the TEE)."""
        private, _ = generate_keypair(suite)
        return cls(kem_private=private, signing_key=SigningKey.generate())

    @property
    def suite(self) -> Suite:
        return self._kem_private.suite

    @property
    def kem_suite(self) -> bytes:
        return self._kem_private.suite.id_bytes()

    @property
    def kem_public(self) -> bytes:
        return self._kem_private.public_bytes()

    @property
    def signing_public(self) -> bytes:
        return bytes(self._signing_key.verify_key.encode())

    def kem_private_key(self) -> PrivateKey:
        """The HPKE private key, for ``kms.envelope.open_sealed_key`` in memory. Never persist it."""
        return self._kem_private

    def report_data(self, nonce: bytes, *, gpu_commitment: bytes = b"") -> bytes:
        """The 64 bytes to put in the hardware report for this server nonce (DESIGN Protocol 2) and, for a
        node with GPUs, the commitment to their evidence (``proto.contract.gpu_commitment``)."""
        if not isinstance(nonce, bytes):
            raise NodeError(
                f"nonce must be bytes, not {type(nonce).__name__}", code=NodeCode.REPORT_DATA_INVALID
            )
        try:
            return expected_report_data(
                nonce, self.kem_suite, self.kem_public, self.signing_public, gpu_commitment=gpu_commitment
            )
        except BindingError as exc:
            raise NodeError(exc.message, code=NodeCode.REPORT_DATA_INVALID) from exc

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message``."""
        if not isinstance(message, bytes):
            raise _invalid(f"can only sign bytes, not {type(message).__name__}")
        return bytes(self._signing_key.sign(message).signature)

    def public_keys(self) -> dict[str, bytes]:
        """Public material, keyed like ``attestation.binding.expected_report_data``'s parameters."""
        return {
            "kem_suite": self.kem_suite,
            "kem_public": self.kem_public,
            "signing_public": self.signing_public,
        }

    def __repr__(self) -> str:
        return (
            f"NodeIdentity(suite={self.suite.name!r}, kem_public={self.kem_public.hex()}, "
            f"signing_public={self.signing_public.hex()})"
        )

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("NodeIdentity holds private keys and cannot be pickled or copied")
