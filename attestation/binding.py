"""Report-data binding: ties a nonce and a node's keys to the hardware report (DESIGN.md, Protocol 2).

report_data = SHA-512("sovereign/v1 evidence" || len||nonce || len||kem_suite || len||kem_public
                      || len||signing_public [|| len||gpu_commitment]), each len a 2-byte big-endian byte count.

The last field is present only for a node that sends GPU evidence (``proto.contract.gpu_commitment``, the
digest of its GPU evidence list): a node without GPUs binds exactly the bytes it bound before GPUs existed.
"""

from __future__ import annotations

import hashlib
import hmac

from attestation.errors import BindingError, Code

DOMAIN = b"sovereign/v1 evidence"
_MAX_FIELD = 0xFFFF


def _field(value: bytes) -> bytes:
    if len(value) > _MAX_FIELD:
        raise BindingError(
            f"binding field of {len(value)} bytes exceeds {_MAX_FIELD}", code=Code.BINDING_INPUT_INVALID
        )
    return len(value).to_bytes(2, "big") + value


def expected_report_data(
    nonce: bytes, kem_suite: bytes, kem_public: bytes, signing_public: bytes, *, gpu_commitment: bytes = b""
) -> bytes:
    """The 64 bytes a node must put in its report data for this nonce and these keys (and GPU evidence)."""
    if not nonce or not kem_suite or not kem_public or not signing_public:
        raise BindingError(
            "nonce, KEM suite and both public keys are required", code=Code.BINDING_INPUT_INVALID
        )
    data = DOMAIN + _field(nonce) + _field(kem_suite) + _field(kem_public) + _field(signing_public)
    if gpu_commitment:
        data += _field(gpu_commitment)
    return hashlib.sha512(data).digest()


def verify_binding(
    report_data: bytes,
    nonce: bytes,
    kem_suite: bytes,
    kem_public: bytes,
    signing_public: bytes,
    *,
    gpu_commitment: bytes = b"",
) -> None:
    """Raise ``BindingError`` unless ``report_data`` binds exactly this nonce and these keys (and GPUs)."""
    expected = expected_report_data(
        nonce, kem_suite, kem_public, signing_public, gpu_commitment=gpu_commitment
    )
    if not hmac.compare_digest(expected, report_data):
        raise BindingError("report data does not bind this nonce and these keys")
